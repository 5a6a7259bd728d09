//! How the last run, resume or rollback ended (`<state_dir>/last-run.json`): what the
//! metrics textfile reports as the last run and the last success. Written when a command
//! that ran steps returns; a killed run leaves the previous one's (and its journal says
//! the rest).

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::journal::{JournalError, check_state_dir, open_state_file};

/// The file's name in the state directory.
const FILE: &str = "last-run.json";

/// How the last command that ran steps ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// The run's id (journal), when it had one.
    pub run_id: Option<String>,
    /// `run`, `run --resume` or `rollback`.
    pub mode: String,
    /// Its exit code.
    pub exit_code: u8,
    /// When it ended, unix seconds.
    pub finished_unix: i64,
    /// When a run last ended with exit 0 (this one or an earlier one), unix seconds.
    pub last_success_unix: Option<i64>,
}

/// Records that a command ended with `exit_code` at `now`: replaced atomically (a temp
/// file, synced, renamed), never following a symlink; the previous success is carried.
pub(crate) fn record(
    state_dir: &Path,
    run_id: Option<&str>,
    mode: &str,
    exit_code: u8,
    now: i64,
) -> Result<LastRun, JournalError> {
    let previous = last(state_dir).ok().flatten();
    let outcome = LastRun {
        run_id: run_id.map(str::to_owned),
        mode: mode.to_owned(),
        exit_code,
        finished_unix: now,
        last_success_unix: if exit_code == 0 {
            Some(now)
        } else {
            previous.and_then(|p| p.last_success_unix)
        },
    };
    if !check_state_dir(state_dir)? {
        return Ok(outcome);
    }
    let path = state_dir.join(FILE);
    let temp = state_dir.join(format!(".{FILE}.tmp"));
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    let mut file = open_state_file(&mut options, &temp, "create")?;
    let io = |op, source| JournalError::Io {
        path: path.clone(),
        op,
        source,
    };
    let text = serde_json::to_vec_pretty(&outcome).unwrap_or_default();
    file.write_all(&text)
        .and_then(|()| file.sync_data())
        .map_err(|e| io("write", e))?;
    std::fs::rename(&temp, &path).map_err(|e| io("rename", e))?;
    Ok(outcome)
}

/// How the last command that ran steps ended, if one was recorded.
pub(crate) fn last(state_dir: &Path) -> Result<Option<LastRun>, JournalError> {
    use std::io::Read as _;
    if !check_state_dir(state_dir)? {
        return Ok(None);
    }
    let path = state_dir.join(FILE);
    let file = match open_state_file(std::fs::OpenOptions::new().read(true), &path, "open") {
        Ok(f) => f,
        Err(JournalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|source| JournalError::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            path,
            line: e.line(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_success_is_carried_through_failures() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(last(d).unwrap(), None);
        record(d, Some("r1"), "run", 0, 100).unwrap();
        let failed = record(d, Some("r2"), "run", 5, 200).unwrap();
        assert_eq!(failed.last_success_unix, Some(100));
        assert_eq!(last(d).unwrap().unwrap(), failed);
        let ok = record(d, None, "rollback", 0, 300).unwrap();
        assert_eq!(ok.last_success_unix, Some(300));
    }
}
