//! Reloading what serves the rotated material: containers by label or name,
//! systemd system and user units, processes by pid file, arbitrary commands.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CommandRunner;
use crate::error::{Error, Result};
use crate::process::{ExpectProcess, signal_pid_file};
use crate::runner::CommandSpec;
use crate::users::lookup_user;

/// One way of making a service pick up new TLS material.
///
/// Deserializes from a tagged map (`{ kind = "podman-label", label = "tls=true" }`)
/// or from the write-up's string form (`"podman:proxyprod"`, see [`FromStr`]).
///
/// String forms (the `PROXY_RELOAD` scheme, shared with the post-hook script):
///
/// | string | reloader |
/// |---|---|
/// | `podman:<name>` | [`PodmanContainer`](Self::PodmanContainer), signal `HUP` |
/// | `podman:<name>:<SIG>` | [`PodmanContainer`](Self::PodmanContainer), signal `SIG` |
/// | `podman-restart:<name>` | [`PodmanContainer`](Self::PodmanContainer), restart |
/// | `podman-label:<key=value>` | [`PodmanLabel`](Self::PodmanLabel), signal `HUP` |
/// | `systemd-user:<unit>` | [`SystemdUser`](Self::SystemdUser) |
/// | `systemd:<unit>` | [`Systemd`](Self::Systemd), `systemctl reload` |
/// | `systemd-restart:<unit>` | [`Systemd`](Self::Systemd), `systemctl restart` |
/// | `signal:<pidfile>:<SIG>` | [`Signal`](Self::Signal) |
/// | `cmd:<shell command>` | [`Command`](Self::Command) running `sh -c <shell command>` |
///
/// ```
/// use hooks::Reloader;
/// let proxy: Reloader = "podman:proxyprod".parse()?;
/// assert_eq!(proxy, Reloader::PodmanContainer { name: "proxyprod".into(), signal: Some("HUP".into()) });
/// assert!("podman:".parse::<Reloader>().is_err());
/// # Ok::<(), hooks::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReloaderRepr", tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reloader {
    /// Every running container carrying `label` (`podman ps --filter
    /// label=<label>`): `podman kill --signal <signal>` each, or `podman
    /// restart` each when `signal` is `None`.
    PodmanLabel {
        /// `key=value` (or just `key`), as `RELOAD_TLS_LABEL='tls=true'`.
        label: String,
        /// Signal name (`HUP`), or `None` to restart.
        signal: Option<String>,
    },
    /// One container by name: signal it, or restart it when `signal` is `None`.
    PodmanContainer {
        /// Container name (`proxyprod`).
        name: String,
        /// Signal name (`HUP`), or `None` to restart.
        signal: Option<String>,
    },
    /// A systemd user unit: `systemctl --user restart`, then `is-active`.
    SystemdUser {
        /// The unit (`vault-agent-ncprd1.service`).
        unit: String,
        /// Run as this user (through `runuser -u <user> --`, so the caller
        /// must be root); `XDG_RUNTIME_DIR` then defaults to
        /// `/run/user/<uid>`. `None`: the caller's own user manager.
        user: Option<String>,
        /// `XDG_RUNTIME_DIR` to set (overrides the `/run/user/<uid>` default).
        xdg_runtime_dir: Option<PathBuf>,
    },
    /// A systemd system unit (e.g. `openbao.service`): `systemctl reload` (its
    /// `ExecReload`, SIGHUP for OpenBao's unit) or `systemctl restart`, then `is-active`.
    Systemd {
        /// The unit.
        unit: String,
        /// Restart instead of reload.
        restart: bool,
    },
    /// Send a reload signal (`HUP`, `USR1`, `USR2`) to the process whose pid is in
    /// `pid_file`: only a process running as the pid file's owner (any, when root owns
    /// it), through a pidfd.
    Signal {
        /// A file holding one decimal pid.
        pid_file: PathBuf,
        /// Signal name (`HUP`, `USR1`; a `SIG` prefix is accepted).
        signal: String,
    },
    /// Run a program (no shell unless you ask for one).
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// The wire form: a string in the `PROXY_RELOAD` scheme, or a tagged map.
#[derive(Deserialize)]
#[serde(untagged)]
enum ReloaderRepr {
    Short(String),
    Tagged(TaggedReloader),
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum TaggedReloader {
    PodmanLabel {
        label: String,
        #[serde(default)]
        signal: Option<String>,
    },
    PodmanContainer {
        name: String,
        #[serde(default)]
        signal: Option<String>,
    },
    SystemdUser {
        unit: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        xdg_runtime_dir: Option<PathBuf>,
    },
    Systemd {
        unit: String,
        #[serde(default)]
        restart: bool,
    },
    Signal {
        pid_file: PathBuf,
        signal: String,
    },
    Command {
        program: String,
        #[serde(default)]
        args: Vec<String>,
    },
}

impl TryFrom<ReloaderRepr> for Reloader {
    type Error = Error;

