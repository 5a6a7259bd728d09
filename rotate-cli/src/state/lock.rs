//! One run at a time per state directory: an exclusive `flock` on `<state>/lock`, held
//! for the life of the run. The holder writes its pid, start time and command into the
//! file, so a second run can say who holds it. The kernel drops the lock when the holder
//! dies (even on SIGKILL), so a stale lock file never blocks anyone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("another rotate run holds {}: {holder}; wait for it to finish (one run at a time)", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote: pid, start time, command.
        holder: String,
    },
    /// The state directory cannot be trusted (or created).
    #[error(transparent)]
    State(#[from] super::journal::JournalError),
    /// The lock file could not be opened or locked.
    #[error("lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Who holds the lock of `state_dir` now, if anyone (what the holder wrote); `None`
    /// when it is free or the directory has no lock file. Takes nothing.
    pub fn holder(state_dir: &Path) -> Option<String> {
        let path = state_dir.join("lock");
        let mut file =
            super::journal::open_state_file(OpenOptions::new().read(true), &path, "open lock")
                .ok()?;
        match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Some(holder.trim().to_owned())
            }
            _ => None,
        }
    }

    /// Take the lock of `state_dir` (created `0700` if missing) or fail within half a
    /// second naming the holder. `what` describes this run (written for the next contender to read).
    pub fn acquire(state_dir: &Path, what: &str, now: i64) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        super::journal::ensure_state_dir(state_dir)?;
        // Never through a symlink planted in its place (the directory is checked to be
        // ours alone; this is the second lock on the door).
        let mut file = super::journal::open_state_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            &path,
            "open lock",
        )?;
        // A lock just released can stay held for a moment by a process forked while it was
        // held (flock follows the open file until the child's exec closes it): look again
        // for a short while before naming a holder. A real holder is still refused quickly.
        let mut tries = 0;
        let locked = loop {
            match file.try_lock() {
                Err(TryLockError::WouldBlock) if tries < 25 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path,
                    holder: if holder.is_empty() {
                        "holder unknown (it is just starting)".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(
            file,
            "pid {} started {} (unix {now}): {what}",
            std::process::id(),
            crate::text::utc(now),
        )
        .map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "rotate run --step agents", 0).unwrap();
        let err = StateLock::acquire(dir.path(), "rotate run", 0).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains("rotate run --step agents"),
            "{msg}"
        );
        drop(first);
        StateLock::acquire(dir.path(), "rotate run", 0).expect("released on drop");
    }
}
