//! Signalling a process named by a pid file, only when it is the process meant: the pid
//! file read as a regular file without following symlinks, written by nobody but root or
//! the process's own user, the process checked (its user, its executable, the port it
//! listens on) through a pidfd, and the signal sent through that pidfd (a pid reused in
//! between is never signalled).

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The signals a `signal:` reloader may send: the ones daemons reload on. Anything else
/// (`KILL`, `TERM`, `STOP`) is not a reload.
pub const RELOAD_SIGNALS: &[&str] = &["HUP", "USR1", "USR2"];

/// What the process behind a pid file must be, besides running as the pid file's owner
/// (or the pid file being root's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectProcess {
    /// File names its executable may have (`bao`, `vault`); empty: any.
    pub exe_names: Vec<String>,
    /// A TCP port it must be listening on.
    pub listens_on: Option<u16>,
}

/// The process a pid file names, as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its executable.
    pub exe: PathBuf,
}

impl std::fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}, uid {})",
            self.pid,
            self.exe.display(),
            self.uid
        )
    }
}

/// Reads and validates a pid file: a regular file (not a symlink, FIFO or device) of at
/// most 32 bytes holding one decimal pid greater than 1. Returns the pid and the file's
/// owner.
///
/// Refuses 0 and negative numbers (they address process groups) and 1 (init).
pub fn read_pid_file(path: &Path) -> Result<(u32, u32)> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| Error::BadPidFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
                bad("is a symlink: name the real file".into())
            }
            _ => io(e),
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut text = String::new();
    file.take(33).read_to_string(&mut text).map_err(io)?;
    if text.len() > 32 {
        return Err(bad("longer than a pid".into()));
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad("empty".to_owned()));
    }
    let pid: u32 = trimmed.parse().map_err(|_| {
        let shown: String = trimmed.chars().take(40).collect();
        bad(format!("`{}` is not a process id", shown.escape_debug()))
    })?;
    match pid {
        0 => Err(bad("pid 0 would signal the whole process group".to_owned())),
        1 => Err(bad("refusing to signal pid 1 (init)".to_owned())),
        p if p > i32::MAX as u32 => Err(bad(format!("pid {p} is out of range"))),
        p => Ok((p, meta.uid())),
    }
}

/// The process `pid_file` names, held by a pidfd, checked against `expect`: the pid file
/// and every directory above it written by nobody but root or the file's owner, the
/// process running as that owner (any process when the file is root's), and `expect`.
pub fn open_pid_file(pid_file: &Path, expect: &ExpectProcess) -> Result<(OwnedFd, ProcessInfo)> {
    let (pid, owner) = read_pid_file(pid_file)?;
    crate::trust::check_trusted(pid_file, Some(owner))?;
    let raw = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| Error::BadPidFile {
        path: pid_file.to_owned(),
        reason: format!("pid {pid} is out of range"),
    })?;
    // Held from here: if the process exits and its pid is reused, this fd still refers
    // to the old one, and a signal through it fails instead of reaching the new one.
    let fd =
        rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(|e| {
            Error::WrongProcess {
                path: pid_file.to_owned(),
                pid,
                reason: format!("is not running ({e}): a stale pid file"),
            }
        })?;
    let wrong = |reason: String| Error::WrongProcess {
        path: pid_file.to_owned(),
        pid,
        reason,
    };
    let info = inspect(pid).map_err(|e| wrong(format!("cannot be inspected ({e})")))?;
    // A daemon writes its pid file after it starts: a process that started later than
    // the file was written reuses the pid of one that is gone (a stale pid file).
    if let (Ok(written), Some(started)) = (
        std::fs::symlink_metadata(pid_file).and_then(|m| m.modified()),
        started_at(pid),
    ) && started > written + std::time::Duration::from_secs(2)
    {
        return Err(wrong(format!(
            "({}) started after the pid file was written: the pid was reused, the file is stale",
            info.exe.display()
        )));
    }
    if owner != 0 && info.uid != owner {
        return Err(wrong(format!(
            "runs as uid {}, but the pid file is owned by uid {owner}: only root's pid files may name other users' processes",
            info.uid
        )));
    }
    let name = info
        .exe
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    if !expect.exe_names.is_empty() && !expect.exe_names.contains(&name) {
        return Err(wrong(format!(
            "runs {}, expected {}",
            info.exe.display(),
            expect.exe_names.join(" or ")
        )));
    }
    if let Some(port) = expect.listens_on
        && !listens_on(pid, port)
    {
        return Err(wrong(format!(
            "({}) does not listen on port {port}",
            info.exe.display()
        )));
    }
    Ok((fd, info))
}