    fn try_from(repr: ReloaderRepr) -> Result<Self> {
        let reloader = match repr {
            ReloaderRepr::Short(s) => return s.parse(),
            ReloaderRepr::Tagged(t) => match t {
                TaggedReloader::PodmanLabel { label, signal } => {
                    Self::PodmanLabel { label, signal }
                }
                TaggedReloader::PodmanContainer { name, signal } => {
                    Self::PodmanContainer { name, signal }
                }
                TaggedReloader::SystemdUser {
                    unit,
                    user,
                    xdg_runtime_dir,
                } => Self::SystemdUser {
                    unit,
                    user,
                    xdg_runtime_dir,
                },
                TaggedReloader::Systemd { unit, restart } => Self::Systemd { unit, restart },
                TaggedReloader::Signal { pid_file, signal } => Self::Signal { pid_file, signal },
                TaggedReloader::Command { program, args } => Self::Command { program, args },
            },
        };
        reloader.validate()?;
        Ok(reloader)
    }
}

impl FromStr for Reloader {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReloader {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = input.split_once(':') else {
            return Err(bad(
                "expected <scheme>:<target>; schemes: podman, podman-restart, podman-label, systemd, systemd-restart, systemd-user, signal, cmd",
            ));
        };
        let reloader = match scheme {
            "podman" => {
                let (name, signal) = match rest.split_once(':') {
                    Some((name, sig)) => (name, sig),
                    None => (rest, "HUP"),
                };
                Self::PodmanContainer {
                    name: name.to_owned(),
                    signal: Some(signal.to_owned()),
                }
            }
            "podman-restart" => Self::PodmanContainer {
                name: rest.to_owned(),
                signal: None,
            },
            "podman-label" => Self::PodmanLabel {
                label: rest.to_owned(),
                signal: Some("HUP".to_owned()),
            },
            "systemd-user" => Self::SystemdUser {
                unit: rest.to_owned(),
                user: None,
                xdg_runtime_dir: None,
            },
            "systemd" | "systemd-restart" => Self::Systemd {
                unit: rest.to_owned(),
                restart: scheme == "systemd-restart",
            },
            "signal" => {
                let Some((pid_file, signal)) = rest.rsplit_once(':') else {
                    return Err(bad("expected signal:<pidfile>:<SIG>"));
                };
                Self::Signal {
                    pid_file: PathBuf::from(pid_file),
                    signal: signal.to_owned(),
                }
            }
            "cmd" => {
                if rest.trim().is_empty() {
                    return Err(bad("cmd: needs a command"));
                }
                Self::Command {
                    program: "sh".to_owned(),
                    args: vec!["-c".to_owned(), rest.to_owned()],
                }
            }
            other => {
                return Err(bad(&format!(
                    "unknown scheme `{other}`; expected podman, podman-restart, podman-label, systemd, systemd-restart, systemd-user, signal or cmd"
                )));
            }
        };
        reloader.validate().map_err(|err| match err {
            Error::InvalidReloader { reason, .. } => bad(&reason),
            other => other,
        })?;
        Ok(reloader)
    }
}

impl std::fmt::Display for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PodmanLabel { label, signal } => match signal {
                Some(sig) => write!(f, "SIG{sig} to podman containers labelled {label}"),
                None => write!(f, "restart podman containers labelled {label}"),
            },
            Self::PodmanContainer { name, signal } => match signal {
                Some(sig) => write!(f, "SIG{sig} to podman container {name}"),
                None => write!(f, "restart podman container {name}"),
            },
            Self::SystemdUser { unit, user, .. } => match user {
                Some(user) => write!(f, "restart user unit {unit} of {user}"),
                None => write!(f, "restart user unit {unit}"),
            },
            Self::Systemd { unit, restart } => {
                write!(
                    f,
                    "{} unit {unit}",
                    if *restart { "restart" } else { "reload" }
                )
            }
            Self::Signal { pid_file, signal } => {
                write!(f, "SIG{signal} to the pid in {}", pid_file.display())
            }
            Self::Command { program, args } => {
                write!(f, "run {}", crate::error::command_line(program, args))
            }
        }
    }
}

