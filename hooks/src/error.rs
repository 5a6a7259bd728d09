//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while rendering, installing or running hooks
/// and reloads. Each variant carries what a reader needs to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program could not be started at all (not found, not executable).
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program that was to be run.
        program: String,
        /// Why the operating system refused.
        #[source]
        source: std::io::Error,
    },

    /// The program ran and exited unsuccessfully.
    #[error("`{}` failed ({}): {}", command_line(program, args), exit_text(*status), failure_text(stderr, stdout))]
    HookFailed {
        /// The program that ran.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its exit code; `None` when a signal ended it.
        status: Option<i32>,
        /// Its standard error (truncated to a few KiB).
        stderr: String,
        /// Its standard output (truncated to a few KiB); `systemctl is-active`
        /// reports the unit state here.
        stdout: String,
    },

    /// The program did not finish in time and was killed.
    #[error(
        "`{}` timed out after {after:?} and was killed",
        command_line(program, args)
    )]
    Timeout {
        /// The program that ran.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// The time limit that was exceeded.
        after: Duration,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A directory is not owned by the user it must belong to.
    #[error("{} is owned by uid {found}, expected uid {expected}: refusing to install there", path.display())]
    BadOwner {
        /// The directory whose owner is wrong.
        path: PathBuf,
        /// The uid it must be owned by.
        expected: u32,
        /// The uid that owns it.
        found: u32,
    },

    /// A user name could not be resolved to a uid (through NSS: `/etc/passwd`, LDAP, SSSD).
    #[error("unknown user `{user}`")]
    UnknownUser {
        /// The name that was looked up.
        user: String,
    },

    /// A file root would run or believe could have been written by someone else: it, or a
    /// directory above it, is owned by another user or writable by group or others.
    #[error("refusing {}: {} is {reason}; root runs or trusts it, so it and every directory above it must be owned by root and writable by nobody else", path.display(), at.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// The component at fault (the file itself or a directory above it).
        at: PathBuf,
        /// What is wrong with it (its owner or mode).
        reason: String,
    },

    /// A child process was asked for an environment variable outside the allow-list.
    #[error("refusing to pass `{key}` to `{program}`: children get only PATH, LANG and {}", crate::runner::CHILD_ENV.join(", "))]
    EnvNotAllowed {
        /// The program.
        program: String,
        /// The variable.
        key: String,
    },

    /// A process named by a pid file is not the one it should be.
    #[error("pid file {}: pid {pid} {reason}; refusing to signal it", path.display())]
    WrongProcess {
        /// The pid file.
        path: PathBuf,
        /// The pid it holds.
        pid: u32,
        /// What the process is, and what was expected.
        reason: String,
    },

    /// A reload specification string (such as `PROXY_RELOAD`) is malformed.
    #[error("invalid reload spec `{input}`: {reason}")]
    InvalidReloader {
        /// The string as given.
        input: String,
        /// What is wrong with it, and what is accepted.
        reason: String,
    },

    /// A pid file exists but does not name a process we may signal.
    #[error("pid file {}: {reason}", path.display())]
    BadPidFile {
        /// The pid file.
        path: PathBuf,
        /// What is wrong with its contents.
        reason: String,
    },

    /// A systemd unit was restarted but is not active afterwards.
    #[error("unit `{unit}` is `{state}` after restart, not `active`")]
    NotActive {
        /// The unit.
        unit: String,
        /// What `systemctl is-active` reported (`failed`, `activating`, ...).
        state: String,
    },

    /// A field of a spec cannot be rendered safely (quote, newline, ...).
    #[error("invalid {field} `{value}`: {reason}")]
    InvalidSpec {
        /// The field's name.
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// A `bao version` / `vault version` output or version string could not be parsed.
    #[error("cannot parse a version from `{input}`")]
    BadVersion {
        /// The text that was parsed.
        input: String,
    },
}

impl Error {
    /// Whether an input is wrong (an owner, a user, a spec or a reloader as given): fix
    /// it; nothing ran. Any other error is a command, reload or restart that failed.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::BadOwner { .. }
                | Error::UnknownUser { .. }
                | Error::InvalidSpec { .. }
                | Error::InvalidReloader { .. }
        )
    }
}

/// A shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

fn exit_text(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

fn failure_text(stderr: &str, stdout: &str) -> String {
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        return stderr.to_owned();
    }
    let stdout = stdout.trim();
    if !stdout.is_empty() {
        return format!("(no stderr; stdout: {stdout})");
    }
    "(no output)".to_owned()
}
