//! The run journal: an append-only log of events, each line one JSON object, flushed to
//! disk (`fdatasync`) before the write it describes is made.
//!
//! Replaying the log gives a [`RunRecord`]: what the run was asked to do, the state of
//! every step/target, and the undo log of each target. A line that is not complete (a
//! crash while appending) is ignored: the write it was guarding was never made, because
//! the append returns only after the data is durable.
//!
//! Layout of a state directory (one per environment, root-owned, `0700`):
//! - `lock`: the run lock and its holder (see [`super::lock`]);
//! - `journal.jsonl`: the current or last run;
//! - `runs/<run_id>.jsonl`: earlier runs, moved aside when a new run starts.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::undo::UndoAction;
pub(crate) use crate::step_id::StepId;

/// A failure of the journal itself (the state directory cannot be used).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading or writing a journal file failed.
    #[error("journal {}: {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The state directory (or a file in it) could have been written by someone other
    /// than the user rotate runs as: its journal would decide what root undoes.
    #[error("state directory {}: {reason}", path.display())]
    Untrusted {
        /// The directory or file.
        path: PathBuf,
        /// Who else could write it, and what to do.
        reason: String,
    },
    /// The journal holds something this version cannot read.
    #[error("journal {} line {line}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl JournalError {
    /// What to do about it, when there is more to say than the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            JournalError::Io { path, source, .. } if is_full(source) => Some(format!(
                "the state directory's disk is full: free space there ({}), then run again (`rotate run --resume` when a run was under way)",
                path.parent().unwrap_or(path).display()
            )),
            _ => None,
        }
    }
}

pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT)
    )
}

/// Where one target (an app, within a step) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Planned; nothing written yet.
    Planned,
    /// Writes under way: the undo log may be partial. A resume unwinds it.
    Applying,
    /// Every write made; the gate has not passed yet. A resume re-gates it.
    Applied,
    /// The gate passed. Never redone by a resume.
    Committed,
    /// An unwind began (after a failure, or by `rotate rollback`): a resume or another
    /// rollback finishes it, never re-gates it.
    RollingBack,
    /// Undone completely.
    RolledBack,
    /// Undo failed for at least one entry; the journal lists what is left. Blocks new runs
    /// until `rotate rollback` or `rotate run --resume` finishes it.
    RollbackIncomplete,
}

impl TargetState {
    /// Whether a resume (or a rollback) has to deal with this target before any new run:
    /// re-gate it, or finish unwinding it.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            TargetState::Applying
                | TargetState::Applied
                | TargetState::RollingBack
                | TargetState::RollbackIncomplete
        )
    }

    /// Whether finishing it means unwinding it (its rollback began or is incomplete).
    pub fn is_unwinding(self) -> bool {
        matches!(
            self,
            TargetState::RollingBack | TargetState::RollbackIncomplete
        )
    }
}

/// How a run ended (or that it did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started and not finished: interrupted if no process holds the lock.
    Running,
    /// Finished: every target committed or (after a failure) fully rolled back.
    Finished,
    /// Stopped at a safe point by a signal; `--resume` continues.
    Interrupted,
    /// `rotate rollback` began unwinding it: `rotate rollback` (or `--resume`) finishes
    /// that, and never runs its steps again.
    RollingBack,
    /// Unwound by `rotate rollback`.
    RolledBack,
}

/// What the run was asked to do: enough for `--resume` to continue it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The steps, in order.
    pub steps: Vec<StepId>,
    /// The apps (empty = all configured).
    pub apps: Vec<String>,
    /// Step 4: attach the KV policy.
    pub kv_access: bool,
    /// Step 4: seed `kv/<app>` when missing.
    pub kv_seed: bool,
    /// Renew only what is due (less than `[run] renew_share` of its lifetime left, or
    /// issued by another CA than the one that signs now); everything else is left alone,
    /// without a single Vault write.
    #[serde(default)]
    pub if_due: bool,
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run began.
    RunStarted {
        /// Unique id (also names the kept previous versions of files).
        run_id: String,
        /// Environment.
        env: String,
        /// Process id.
        pid: u32,
        /// Unix seconds.
        started: i64,
        /// What was asked.
        request: RunRequest,
    },
    /// A target changed state.
    Target {
        /// Step.
        step: StepId,
        /// Target (app name).
        target: String,
        /// New state.
        state: TargetState,
        /// Why (for failures), in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// For `applied`: what the gate needs (serials, paths), so a resume can re-gate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
        /// For `applied`: whether the writes changed anything a restart is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        changed: Option<bool>,
    },
    /// How to undo the next write of a target: appended before the write is made.
    Undo {
        /// Step.
        step: StepId,
        /// Target.
        target: String,
        /// The undo action.
        action: UndoAction,
    },
    /// Undo entry `index` of a target was carried out (or found already done).
    UndoDone {
        /// Step.
        step: StepId,
        /// Target.
        target: String,
        /// Index into the target's undo log.
        index: usize,
    },
    /// The previous versions a committed target kept were discarded.
    Pruned {
        /// Step.
        step: StepId,
        /// Target.
        target: String,
    },
    /// The run reached a final state.
    RunEnded {
        /// The state.
        state: RunState,
    },
}