impl Reloader {
    /// Checks every field: non-empty names that cannot pass for options,
    /// known-looking signal names, absolute pid file. Signal names lose
    /// their `SIG` prefix only when used, not here.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::PodmanLabel { label, signal } => {
                check_word("label", label)?;
                signal.as_deref().map(check_signal).transpose()?;
            }
            Self::PodmanContainer { name, signal } => {
                check_word("container name", name)?;
                signal.as_deref().map(check_signal).transpose()?;
            }
            Self::SystemdUser {
                unit,
                user,
                xdg_runtime_dir,
            } => {
                check_word("unit", unit)?;
                user.as_deref().map(|u| check_word("user", u)).transpose()?;
                if let Some(dir) = xdg_runtime_dir {
                    check_absolute("XDG_RUNTIME_DIR", dir)?;
                }
            }
            Self::Systemd { unit, .. } => check_word("unit", unit)?,
            Self::Signal { pid_file, signal } => {
                check_absolute("pid file", pid_file)?;
                if crate::process::reload_signal(signal).is_none() {
                    return Err(invalid(format!(
                        "`{}` is not a reload signal; a signal: reloader sends one of {}",
                        signal.escape_debug(),
                        crate::process::RELOAD_SIGNALS.join(", ")
                    )));
                }
            }
            Self::Command { program, .. } => {
                if program.is_empty() {
                    return Err(invalid("an empty program"));
                }
            }
        }
        Ok(())
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidReloader {
        input: String::new(),
        reason: reason.into(),
    }
}

fn check_word(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(format!("empty {what}")));
    }
    if value.starts_with('-') {
        return Err(invalid(format!("{what} `{value}` starts with `-`")));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "{what} `{}` contains whitespace or control characters",
            value.escape_debug()
        )));
    }
    Ok(())
}

fn check_absolute(what: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{what} `{}` is not absolute",
            path.display()
        )));
    }
    Ok(())
}

/// Accepts `HUP`, `SIGHUP`, `USR1`, `RTMIN+1`-style names and numbers.
fn check_signal(signal: &str) -> Result<()> {
    let name = signal_name(signal);
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
        && !name.starts_with(['-', '+']);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "bad signal `{}`; expected a name like HUP or USR1",
            signal.escape_debug()
        )))
    }
}

/// `SIGHUP` -> `HUP`; `HUP` -> `HUP`.
fn signal_name(signal: &str) -> &str {
    signal.strip_prefix("SIG").unwrap_or(signal)
}

