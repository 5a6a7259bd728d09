//! Running external commands: the [`CommandRunner`](crate::CommandRunner)
//! seam, the real [`ProcessRunner`] and the recording [`DryRunRunner`].

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use crate::CommandRunner;
use crate::error::{Error, Result, command_line};

/// Default time limit of a [`CommandSpec`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a command's stdout/stderr is kept (bytes); the rest is cut.
pub const OUTPUT_LIMIT: usize = 8 * 1024;

/// The variables a [`CommandSpec`] may pass to its child, besides the fixed `PATH`
/// ([`SAFE_PATH`](crate::SAFE_PATH)) and `LANG=C` every child gets. Nothing else of the
/// caller's environment reaches a child: no `VAULT_*`/`BAO_*`, no token, no key path.
pub const CHILD_ENV: &[&str] = &["HOME", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "TZ"];

/// One command to run: program, arguments, the few variables it needs, directory, time
/// limit.
///
/// ```
/// use std::time::Duration;
/// let cmd = hooks::CommandSpec::new("podman")
///     .args(["kill", "--signal", "HUP", "proxyprod"])
///     .env("XDG_RUNTIME_DIR", "/run/user/1001")
///     .timeout(Duration::from_secs(10));
/// assert_eq!(cmd.to_string(), "podman kill --signal HUP proxyprod");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program: an absolute path, or a name looked up on
    /// [`SAFE_PATH`](crate::SAFE_PATH) (never the caller's `PATH`).
    pub program: String,
    /// Its arguments, passed as-is (no shell).
    pub args: Vec<String>,
    /// The child's environment besides `PATH` and `LANG`: only names in [`CHILD_ENV`].
    pub env: Vec<(String, String)>,
    /// The working directory; `/` when `None`.
    pub cwd: Option<PathBuf>,
    /// Time limit; the child is killed when it is exceeded.
    pub timeout: Duration,
}

impl CommandSpec {
    /// A command without arguments or extra environment, with [`DEFAULT_TIMEOUT`].
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child (a name in [`CHILD_ENV`]; the runner
    /// refuses others).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the time limit.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl std::fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&command_line(&self.program, &self.args))
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code (0 from [`ProcessRunner`], which turns others into errors).
    pub status: i32,
    /// Standard output (lossy UTF-8, truncated to [`OUTPUT_LIMIT`]).
    pub stdout: String,
    /// Standard error (lossy UTF-8, truncated to [`OUTPUT_LIMIT`]).
    pub stderr: String,
}

impl CommandOutput {
    /// A successful, silent output (what [`DryRunRunner`] returns).
    pub fn success() -> Self {
        Self::default()
    }

    /// A successful output with the given stdout (handy in mocks).
    pub fn with_stdout(stdout: impl Into<String>) -> Self {
        Self {
            stdout: stdout.into(),
            ..Self::default()
        }
    }
}

/// Runs commands for real with `tokio::process`, as a root process among tenants must.
///
/// - The program is resolved on [`SAFE_PATH`](crate::SAFE_PATH) (never the caller's
///   `PATH`) and must be trusted ([`trusted_program`](crate::trusted_program): owned by
///   root, writable by nobody else along its whole path); so must the program `runuser`
///   or `setpriv` runs after `--`, which is passed on as an absolute path.
/// - The child starts in a new session (no controlling terminal: a child that runs as an
///   app user can be ptraced by that user, and must not reach root's terminal), with
///   stdin `/dev/null`, stdout and stderr captured, in `/` unless a directory is given.
/// - Every argument that names an existing file by absolute path (a script `sh -c`
///   runs, say) must be trusted the same way.
/// - Its environment is cleared: `PATH` = [`trusted_path`](crate::trusted_path), `LANG=C`, and only the
///   [`CHILD_ENV`] variables the spec sets.
///
/// A non-zero exit becomes [`Error::HookFailed`] with the captured output; exceeding
/// [`CommandSpec::timeout`] kills the child's process group (so what it started goes too,
/// `sh -c 'sleep 60'`) and returns [`Error::Timeout`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRunner;

impl ProcessRunner {
    /// A new runner.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl<T: CommandRunner + ?Sized> CommandRunner for std::sync::Arc<T> {
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput> {
        (**self).run(cmd).await
    }
}

/// Programs that run another program after `--` (as another user): that one is resolved
/// and checked too.
const WRAPPERS: &[&str] = &["runuser", "setpriv"];

/// The program and arguments to execute: both resolved and trusted.
fn resolve(cmd: &CommandSpec) -> Result<(PathBuf, Vec<String>)> {
    let program = crate::trust::trusted_program(&cmd.program)?;
    let mut args = cmd.args.clone();
    let wraps = program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| WRAPPERS.contains(&n));
    if wraps
        && let Some(i) = args.iter().position(|a| a == "--")
        && let Some(inner) = args.get_mut(i + 1)
    {
        *inner = crate::trust::trusted_program(inner)?
            .to_string_lossy()
            .into_owned();
    }
    // What the child is handed by path (a script `sh -c` runs, a file an argument names)
    // must be root's alone too.
    for arg in &args {
        crate::trust::check_named_files(arg)?;
    }
    for (key, _) in &cmd.env {
        if !CHILD_ENV.contains(&key.as_str()) {
            return Err(Error::EnvNotAllowed {
                program: cmd.program.clone(),
                key: key.clone(),
            });
        }
    }
    Ok((program, args))
}