/// One undo entry and whether it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct UndoEntry {
    /// The action.
    pub action: UndoAction,
    /// Carried out.
    pub done: bool,
}

/// The replayed state of one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRecord {
    /// Step.
    pub step: StepId,
    /// Target (app name).
    pub target: String,
    /// State.
    pub state: TargetState,
    /// Last note (failure reason).
    pub note: Option<String>,
    /// What `apply` produced (for re-gating on resume).
    pub data: Option<serde_json::Value>,
    /// Whether its writes changed anything a restart is for (`None`: not recorded, as by
    /// versions before it was).
    pub changed: Option<bool>,
    /// Undo log, in the order the writes were made.
    pub undo: Vec<UndoEntry>,
    /// The kept previous versions were discarded (nothing left to roll back to).
    pub pruned: bool,
}

/// A run, replayed from its journal.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Environment.
    pub env: String,
    /// Process that ran it.
    pub pid: u32,
    /// Unix seconds.
    pub started: i64,
    /// What was asked.
    pub request: RunRequest,
    /// Final state, or `Running`.
    pub state: RunState,
    /// Targets in the order they were first seen.
    pub targets: Vec<TargetRecord>,
}

impl RunRecord {
    /// The record of `step`/`target`, if the run reached it.
    pub fn target(&self, step: StepId, target: &str) -> Option<&TargetRecord> {
        self.targets
            .iter()
            .find(|t| t.step == step && t.target == target)
    }

    fn target_mut(&mut self, step: StepId, target: &str) -> &mut TargetRecord {
        let i = match self
            .targets
            .iter()
            .position(|t| t.step == step && t.target == target)
        {
            Some(i) => i,
            None => {
                self.targets.push(TargetRecord {
                    step,
                    target: target.to_owned(),
                    state: TargetState::Planned,
                    note: None,
                    data: None,
                    changed: None,
                    undo: Vec::new(),
                    pruned: false,
                });
                self.targets.len() - 1
            }
        };
        &mut self.targets[i]
    }

    /// Whether the run stopped before finishing (crash, kill, signal) and needs
    /// `--resume` (or `rollback`) before another run may start.
    pub fn needs_resume(&self) -> bool {
        matches!(
            self.state,
            RunState::Running | RunState::Interrupted | RunState::RollingBack
        ) || self.targets.iter().any(|t| t.state.is_unfinished())
    }

    /// Whether it committed at least one target (its kept previous versions then back a
    /// `rotate rollback`).
    pub fn committed_any(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.state == TargetState::Committed)
    }

    fn apply(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::RunStarted { .. } => return Err("a second run_started in one journal".into()),
            Event::Target {
                step,
                target,
                state,
                note,
                data,
                changed,
            } => {
                let t = self.target_mut(step, &target);
                t.state = state;
                if note.is_some() {
                    t.note = note;
                }
                if data.is_some() {
                    t.data = data;
                }
                if changed.is_some() {
                    t.changed = changed;
                }
            }
            Event::Undo {
                step,
                target,
                action,
            } => self.target_mut(step, &target).undo.push(UndoEntry {
                action,
                done: false,
            }),
            Event::UndoDone {
                step,
                target,
                index,
            } => {
                let t = self.target_mut(step, &target);
                let n = t.undo.len();
                t.undo
                    .get_mut(index)
                    .ok_or_else(|| format!("undo_done index {index} of {n}"))?
                    .done = true;
            }
            Event::Pruned { step, target } => self.target_mut(step, &target).pruned = true,
            Event::RunEnded { state } => self.state = state,
        }
        Ok(())
    }
}

/// An open journal: appends events durably; keeps the replayed record in memory.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    record: RunRecord,
    /// The length of the complete lines written: a failed append is cut back to it.
    len: u64,
    /// An append failed and could not be cut back: no more appends from this process
    /// (the next one reopens the journal, which cuts the torn line).
    poisoned: bool,
}