/// What a [`reload`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// The reloader, described (`SIGHUP to podman containers labelled tls=true`).
    pub reloader: String,
    /// What was reloaded: container names, the unit, `pid <n>`, the program.
    /// Empty when a label matched no running container.
    pub reloaded: Vec<String>,
    /// Every command run, in order (for logs and machine output).
    pub commands: Vec<String>,
}

const PODMAN: &str = "podman";

/// Performs one reload through `runner`, each command limited to `timeout`.
///
/// Stops at the first failing command; the error names it and carries its
/// stderr. A systemd unit that is not `active` after its restart is an
/// [`Error::NotActive`]. A `signal:` reloader signals only a process running as its pid
/// file's owner (any process when root owns the pid file), through a pidfd (see
/// [`signal_pid_file`](crate::signal_pid_file)).
pub async fn reload(
    runner: &dyn CommandRunner,
    reloader: &Reloader,
    timeout: Duration,
) -> Result<ReloadReport> {
    reload_expecting(runner, reloader, timeout, &ExpectProcess::default()).await
}

/// [`reload`], where a `signal:` reloader's process must also match `expect` (e.g. the
/// Vault server: executable `bao` or `vault`, listening on its API port).
pub async fn reload_expecting(
    runner: &dyn CommandRunner,
    reloader: &Reloader,
    timeout: Duration,
    expect: &ExpectProcess,
) -> Result<ReloadReport> {
    reloader.validate()?;
    let mut report = ReloadReport {
        reloader: reloader.to_string(),
        reloaded: Vec::new(),
        commands: Vec::new(),
    };
    match reloader {
        Reloader::PodmanLabel { label, signal } => {
            let ps = CommandSpec::new(PODMAN).args([
                "ps",
                "--filter",
                &format!("label={label}"),
                "--format",
                "{{.Names}}",
            ]);
            let listed = run(runner, timeout, &mut report, ps).await?;
            let names: Vec<String> = listed
                .stdout
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                tracing::info!(%label, "no running container has the label");
            }
            for name in names {
                run(
                    runner,
                    timeout,
                    &mut report,
                    podman_reload(&name, signal.as_deref()),
                )
                .await?;
                tracing::info!(container = %name, %label, "reloaded container");
                report.reloaded.push(name);
            }
        }
        Reloader::PodmanContainer { name, signal } => {
            run(
                runner,
                timeout,
                &mut report,
                podman_reload(name, signal.as_deref()),
            )
            .await?;
            tracing::info!(container = %name, "reloaded container");
            report.reloaded.push(name.clone());
        }
        Reloader::SystemdUser {
            unit,
            user,
            xdg_runtime_dir,
        } => {
            let base = systemctl_base(user.as_deref(), xdg_runtime_dir.as_deref())?;
            unit_action(runner, timeout, &mut report, base, "restart", unit).await?;
            tracing::info!(%unit, "restarted user unit");
        }
        Reloader::Systemd { unit, restart } => {
            let action = if *restart { "restart" } else { "reload" };
            let base = CommandSpec::new("systemctl");
            unit_action(runner, timeout, &mut report, base, action, unit).await?;
            tracing::info!(%unit, action, "system unit");
        }
        Reloader::Signal { pid_file, signal } => {
            let info = signal_pid_file(pid_file, signal, expect)?;
            tracing::info!(pid = info.pid, signal = %signal, "signalled process");
            report.commands.push(format!(
                "SIG{} to {info} (from {})",
                signal_name(signal),
                pid_file.display()
            ));
            report.reloaded.push(format!("pid {}", info.pid));
        }
        Reloader::Command { program, args } => {
            run(
                runner,
                timeout,
                &mut report,
                CommandSpec::new(program).args(args),
            )
            .await?;
            report.reloaded.push(program.clone());
        }
    }
    Ok(report)
}

async fn run(
    runner: &dyn CommandRunner,
    timeout: Duration,
    report: &mut ReloadReport,
    cmd: CommandSpec,
) -> Result<crate::runner::CommandOutput> {
    let cmd = cmd.timeout(timeout);
    report.commands.push(cmd.to_string());
    runner.run(&cmd).await
}

