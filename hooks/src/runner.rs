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

/// One command to run: program, arguments, environment, directory, time limit.
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
    /// The program (looked up in `PATH` unless it contains a `/`).
    pub program: String,
    /// Its arguments, passed as-is (no shell).
    pub args: Vec<String>,
    /// Variables added to (or overriding) the environment.
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<String>,
    /// Start from an empty environment (then `env` is all the child sees).
    pub env_clear: bool,
    /// The working directory; the caller's when `None`.
    pub cwd: Option<PathBuf>,
    /// Time limit; the child is killed when it is exceeded.
    pub timeout: Duration,
}

impl CommandSpec {
    /// A command without arguments, inheriting the environment, with
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            env_clear: false,
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

    /// Sets one environment variable for the child.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes one variable from the child's inherited environment.
    #[must_use]
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Starts the child with an empty environment (plus [`env`](Self::env)).
    #[must_use]
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
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

/// Runs commands for real with `tokio::process`.
///
/// stdin is `/dev/null`; stdout and stderr are captured. A non-zero exit
/// becomes [`Error::HookFailed`] with the captured output; exceeding
/// [`CommandSpec::timeout`] kills the child and returns [`Error::Timeout`].
/// The child runs in its own process group, so a timeout also kills what it
/// started (`sh -c 'sleep 60'`).
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

#[async_trait]
impl CommandRunner for ProcessRunner {
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput> {
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if cmd.env_clear {
            command.env_clear();
        }
        for key in &cmd.env_remove {
            command.env_remove(key);
        }
        for (key, value) in &cmd.env {
            command.env(key, value);
        }
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
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

/// Kills the child and, best effort, the rest of its process group (the
/// child leads its own group, whose id is the child's `pid`).
async fn kill_group(pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid {
        // `kill -s KILL -- -<pgid>`: std offers no safe killpg.
        let _ = tokio::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
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
    async fn env_cwd_and_clear_are_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmd = CommandSpec::new("/bin/sh")
            .args([
                "-c",
                "printf '%s|%s|%s' \"$A\" \"${HOME-unset}\" \"$(pwd)\"",
            ])
            .env_clear()
            .env("A", "x y")
            .cwd(dir.path());
        let out = ProcessRunner.run(&cmd).await.expect("runs");
        let cwd = dir.path().canonicalize().expect("canonical");
        assert_eq!(out.stdout, format!("x y|unset|{}", cwd.display()));

        // `env` rather than sh: dash invents a PATH when it has none.
        let cmd = CommandSpec::new("/usr/bin/env").env_remove("PATH");
        let out = ProcessRunner.run(&cmd).await.expect("runs");
        assert!(
            !out.stdout.lines().any(|l| l.starts_with("PATH=")),
            "{}",
            out.stdout
        );
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