/// Why a journal whose first line never reached the disk is not a run.
const NO_RUN: &str = "holds no run";

/// The current journal file of a state directory.
fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal.jsonl")
}

/// Create the state directory (`0700`, with `runs/`) if missing, then
/// [`check_state_dir`].
pub(crate) fn ensure_state_dir(state_dir: &Path) -> Result<(), JournalError> {
    let io = |op, source| JournalError::Io {
        path: state_dir.to_owned(),
        op,
        source,
    };
    if std::fs::symlink_metadata(state_dir).is_err() {
        // Where it will be created must be trusted before anything is created there.
        let existing = state_dir
            .ancestors()
            .find(|a| std::fs::symlink_metadata(a).is_ok())
            .unwrap_or(Path::new("/"));
        let me = nix::unistd::geteuid().as_raw();
        hooks::check_trusted(existing, (me != 0).then_some(me)).map_err(|e| {
            JournalError::Untrusted {
                path: state_dir.to_owned(),
                reason: format!("cannot be created safely: {e}"),
            }
        })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| io("create state directory", e))?;
    }
    check_state_dir(state_dir)?;
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        // Ours alone: not even readable by others (the journal names every file it kept).
        let mode = std::fs::symlink_metadata(state_dir)
            .map_err(|e| io("stat state directory", e))?
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("narrow to 0700", e))?;
        }
    }
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(state_dir.join("runs"))
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create runs/", e)),
    }
}

/// The journal decides what a resume or rollback does as root, so the state directory
/// must be this user's alone: a real directory (not a symlink) owned by the user rotate
/// runs as, not writable by group or others, every directory above it owned by root (or
/// that user) and writable by nobody else (a root-owned sticky one such as `/tmp`
/// excepted). Reads only (a writer narrows it to `0700`). Returns whether it exists.
pub fn check_state_dir(state_dir: &Path) -> Result<bool, JournalError> {
    use std::os::unix::fs::MetadataExt as _;
    let untrusted = |reason: String| JournalError::Untrusted {
        path: state_dir.to_owned(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(state_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(JournalError::Io {
                path: state_dir.to_owned(),
                op: "stat state directory",
                source,
            });
        }
    };
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(untrusted(
            "is a symlink or not a directory: name the real directory ([run] state_dir)".into(),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(untrusted(format!(
            "is owned by uid {}, not uid {me} (who runs rotate): its journal would decide what this user undoes; use a directory only this user can write ([run] state_dir)",
            meta.uid()
        )));
    }
    let owner = (me != 0).then_some(me);
    hooks::check_trusted(state_dir, owner).map_err(|e| untrusted(e.to_string()))?;
    Ok(true)
}

/// Opens a file of the (checked) state directory without following a symlink; one found
/// in its place was planted (the directory is ours alone), and is refused naming it.
pub(crate) fn open_state_file(
    options: &mut OpenOptions,
    path: &Path,
    op: &'static str,
) -> Result<File, JournalError> {
    options
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(nix::libc::ELOOP) {
                JournalError::Untrusted {
                    path: path.to_owned(),
                    reason: "is a symlink, which rotate never follows here: remove it".into(),
                }
            } else {
                JournalError::Io {
                    path: path.to_owned(),
                    op,
                    source,
                }
            }
        })
}

/// Replay the last run of `state_dir`, if any.
pub fn last_run(state_dir: &Path) -> Result<Option<RunRecord>, JournalError> {
    if !check_state_dir(state_dir)? {
        return Ok(None);
    }
    let path = journal_path(state_dir);
    let file = match open_state_file(OpenOptions::new().read(true), &path, "open") {
        Ok(f) => f,
        Err(JournalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    replay(&path, file).map(|(r, _)| r)
}

/// Replays a journal; also returns the length of its complete lines. Bytes after the
/// last line break are a torn append (a crash or a full disk mid-write): its write was
/// never acknowledged, so the write it guarded was never made, and it is ignored.
fn replay(path: &Path, mut file: File) -> Result<(Option<RunRecord>, u64), JournalError> {
    use std::io::Read as _;
    let corrupt = |line: usize, reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            op: "read",
            source,
        })?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut record: Option<RunRecord> = None;
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let event: Event =
            serde_json::from_slice(line).map_err(|e| corrupt(i + 1, e.to_string()))?;
        match (&mut record, event) {
            (
                None,
                Event::RunStarted {
                    run_id,
                    env,
                    pid,
                    started,
                    request,
                },
            ) => {
                check_run_id(&run_id).map_err(|reason| corrupt(i + 1, reason))?;
                record = Some(RunRecord {
                    run_id,
                    env,
                    pid,
                    started,
                    request,
                    state: RunState::Running,
                    targets: Vec::new(),
                })
            }
            (None, _) => return Err(corrupt(i + 1, "does not start with run_started".into())),
            (Some(r), e) => r.apply(e).map_err(|reason| corrupt(i + 1, reason))?,
        }
    }
    // No complete line (a run whose first append did not reach the disk): no run.
    Ok((record, complete as u64))
}