/// Sends `signal` (one of [`RELOAD_SIGNALS`], `SIG` prefix allowed) to the process
/// `pid_file` names, after [`open_pid_file`]'s checks, through its pidfd.
pub fn signal_pid_file(
    pid_file: &Path,
    signal: &str,
    expect: &ExpectProcess,
) -> Result<ProcessInfo> {
    let sig = reload_signal(signal).ok_or_else(|| Error::InvalidReloader {
        input: signal.to_owned(),
        reason: format!("not a reload signal; one of {}", RELOAD_SIGNALS.join(", ")),
    })?;
    let (fd, info) = open_pid_file(pid_file, expect)?;
    rustix::process::pidfd_send_signal(&fd, sig).map_err(|e| Error::WrongProcess {
        path: pid_file.to_owned(),
        pid: info.pid,
        reason: format!("could not be signalled: {e}"),
    })?;
    Ok(info)
}

/// `HUP`/`SIGHUP` -> SIGHUP; `None` for anything but [`RELOAD_SIGNALS`].
pub(crate) fn reload_signal(signal: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    match signal.strip_prefix("SIG").unwrap_or(signal) {
        "HUP" => Some(Signal::HUP),
        "USR1" => Some(Signal::USR1),
        "USR2" => Some(Signal::USR2),
        _ => None,
    }
}

/// When `pid` started: boot time (`/proc/stat` btime) + its start time in clock ticks
/// (`/proc/<pid>/stat` field 22).
fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count after its end.
    let after = stat.rsplit_once(") ")?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(boot)
            + std::time::Duration::from_millis(ticks * 1000 / hz.max(1)),
    )
}

fn inspect(pid: u32) -> std::io::Result<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("no Uid line in /proc/<pid>/status"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(ProcessInfo { pid, uid, exe })
}

/// Whether `pid` holds a TCP socket listening on `port` (IPv4 or IPv6), in its own
/// network namespace.
fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("x.pid");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pid_files_are_read_as_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            read_pid_file(&pid_file(t.path(), "1234\n")).unwrap().0,
            1234
        );
        for bad in ["", "0", "1", "-5", "abc", "99999999999", &"9".repeat(40)] {
            let err = read_pid_file(&pid_file(t.path(), bad)).unwrap_err();
            assert!(matches!(err, Error::BadPidFile { .. }), "{bad:?}: {err}");
        }
        let link = t.path().join("link.pid");
        std::os::unix::fs::symlink(pid_file(t.path(), "1234"), &link).unwrap();
        let err = read_pid_file(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let err = read_pid_file(t.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn only_the_expected_process_is_signalled() {
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pf = pid_file(t.path(), &child.id().to_string());
        let any = ExpectProcess::default();
        let (_, info) = open_pid_file(&pf, &any).unwrap();
        assert!(info.exe.ends_with("sleep"), "{info}");

        let vault = ExpectProcess {
            exe_names: vec!["bao".into(), "vault".into()],
            listens_on: None,
        };
        let err = signal_pid_file(&pf, "HUP", &vault).unwrap_err().to_string();
        assert!(
            err.contains("expected bao or vault") && err.contains("sleep"),
            "{err}"
        );
        let port = ExpectProcess {
            exe_names: vec![],
            listens_on: Some(1),
        };
        let err = open_pid_file(&pf, &port).unwrap_err().to_string();
        assert!(err.contains("does not listen on port 1"), "{err}");
        let err = signal_pid_file(&pf, "KILL", &any).unwrap_err().to_string();
        assert!(err.contains("not a reload signal"), "{err}");
        assert!(child.try_wait().unwrap().is_none(), "nothing was signalled");

        signal_pid_file(&pf, "SIGHUP", &any).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc_sighup()));
        let err = open_pid_file(&pf, &any).unwrap_err().to_string();
        assert!(err.contains("not running"), "{err}");
    }

    #[test]
    fn a_pid_file_older_than_its_process_is_stale() {
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pf = pid_file(t.path(), &child.id().to_string());
        // Written (as it looks) an hour before the process started: the pid was reused.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&pf)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let err = signal_pid_file(&pf, "HUP", &ExpectProcess::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("stale"), "{err}");
        assert!(child.try_wait().unwrap().is_none(), "nothing was signalled");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_pid_file_another_user_writes_names_only_that_users_processes() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test chowns files: run it as root (CI does)"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A root process, named by a pid file the proxy user (uid 4243) owns.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pf = pid_file(t.path(), &child.id().to_string());
        std::os::unix::fs::chown(&pf, Some(4243), Some(4243)).unwrap();
        let err = signal_pid_file(&pf, "HUP", &ExpectProcess::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runs as uid 0") && err.contains("uid 4243"),
            "{err}"
        );
        // Root's file in a directory that user may write: they could swap it.
        std::os::unix::fs::chown(&pf, Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(t.path(), Some(4243), Some(4243)).unwrap();
        let err = open_pid_file(&pf, &ExpectProcess::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("owned by uid 4243"), "{err}");
        assert!(child.try_wait().unwrap().is_none(), "nothing was signalled");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn libc_sighup() -> i32 {
        rustix::process::Signal::HUP.as_raw()
    }

    #[test]
    fn a_listener_is_recognised_by_its_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        drop(l);
        assert!(!listens_on(std::process::id(), port));
    }
}