/// `<base> <action> <unit>`, then `<base> is-active <unit>`, which must say `active`
/// (asked again, until `timeout` after the action began, while it says `reloading`; an
/// `activating` unit may be crash-looping, so that is not waited out).
async fn unit_action(
    runner: &dyn CommandRunner,
    timeout: Duration,
    report: &mut ReloadReport,
    base: CommandSpec,
    action: &str,
    unit: &str,
) -> Result<()> {
    let until = tokio::time::Instant::now() + timeout;
    run(runner, timeout, report, base.clone().args([action, unit])).await?;
    let state = loop {
        let is_active = base.clone().args(["is-active", unit]);
        let state = match run(runner, timeout, report, is_active).await {
            Ok(out) => out.stdout.trim().to_owned(),
            Err(Error::HookFailed { stdout, .. }) => stdout.trim().to_owned(),
            Err(other) => return Err(other),
        };
        if state != "reloading" || tokio::time::Instant::now() >= until {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if state != "active" {
        return Err(Error::NotActive {
            unit: unit.to_owned(),
            state: if state.is_empty() {
                "unknown".to_owned()
            } else {
                state
            },
        });
    }
    report.reloaded.push(unit.to_owned());
    Ok(())
}

fn podman_reload(name: &str, signal: Option<&str>) -> CommandSpec {
    match signal {
        Some(sig) => CommandSpec::new(PODMAN).args(["kill", "--signal", signal_name(sig), name]),
        None => CommandSpec::new(PODMAN).args(["restart", name]),
    }
}

fn systemctl_base(user: Option<&str>, xdg_runtime_dir: Option<&Path>) -> Result<CommandSpec> {
    let mut cmd = match user {
        Some(user) => CommandSpec::new("runuser").args(["-u", user, "--", "systemctl", "--user"]),
        None => CommandSpec::new("systemctl").arg("--user"),
    };
    let runtime_dir = match (xdg_runtime_dir, user) {
        (Some(dir), _) => Some(dir.to_path_buf()),
        (None, Some(user)) => Some(PathBuf::from(format!(
            "/run/user/{}",
            lookup_user(user)?.uid
        ))),
        (None, None) => None,
    };
    if let Some(dir) = runtime_dir {
        cmd = cmd.env("XDG_RUNTIME_DIR", dir.to_string_lossy());
    }
    Ok(cmd)
}

/// The state of a user unit (`systemctl --user is-active <unit>`, through `runuser -u
/// <user>` when `user` is given): `active`, `inactive`, `failed`, ...
pub async fn unit_state(
    runner: &dyn CommandRunner,
    unit: &str,
    user: Option<&str>,
    timeout: std::time::Duration,
) -> Result<String> {
    let mut cmd = systemctl_base(user, None)?.args(["is-active", unit]);
    cmd.timeout = timeout;
    match runner.run(&cmd).await {
        Ok(out) => Ok(out.stdout.trim().to_owned()),
        Err(Error::HookFailed { stdout, .. }) if !stdout.trim().is_empty() => {
            Ok(stdout.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// Stop a user unit (`systemctl --user stop <unit>`, through `runuser -u <user>` when
/// `user` is given).
pub async fn stop_unit(
    runner: &dyn CommandRunner,
    unit: &str,
    user: Option<&str>,
    timeout: std::time::Duration,
) -> Result<()> {
    let mut cmd = systemctl_base(user, None)?.args(["stop", unit]);
    cmd.timeout = timeout;
    runner.run(&cmd).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockCommandRunner;
    use crate::runner::{CommandOutput, DryRunRunner};
    use mockall::Sequence;

    const T: Duration = Duration::from_secs(5);

    fn expect_cmd(
        mock: &mut MockCommandRunner,
        seq: &mut Sequence,
        program: &'static str,
        args: &'static [&'static str],
        result: fn() -> Result<CommandOutput>,
    ) {
        mock.expect_run()
            .withf(move |cmd| cmd.program == program && cmd.args == args && cmd.timeout == T)
            .times(1)
            .in_sequence(seq)
            .returning(move |_| result());
    }

    const PS: &[&str] = &["ps", "--filter", "label=tls=true", "--format", "{{.Names}}"];

    fn label() -> Reloader {
        Reloader::PodmanLabel {
            label: "tls=true".into(),
            signal: Some("HUP".into()),
        }
    }

    #[tokio::test]
    async fn label_with_no_container() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(&mut mock, &mut seq, "podman", PS, || {
            Ok(CommandOutput::with_stdout(""))
        });
        let report = reload(&mock, &label(), T).await.expect("ok");
        assert!(report.reloaded.is_empty());
        assert_eq!(report.commands.len(), 1);
    }

    #[tokio::test]
    async fn label_with_one_container() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(&mut mock, &mut seq, "podman", PS, || {
            Ok(CommandOutput::with_stdout("ncprd1-nginx\n"))
        });
        expect_cmd(
            &mut mock,
            &mut seq,
            "podman",
            &["kill", "--signal", "HUP", "ncprd1-nginx"],
            || Ok(CommandOutput::success()),
        );
        let report = reload(&mock, &label(), T).await.expect("ok");
        assert_eq!(report.reloaded, ["ncprd1-nginx"]);
    }

    #[tokio::test]
    async fn label_with_two_containers_restarts_each_without_signal() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(&mut mock, &mut seq, "podman", PS, || {
            Ok(CommandOutput::with_stdout("a\nb\n"))
        });
        expect_cmd(&mut mock, &mut seq, "podman", &["restart", "a"], || {
            Ok(CommandOutput::success())
        });
        expect_cmd(&mut mock, &mut seq, "podman", &["restart", "b"], || {
            Ok(CommandOutput::success())
        });
        let restart = Reloader::PodmanLabel {
            label: "tls=true".into(),
            signal: None,
        };
        let report = reload(&mock, &restart, T).await.expect("ok");
        assert_eq!(report.reloaded, ["a", "b"]);
        assert_eq!(report.commands[1], "podman restart a");
    }

    #[tokio::test]
    async fn podman_ps_failure_reports_stderr() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(&mut mock, &mut seq, "podman", PS, || {
            Err(Error::HookFailed {
                program: "podman".into(),
                args: PS.iter().map(|s| s.to_string()).collect(),
                status: Some(125),
                stderr: "Error: cannot connect to Podman socket".into(),
                stdout: String::new(),
            })
        });
        let err = reload(&mock, &label(), T).await.expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("podman ps --filter label=tls=true"), "{msg}");
        assert!(msg.contains("cannot connect to Podman socket"), "{msg}");
        assert!(msg.contains("exit code 125"), "{msg}");
    }

    #[tokio::test]
    async fn container_by_name_gets_hup() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(
            &mut mock,
            &mut seq,
            "podman",
            &["kill", "--signal", "HUP", "proxyprod"],
            || Ok(CommandOutput::success()),
        );
        let proxy: Reloader = "podman:proxyprod".parse().expect("parses");
        let report = reload(&mock, &proxy, T).await.expect("ok");
        assert_eq!(report.reloaded, ["proxyprod"]);
    }

    fn unit() -> Reloader {
        Reloader::SystemdUser {
            unit: "vault-agent-ncprd1.service".into(),
            user: None,
            xdg_runtime_dir: Some("/run/user/1001".into()),
        }
    }

    #[tokio::test]
    async fn systemd_user_restart_then_is_active() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        mock.expect_run()
            .withf(|cmd| {
                cmd.program == "systemctl"
                    && cmd.args == ["--user", "restart", "vault-agent-ncprd1.service"]
                    && cmd.env == [("XDG_RUNTIME_DIR".to_owned(), "/run/user/1001".to_owned())]
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(CommandOutput::success()));
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["--user", "is-active", "vault-agent-ncprd1.service"],
            || Ok(CommandOutput::with_stdout("active\n")),
        );
        let report = reload(&mock, &unit(), T).await.expect("ok");
        assert_eq!(report.reloaded, ["vault-agent-ncprd1.service"]);
    }

    #[tokio::test]
    async fn systemd_user_failed_after_restart() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["--user", "restart", "vault-agent-ncprd1.service"],
            || Ok(CommandOutput::success()),
        );
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["--user", "is-active", "vault-agent-ncprd1.service"],
            || {
                Err(Error::HookFailed {
                    program: "systemctl".into(),
                    args: vec![],
                    status: Some(3),
                    stderr: String::new(),
                    stdout: "failed\n".into(),
                })
            },
        );
        let err = reload(&mock, &unit(), T).await.expect_err("not active");
        assert!(
            matches!(&err, Error::NotActive { unit, state } if unit == "vault-agent-ncprd1.service" && state == "failed"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn systemd_user_restart_failure_stops_before_is_active() {
        let mut mock = MockCommandRunner::new();
        mock.expect_run().times(1).returning(|cmd| {
            Err(Error::HookFailed {
                program: cmd.program.clone(),
                args: cmd.args.clone(),
                status: Some(5),
                stderr: "Unit vault-agent-ncprd1.service not found.".into(),
                stdout: String::new(),
            })
        });
        let err = reload(&mock, &unit(), T).await.expect_err("fails");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn systemd_system_unit_reload_then_is_active_without_user_scope() {
        let mut mock = MockCommandRunner::new();
        let mut seq = Sequence::new();
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["reload", "openbao.service"],
            || Ok(CommandOutput::success()),
        );
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["is-active", "openbao.service"],
            || Ok(CommandOutput::with_stdout("reloading\n")),
        );
        expect_cmd(
            &mut mock,
            &mut seq,
            "systemctl",
            &["is-active", "openbao.service"],
            || Ok(CommandOutput::with_stdout("active\n")),
        );
        let r: Reloader = "systemd:openbao.service".parse().unwrap();
        let report = reload(&mock, &r, T).await.expect("active after reloading");
        assert_eq!(report.reloaded, ["openbao.service"]);
        assert_eq!(
            report.commands,
            [
                "systemctl reload openbao.service",
                "systemctl is-active openbao.service",
                "systemctl is-active openbao.service"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn systemd_system_unit_still_reloading_at_the_deadline_is_not_active() {
        let mut mock = MockCommandRunner::new();
        mock.expect_run().returning(|cmd| {
            Ok(if cmd.args[0] == "is-active" {
                CommandOutput::with_stdout("reloading\n")
            } else {
                CommandOutput::success()
            })
        });
        let r: Reloader = "systemd-restart:openbao.service".parse().unwrap();
        let err = reload(&mock, &r, T).await.expect_err("never active");
        assert!(
            matches!(&err, Error::NotActive { state, .. } if state == "reloading"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn signal_goes_through_the_pid_file_without_a_child_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid_file = dir.path().join("nginx.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).expect("write");
        let runner = DryRunRunner::new();
        let r = Reloader::Signal {
            pid_file,
            signal: "SIGHUP".into(),
        };
        let report = reload(&runner, &r, T).await.expect("ok");
        assert_eq!(report.reloaded, [format!("pid {}", child.id())]);
        assert!(runner.recorded().is_empty(), "no `kill` process");
        let status = child.wait().expect("reaped");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(rustix::process::Signal::HUP.as_raw()));
    }

    #[tokio::test]
    async fn command_runs_as_given() {
        let runner = DryRunRunner::new();
        let r: Reloader = "cmd:nginx -s reload".parse().expect("parses");
        reload(&runner, &r, T).await.expect("ok");
        assert_eq!(runner.recorded()[0].args, ["-c", "nginx -s reload"]);
    }

    #[test]
    fn parse_table() {
        let ok: &[(&str, Reloader)] = &[
            (
                "podman:proxyprod",
                Reloader::PodmanContainer {
                    name: "proxyprod".into(),
                    signal: Some("HUP".into()),
                },
            ),
            (
                "podman:proxyprod:USR1",
                Reloader::PodmanContainer {
                    name: "proxyprod".into(),
                    signal: Some("USR1".into()),
                },
            ),
            (
                "podman-restart:proxyprod",
                Reloader::PodmanContainer {
                    name: "proxyprod".into(),
                    signal: None,
                },
            ),
            (
                "podman-label:tls=true",
                Reloader::PodmanLabel {
                    label: "tls=true".into(),
                    signal: Some("HUP".into()),
                },
            ),
            (
                "systemd-user:nginx.service",
                Reloader::SystemdUser {
                    unit: "nginx.service".into(),
                    user: None,
                    xdg_runtime_dir: None,
                },
            ),
            (
                "systemd:openbao.service",
                Reloader::Systemd {
                    unit: "openbao.service".into(),
                    restart: false,
                },
            ),
            (
                "systemd-restart:openbao.service",
                Reloader::Systemd {
                    unit: "openbao.service".into(),
                    restart: true,
                },
            ),
            (
                "signal:/run/nginx.pid:HUP",
                Reloader::Signal {
                    pid_file: "/run/nginx.pid".into(),
                    signal: "HUP".into(),
                },
            ),
            (
                "cmd:nginx -s reload",
                Reloader::Command {
                    program: "sh".into(),
                    args: vec!["-c".into(), "nginx -s reload".into()],
                },
            ),
        ];
        for (input, expected) in ok {
            assert_eq!(
                &input.parse::<Reloader>().expect(input),
                expected,
                "{input}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected <scheme>:<target>"),
            ("proxyprod", "expected <scheme>:<target>"),
            ("podman:", "empty container name"),
            ("podman:-rm", "starts with `-`"),
            ("podman:a b", "whitespace"),
            ("podman:proxy:hup", "bad signal"),
            ("docker:proxy", "unknown scheme `docker`"),
            ("systemd-user:", "empty unit"),
            ("systemd:", "empty unit"),
            ("systemd-restart:--now", "starts with `-`"),
            ("signal:/run/nginx.pid", "expected signal:<pidfile>:<SIG>"),
            ("signal:relative.pid:HUP", "not absolute"),
            ("signal:/run/x.pid:", "not a reload signal"),
            ("signal:/run/x.pid:KILL", "not a reload signal"),
            ("signal:/run/x.pid:TERM", "not a reload signal"),
            ("cmd:  ", "needs a command"),
        ];
        for (input, expected) in bad {
            let err = input.parse::<Reloader>().expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(expected), "{input}: {msg}");
            assert!(msg.contains(&format!("`{input}`")), "{input}: {msg}");
        }
    }

    #[test]
    fn deserializes_from_strings_and_maps() {
        let list: Vec<Reloader> = serde_json::from_value(serde_json::json!([
            "podman:proxyprod",
            { "kind": "podman-label", "label": "tls=true", "signal": "HUP" },
            { "kind": "systemd-user", "unit": "vault-agent-ncprd1.service", "user": "ncprd1" },
            { "kind": "signal", "pid_file": "/run/nginx.pid", "signal": "HUP" },
            { "kind": "command", "program": "true" },
        ]))
        .expect("deserializes");
        assert_eq!(list.len(), 5);
        assert_eq!(list[0], "podman:proxyprod".parse().expect("parses"));
        assert!(serde_json::from_value::<Reloader>(serde_json::json!("nope")).is_err());
        assert!(
            serde_json::from_value::<Reloader>(
                serde_json::json!({ "kind": "podman-container", "name": "-x" })
            )
            .is_err()
        );
    }
}