/// A run id names files (`runs/<id>.jsonl`, kept previous versions): 1 to 64 of
/// `[A-Za-z0-9._-]`, not starting with `.`.
fn check_run_id(run_id: &str) -> Result<(), String> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 64
        && !run_id.starts_with('.')
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {:?} is not 1 to 64 of [A-Za-z0-9._-]",
            run_id.escape_debug().to_string()
        ))
    }
}

impl Journal {
    /// Start a new run: the previous journal (if any) moves to `runs/`, a new one begins
    /// with `RunStarted`.
    pub fn start(
        state_dir: &Path,
        run_id: &str,
        env: &str,
        started: i64,
        request: RunRequest,
    ) -> Result<Journal, JournalError> {
        check_run_id(run_id).map_err(|reason| JournalError::Corrupt {
            path: journal_path(state_dir),
            line: 0,
            reason,
        })?;
        ensure_state_dir(state_dir)?;
        let path = journal_path(state_dir);
        let mut archived = None;
        if let Some(prev) = last_run(state_dir)? {
            let to = state_dir
                .join("runs")
                .join(format!("{}.jsonl", prev.run_id));
            std::fs::rename(&path, &to).map_err(|source| JournalError::Io {
                path: to.clone(),
                op: "archive previous journal",
                source,
            })?;
            archived = Some(to);
        } else {
            // A journal that holds no run (its first line never reached the disk).
            let _ = std::fs::remove_file(&path);
        }
        let file = open_state_file(
            OpenOptions::new().create_new(true).append(true).mode(0o600),
            &path,
            "create",
        )?;
        let pid = std::process::id();
        let record = RunRecord {
            run_id: run_id.to_owned(),
            env: env.to_owned(),
            pid,
            started,
            request: request.clone(),
            state: RunState::Running,
            targets: Vec::new(),
        };
        let j = Journal {
            path: path.clone(),
            inner: Mutex::new(Inner {
                file,
                record,
                len: 0,
                poisoned: false,
            }),
        };
        let started = j
            .append_raw(&Event::RunStarted {
                run_id: run_id.to_owned(),
                env: env.to_owned(),
                pid,
                started,
                request,
            })
            .and_then(|()| sync_dir(state_dir));
        if let Err(e) = started {
            // Nothing of this run happened: the state directory as it was (the previous
            // journal current again), so nothing is left half made.
            let _ = std::fs::remove_file(&path);
            if let Some(prev) = &archived {
                let _ = std::fs::rename(prev, &path);
            }
            return Err(e);
        }
        Ok(j)
    }

    /// Reopen the last run's journal to continue it (`--resume`, `rollback`).
    pub fn reopen(state_dir: &Path) -> Result<Option<Journal>, JournalError> {
        if !check_state_dir(state_dir)? {
            return Ok(None);
        }
        let path = journal_path(state_dir);
        match Journal::open_file(&path) {
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            // Its first line never reached the disk: no run.
            Err(JournalError::Corrupt {
                line: 1, reason, ..
            }) if reason == NO_RUN => Ok(None),
            other => other.map(Some),
        }
    }

    /// Make the earlier run at `archived` (in `runs/`) the current one again, moving the
    /// current journal to `runs/` (under the lock): its rollback is then what every guard
    /// sees. The current run is archived first; a crash between the two renames leaves no
    /// current journal and both runs in `runs/`, each as finished as it was.
    pub(crate) fn promote(state_dir: &Path, archived: &Path) -> Result<Journal, JournalError> {
        let current = journal_path(state_dir);
        let io = |op, path: &Path, source| JournalError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        if let Some(r) = last_run(state_dir)? {
            let to = state_dir.join("runs").join(format!("{}.jsonl", r.run_id));
            std::fs::rename(&current, &to).map_err(|e| io("archive current journal", &to, e))?;
        }
        std::fs::rename(archived, &current).map_err(|e| io("make current again", archived, e))?;
        sync_dir(&state_dir.join("runs"))?;
        sync_dir(state_dir)?;
        Journal::open_file(&current)
    }