#[async_trait]
impl CommandRunner for ProcessRunner {
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput> {
        let (program, args) = resolve(cmd)?;
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&args)
            .env_clear()
            .env("PATH", crate::trust::trusted_path())
            .env("LANG", "C")
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cmd.cwd.as_deref().unwrap_or(std::path::Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        new_session(&mut command);
        tracing::debug!(command = %cmd, "running");
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout_buf = Captured::default();
        let stderr_buf = Captured::default();
        let out_task = tokio::spawn(read_limited(child.stdout.take(), stdout_buf.clone()));
        let err_task = tokio::spawn(read_limited(child.stderr.take(), stderr_buf.clone()));

        let deadline = tokio::time::Instant::now() + cmd.timeout;
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_elapsed) => {
                kill_group(pid, &mut child).await;
                out_task.abort();
                err_task.abort();
                return Err(Error::Timeout {
                    program: cmd.program.clone(),
                    args: cmd.args.clone(),
                    after: cmd.timeout,
                });
            }
        };
        // A background process it started may keep the pipes open: collect
        // the output for a short grace period only, then keep what arrived.
        let grace = deadline.min(tokio::time::Instant::now() + OUTPUT_GRACE);
        let stdout = finish_reading(out_task, &stdout_buf, grace).await;
        let stderr = finish_reading(err_task, &stderr_buf, grace).await;
        let status = status.map_err(|source| Error::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        if status.success() {
            return Ok(CommandOutput {
                status: 0,
                stdout,
                stderr,
            });
        }
        Err(Error::HookFailed {
            program: cmd.program.clone(),
            args: cmd.args.clone(),
            status: status.code(),
            stderr,
            stdout,
        })
    }
}

/// The child calls `setsid()` between fork and exec: a new session and process group,
/// without a controlling terminal (no `TIOCSTI` into root's terminal, no job-control
/// signals from it), whose group id is the child's pid (what [`kill_group`] kills).
#[allow(unsafe_code)]
fn new_session(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec; `setsid` is a single
    // async-signal-safe system call that allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

/// How long output is still collected after the child exited.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Output read so far (bounded to [`OUTPUT_LIMIT`]) and its full length.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<Mutex<(Vec<u8>, usize)>>);

impl Captured {
    fn push(&self, bytes: &[u8]) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (kept, total) = &mut *guard;
        *total += bytes.len();
        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn text(&self) -> String {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        truncate_output(&guard.0, guard.1)
    }
}

/// Kills the child and, best effort, the rest of its process group (the child leads its
/// own session and group, whose id is the child's `pid`): a system call, no `kill` process.
async fn kill_group(pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
        && let Err(err) = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL)
    {
        tracing::debug!(%err, "killing the timed-out child's group");
    }
    if let Err(err) = child.kill().await {
        tracing::debug!(%err, "killing timed-out child");
    }
}

async fn read_limited<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>, into: Captured) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => into.push(&buf[..n]),
        }
    }
}

async fn finish_reading(
    mut task: tokio::task::JoinHandle<()>,
    captured: &Captured,
    until: tokio::time::Instant,
) -> String {
    if tokio::time::timeout_at(until, &mut task).await.is_err() {
        task.abort();
        tracing::debug!("a background process kept the output pipe open; output may be partial");
    }
    captured.text()
}

/// Lossy UTF-8 of `kept`, with a marker when `total` exceeds what was kept.
pub(crate) fn truncate_output(kept: &[u8], total: usize) -> String {
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if total > kept.len() {
        text.push_str(&format!("\n[... {} more bytes cut]", total - kept.len()));
    }
    text
}

/// Records what would run and pretends it succeeded with empty output.
///
/// A label lookup (`podman ps`) therefore finds no containers in a dry run;
/// the plan shows the lookup itself.
#[derive(Debug, Default)]
pub struct DryRunRunner {
    recorded: Mutex<Vec<CommandSpec>>,
}