    /// Open the journal at `path` (in a checked state directory, e.g. an earlier run in
    /// `runs/`) to append to it. A torn last line is cut off first, so what is appended
    /// starts on a line of its own.
    pub(crate) fn open_file(path: &Path) -> Result<Journal, JournalError> {
        let file = open_state_file(OpenOptions::new().read(true).append(true), path, "open")?;
        let (record, complete) = replay(
            path,
            file.try_clone().map_err(|source| JournalError::Io {
                path: path.to_owned(),
                op: "open",
                source,
            })?,
        )?;
        let record = record.ok_or_else(|| JournalError::Corrupt {
            path: path.to_owned(),
            line: 1,
            reason: NO_RUN.into(),
        })?;
        let len = file
            .metadata()
            .map_err(|source| JournalError::Io {
                path: path.to_owned(),
                op: "stat",
                source,
            })?
            .len();
        if len > complete {
            tracing::warn!(journal = %path.display(), bytes = len - complete, "cutting off a torn last line");
            file.set_len(complete)
                .and_then(|()| file.sync_data())
                .map_err(|source| JournalError::Io {
                    path: path.to_owned(),
                    op: "cut off a torn last line",
                    source,
                })?;
        }
        Ok(Journal {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                file,
                record,
                len: complete,
                poisoned: false,
            }),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's id.
    pub fn run_id(&self) -> String {
        self.lock().record.run_id.clone()
    }

    /// A copy of the replayed record as it stands.
    pub fn record(&self) -> RunRecord {
        self.lock().record.clone()
    }

    /// `f` of the record as it stands, without copying it (appends wait meanwhile): for a
    /// look at one target among thousands.
    pub fn with_record<R>(&self, f: impl FnOnce(&RunRecord) -> R) -> R {
        f(&self.lock().record)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent record (apply is last).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append_raw(&self, e: &Event) -> Result<(), JournalError> {
        let mut inner = self.lock();
        self.write_locked(&mut inner, e)
    }

    fn write_locked(&self, inner: &mut Inner, e: &Event) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(e).map_err(|err| JournalError::Corrupt {
            path: self.path.clone(),
            line: 0,
            reason: format!("cannot encode event: {err}"),
        })?;
        line.push(b'\n');
        let io = |op, source| JournalError::Io {
            path: self.path.clone(),
            op,
            source,
        };
        if inner.poisoned {
            return Err(io(
                "append",
                std::io::Error::other("an earlier append failed and could not be cut back"),
            ));
        }
        let written = inner
            .file
            .write_all(&line)
            .map_err(|e| io("append", e))
            .and_then(|()| inner.file.sync_data().map_err(|e| io("fdatasync", e)));
        match written {
            Ok(()) => {
                inner.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Half a line must never have the next append fused onto it: cut it off
                // (a full disk may free room for the next one meanwhile).
                if inner
                    .file
                    .set_len(inner.len)
                    .and_then(|()| inner.file.sync_data())
                    .is_err()
                {
                    inner.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// Append `e` durably, then apply it to the in-memory record.
    pub fn append(&self, e: Event) -> Result<(), JournalError> {
        // One lock for both: concurrent targets see the file and the record in one order.
        let mut inner = self.lock();
        self.write_locked(&mut inner, &e)?;
        inner
            .record
            .apply(e)
            .map_err(|reason| JournalError::Corrupt {
                path: self.path.clone(),
                line: 0,
                reason,
            })
    }

    /// Record a target's new state.
    pub fn set_state(
        &self,
        step: StepId,
        target: &str,
        state: TargetState,
        note: Option<String>,
    ) -> Result<(), JournalError> {
        self.append(Event::Target {
            step,
            target: target.to_owned(),
            state,
            note,
            data: None,
            changed: None,
        })
    }

    /// [`Journal::record_undo`], handing `index` the new entry's index (taken under the
    /// same lock, so concurrent targets cannot interleave).
    pub(crate) fn record_undo_then(
        &self,
        step: StepId,
        target: &str,
        action: UndoAction,
        index: impl FnOnce(usize),
    ) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let e = Event::Undo {
            step,
            target: target.to_owned(),
            action,
        };
        self.write_locked(&mut inner, &e)?;
        inner
            .record
            .apply(e)
            .map_err(|reason| JournalError::Corrupt {
                path: self.path.clone(),
                line: 0,
                reason,
            })?;
        index(
            inner
                .record
                .target(step, target)
                .map_or(0, |t| t.undo.len().saturating_sub(1)),
        );
        Ok(())
    }

    /// Record how to undo the write about to be made.
    pub fn record_undo(
        &self,
        step: StepId,
        target: &str,
        action: UndoAction,
    ) -> Result<(), JournalError> {
        self.append(Event::Undo {
            step,
            target: target.to_owned(),
            action,
        })
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::Io {
            path: dir.to_owned(),
            op: "fsync directory",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RunRequest {
        RunRequest {
            if_due: false,
            steps: vec![StepId::Agents],
            apps: vec![],
            kv_access: false,
            kv_seed: false,
        }
    }

    fn undo(n: &str) -> UndoAction {
        UndoAction::DisableAuth {
            mount: n.to_owned(),
            description: "enabled by rotate run test".to_owned(),
        }
    }

    #[test]
    fn replays_states_and_undo_logs() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::start(dir.path(), "r1", "test", 1, request()).unwrap();
        j.set_state(StepId::Agents, "a", TargetState::Applying, None)
            .unwrap();
        j.record_undo(StepId::Agents, "a", undo("x")).unwrap();
        j.record_undo(StepId::Agents, "a", undo("y")).unwrap();
        j.append(Event::UndoDone {
            step: StepId::Agents,
            target: "a".into(),
            index: 1,
        })
        .unwrap();
        drop(j);
        let r = last_run(dir.path()).unwrap().unwrap();
        assert_eq!(r.run_id, "r1");
        assert!(r.needs_resume());
        let t = r.target(StepId::Agents, "a").unwrap();
        assert_eq!(t.state, TargetState::Applying);
        assert_eq!(t.undo.len(), 2);
        assert!(!t.undo[0].done && t.undo[1].done);
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_torn_middle_line_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::start(dir.path(), "r1", "test", 1, request()).unwrap();
        j.set_state(StepId::Agents, "a", TargetState::Committed, None)
            .unwrap();
        drop(j);
        let path = journal_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"target","step":"agents","tar"#)
            .unwrap();
        let r = last_run(dir.path()).unwrap().unwrap();
        assert_eq!(
            r.target(StepId::Agents, "a").unwrap().state,
            TargetState::Committed
        );
        f.write_all(b"\n{\"event\":\"run_ended\",\"state\":\"finished\"}\n")
            .unwrap();
        let err = last_run(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::start(dir.path(), "r1", "test", 1, request()).unwrap();
        j.set_state(StepId::Agents, "a", TargetState::Applying, None)
            .unwrap();
        drop(j);
        let path = journal_path(dir.path());
        // A full disk (or a power cut) tore the last append, even a line that parses.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"run_ended","state":"finished"}"#)
            .unwrap();
        assert!(last_run(dir.path()).unwrap().unwrap().needs_resume());
        let j = Journal::reopen(dir.path()).unwrap().unwrap();
        j.set_state(StepId::Agents, "a", TargetState::RolledBack, None)
            .unwrap();
        j.append(Event::RunEnded {
            state: RunState::Finished,
        })
        .unwrap();
        drop(j);
        let r = last_run(dir.path()).unwrap().unwrap();
        assert!(!r.needs_resume(), "{r:?}");
        assert_eq!(
            r.target(StepId::Agents, "a").unwrap().state,
            TargetState::RolledBack
        );
    }

    #[test]
    fn a_new_run_archives_the_previous_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::start(dir.path(), "r1", "test", 1, request()).unwrap();
        j.append(Event::RunEnded {
            state: RunState::Finished,
        })
        .unwrap();
        drop(j);
        let j2 = Journal::start(dir.path(), "r2", "test", 2, request()).unwrap();
        assert_eq!(j2.record().run_id, "r2");
        assert!(dir.path().join("runs/r1.jsonl").is_file());
        assert_eq!(last_run(dir.path()).unwrap().unwrap().run_id, "r2");
    }

    #[test]
    fn finished_runs_need_no_resume() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::start(dir.path(), "r1", "test", 1, request()).unwrap();
        j.set_state(StepId::Agents, "a", TargetState::Committed, None)
            .unwrap();
        assert!(j.record().needs_resume(), "still running");
        j.append(Event::RunEnded {
            state: RunState::Finished,
        })
        .unwrap();
        assert!(!j.record().needs_resume());
    }
}