impl DryRunRunner {
    /// A runner with nothing recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every command "run" so far, in order.
    pub fn recorded(&self) -> Vec<CommandSpec> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl CommandRunner for DryRunRunner {
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput> {
        tracing::info!(command = %cmd, "dry run: would run");
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cmd.clone());
        Ok(CommandOutput::success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec::new("sh").args(["-c", script])
    }

    #[tokio::test]
    async fn success_captures_stdout() {
        let out = ProcessRunner
            .run(&sh("echo hello; echo warn >&2"))
            .await
            .expect("sh runs");
        assert_eq!(out.status, 0);
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "warn\n");
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr() {
        let err = ProcessRunner
            .run(&sh("echo 'no such container' >&2; exit 3"))
            .await
            .expect_err("exit 3 fails");
        match &err {
            Error::HookFailed {
                program,
                args,
                status,
                stderr,
                ..
            } => {
                assert_eq!(program, "sh");
                assert_eq!(args[0], "-c");
                assert_eq!(*status, Some(3));
                assert_eq!(stderr.trim(), "no such container");
            }
            other => panic!("expected HookFailed, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("no such container"), "{msg}");
    }

    #[tokio::test]
    async fn the_child_gets_a_cleared_environment_a_directory_and_no_terminal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmd = CommandSpec::new("/bin/sh")
            .args([
                "-c",
                "printf '%s|%s|%s|%s|' \"${HOME-unset}\" \"${BAO_TOKEN-unset}\" \"$(pwd)\" \"$PATH\"; env | sort | tr '\\n' ' '; printf '|%s' \"$$\"; printf '|'; cut -d' ' -f6,7 /proc/$$/stat",
            ])
            .env("HOME", "/x y")
            .cwd(dir.path());
        let out = ProcessRunner.run(&cmd).await.expect("runs");
        let cwd = dir.path().canonicalize().expect("canonical");
        let fields: Vec<&str> = out.stdout.split('|').collect();
        assert_eq!(
            &fields[..4],
            [
                "/x y",
                "unset",
                cwd.to_str().unwrap(),
                crate::trusted_path()
            ],
            "{}",
            out.stdout
        );
        let names: Vec<&str> = fields[4]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        for name in &names {
            assert!(
                ["HOME", "PATH", "LANG", "PWD", "SHLVL", "_"].contains(name),
                "{name} leaked into the child: {names:?}"
            );
        }
        // Its own session (sid = its pid), no controlling terminal (tty_nr 0).
        let stat: Vec<&str> = fields[6].split_whitespace().collect();
        assert_eq!(
            stat,
            [fields[5], "0"],
            "session and terminal: {}",
            out.stdout
        );

        // A variable outside the allow-list is refused before anything runs.
        let err = ProcessRunner
            .run(&CommandSpec::new("/usr/bin/env").env("VAULT_TOKEN", "s.x"))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, Error::EnvNotAllowed { ref key, .. } if key == "VAULT_TOKEN"),
            "{err}"
        );

        // Without a directory, the child starts in `/` (not in whatever root's cwd is).
        let out = ProcessRunner
            .run(&CommandSpec::new("pwd"))
            .await
            .expect("runs");
        assert_eq!(out.stdout.trim(), "/");
    }

    #[tokio::test]
    async fn the_program_after_runuser_dashes_is_resolved_too() {
        let (p, args) = resolve(&CommandSpec::new("runuser").args(["-u", "nobody", "--", "true"]))
            .expect("resolves");
        assert!(p.is_absolute());
        assert!(
            args[3].starts_with('/') && args[3].ends_with("/true"),
            "{args:?}"
        );
        let err =
            resolve(&CommandSpec::new("runuser").args(["-u", "nobody", "--", "no-such-prog"]))
                .expect_err("refused");
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = ProcessRunner
            .run(&CommandSpec::new("/nonexistent/podman"))
            .await
            .expect_err("cannot spawn");
        assert!(
            matches!(err, Error::Spawn { ref program, .. } if program == "/nonexistent/podman")
        );
    }

    /// Whether a process is gone (or a zombie waiting for its reaper).
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_child_and_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("sleep.pid");
        let script = format!("sleep 5 & echo $! > '{}'; wait", pid_file.display());
        let started = Instant::now();
        let err = ProcessRunner
            .run(&sh(&script).timeout(Duration::from_millis(200)))
            .await
            .expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(3));
        match &err {
            Error::Timeout { program, after, .. } => {
                assert_eq!(program, "sh");
                assert_eq!(*after, Duration::from_millis(200));
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("pid written")
            .trim()
            .parse()
            .expect("numeric pid");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !is_dead(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            is_dead(pid),
            "the grandchild `sleep 5` (pid {pid}) survived the timeout"
        );
    }

    #[tokio::test]
    async fn a_background_grandchild_does_not_hold_the_result() {
        let started = Instant::now();
        let out = ProcessRunner
            .run(&sh("echo started; sleep 2 &").timeout(Duration::from_secs(10)))
            .await
            .expect("the shell itself succeeded");
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.stdout, "started\n");
    }

    #[tokio::test]
    async fn long_output_is_truncated() {
        let out = ProcessRunner
            .run(&sh("head -c 20000 /dev/zero | tr '\\0' a"))
            .await
            .expect("runs");
        assert!(out.stdout.starts_with(&"a".repeat(OUTPUT_LIMIT)));
        assert!(
            out.stdout.ends_with("[... 11808 more bytes cut]"),
            "{}",
            &out.stdout[OUTPUT_LIMIT..]
        );
    }

    #[tokio::test]
    async fn dry_run_records_in_order() {
        let runner = DryRunRunner::new();
        let first = CommandSpec::new("podman").args(["ps", "-q"]);
        let second = CommandSpec::new("systemctl").args(["--user", "restart", "x.service"]);
        assert_eq!(
            runner.run(&first).await.expect("ok"),
            CommandOutput::success()
        );
        runner.run(&second).await.expect("ok");
        assert_eq!(runner.recorded(), vec![first, second]);
    }
}
