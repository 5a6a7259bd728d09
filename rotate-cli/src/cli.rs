//! The command line (clap derive) and [`run`], which the binary calls. Behind the default
//! `cli` feature, so an embedder does not pull clap or anyhow.

use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use vault_client::{HealthState, VaultClient};

use crate::config::{Config, ConfigError};
use crate::engine::Cancel;
use crate::exit::Exit;
use crate::rotation::{Mode, RotationError};
use crate::session::{Connection, Request, Session, unix_now};
use crate::state::journal::StepId;

/// Rotate every piece of TLS/mTLS material around a Vault/OpenBao deployment, in the order
/// that cannot lock you out, proving each step before the next.
#[derive(Debug, Parser)]
#[command(name = "rotate", version)]
pub struct Cli {
    /// The TOML config (the topology: Vault, PKI mount, apps, proxy). Without it, `status`
    /// uses the VAULT_*/BAO_* environment alone.
    #[arg(long, short = 'c', global = true, env = "ROTATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Output format. JSON never contains key material or tokens.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,

    /// Print only what changed and what failed (nothing at all for a run that found
    /// nothing to do) and no progress on stderr; the exit code tells the rest. For
    /// scheduled runs. JSON output is unchanged.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    /// Colour in clap's help and usage errors: `auto` only on a terminal, and never
    /// with `NO_COLOR` set or `TERM=dumb`. Reports and progress are never coloured.
    #[arg(long, global = true, value_enum, default_value_t = clap::ColorChoice::Auto)]
    pub color: clap::ColorChoice,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text.
    Human,
    /// One JSON document on stdout.
    Json,
}

/// What to rotate.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only this step (repeatable); default: every step, in order.
    #[arg(long, value_enum)]
    pub step: Vec<StepId>,
    /// Only these apps (repeatable); default: every configured app.
    #[arg(long = "app", value_name = "NAME")]
    pub apps: Vec<String>,
    /// Step leaf: KV access and seed switches.
    #[command(flatten)]
    pub kv: KvFlags,
    /// Renew only what is due: less than `[run] renew_share` (default a third) of its
    /// lifetime left, or issued by another CA than the one that signs now. Everything else
    /// is left alone without a single Vault write (for scheduled runs; also `[run] if_due`).
    #[arg(long)]
    pub if_due: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show Vault's state, version and our identity.
    ///
    /// Health, seal status, version, the token's identity and policies (never the token),
    /// and on a cluster every node's state at its own address; over mTLS with the SNI name.
    /// Without `--config`, the VAULT_*/BAO_* environment and `~/.vault-token` alone.
    #[command(
        after_long_help = "Examples:\n  rotate -c /etc/rotate/prod.toml status\n  VAULT_ADDR=https://vault:8200 rotate status -o json\n"
    )]
    Status,
    /// Show what a run would change; writes nothing.
    ///
    /// Typed changes with field diffs per step and target, after the same preflight as a
    /// run. Writes nothing, takes no lock. Exits 0 when nothing would change, 10 when
    /// something would.
    #[command(
        after_long_help = "Examples:\n  rotate -c prod.toml plan\n  rotate -c prod.toml plan --step agents --app billing -o json\n"
    )]
    Plan(Selection),
    /// Rotate: run the steps in order, proving each.
    ///
    /// Preflight, then per step and target: write (journaled, its undo recorded first),
    /// prove it as a real client sees it, commit or undo. An interrupted run is finished
    /// with `--resume` or unwound with `rollback`; the error names which.
    #[command(
        after_long_help = "Examples:\n  rotate -c prod.toml run\n  rotate -c prod.toml run --step agents --step leaf --app billing\n  rotate -c prod.toml --quiet run --if-due        # from a timer\n  rotate -c prod.toml run --resume\n"
    )]
    Run {
        /// What to rotate.
        #[command(flatten)]
        selection: Selection,
        /// Finish an interrupted run: re-gate what it applied, unwind what it left half
        /// written, then continue it (its own steps and apps).
        #[arg(long, conflicts_with_all = ["step", "apps"])]
        resume: bool,
    },
    /// Check everything rotate manages; changes nothing.
    ///
    /// Per app the write-up's checklist (fullchain exists, CN, issuer, sane expiry, key
    /// matches, agent unit active, cert login with the agent's files gives exactly the
    /// expected policies), the agent pair, mapping and role drift; the admin identity, the
    /// served listener certificate; an expiry inventory. Exits 11 naming each failed item.
    #[command(
        after_long_help = "Examples:\n  rotate -c prod.toml verify\n  rotate -c prod.toml verify --app billing -o json\n"
    )]
    Verify {
        /// Only these apps (repeatable); default: every configured app.
        #[arg(long = "app", value_name = "NAME")]
        apps: Vec<String>,
        /// Also write the expiry inventory, the verdict and the last run as a
        /// node_exporter textfile (atomically; the name must end in `.prom`).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// Every certificate file rotate manages and when it expires; reads files only.
    ///
    /// The admin's, each listener node's, each app's agent certificate and leaf, the
    /// proxy's client certificate: read from disk without Vault (fast enough for a
    /// minute timer at thousands of apps), soonest expiry first, with RFC 3339 and unix
    /// timestamps in JSON. Exits 11 when a file is missing or unreadable.
    #[command(
        after_long_help = "Examples:\n  rotate -c prod.toml inventory\n  rotate -c prod.toml inventory --metrics-file /var/lib/node_exporter/textfile_collector/rotate.prom\n"
    )]
    Inventory {
        /// Only these apps (repeatable); default: every configured app.
        #[arg(long = "app", value_name = "NAME")]
        apps: Vec<String>,
        /// Also write it, with the last run, as a node_exporter textfile (atomically; the
        /// name must end in `.prom`).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// The final healthcheck alone (step 7); writes nothing.
    ///
    /// Consecutive `sys/seal-status` answers over new mTLS connections with the SNI name,
    /// retried through a restart window; on failure, why (refused, reset / errno 104,
    /// client cert rejected, untrusted chain, name mismatch, sealed, standby) and what to
    /// do.
    #[command(after_long_help = "Example:\n  rotate -c prod.toml health\n")]
    Health,
    /// Unwind the last run.
    ///
    /// Every target it committed (or left unfinished), the latest step first;
    /// certificates it issued are revoked.
    #[command(after_long_help = "Example:\n  rotate -c prod.toml rollback\n")]
    Rollback,
    /// Print shell completions.
    #[command(
        after_long_help = "Example:\n  rotate completions bash > /etc/bash_completion.d/rotate\n"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_long_help = "Example:\n  rotate man > /usr/local/share/man/man1/rotate.1\n")]
    Man,
}

/// The seed's KV switches for step leaf (also settable in `[leaf]`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct KvFlags {
    /// Attach `secret-agent-<app>-policy` (read on `kv/data/<app>`, `kv/metadata/<app>`);
    /// the KV mount must be v2.
    #[arg(long)]
    pub with_kv_access: bool,
    /// Create `kv/<app>` if it is missing; an existing secret is never overwritten.
    #[arg(long)]
    pub with_kv_seed: bool,
}

/// Run a parsed command line, writing the report to `out`. Returns the exit code.
/// SIGINT/SIGTERM stop the run at the next safe point.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Exit {
    let cancel = Cancel::new();
    match dispatch(&cli, out, &cancel).await {
        Ok(exit) => exit,
        Err(e) => {
            let exit = e.exit();
            let mut text = chain_text(&e.0);
            let journal =
                e.0.downcast_ref::<crate::state::journal::JournalError>()
                    .or_else(|| match rotation_error(&e.0) {
                        Some(RotationError::Journal(j)) => Some(j),
                        _ => None,
                    });
            if let Some(hint) = journal.and_then(crate::state::journal::JournalError::hint) {
                text.push_str(&format!("; {hint}"));
            }
            let (version, command) = (SCHEMA_VERSION, cli.command.name());
            if let Some(RotationError::NothingToDo(what)) = rotation_error(&e.0) {
                // Not an error: said as the answer it is.
                if cli.output == Output::Json {
                    let doc = serde_json::json!({"schema_version": version, "command": command, "summary": what, "exit_code": exit.code()});
                    let _ = writeln!(out, "{doc}");
                } else {
                    let _ = writeln!(out, "{}", crate::text::escape_controls(what));
                }
                return exit;
            }
            if cli.output == Output::Json {
                let doc = serde_json::json!({"schema_version": version, "command": command, "error": text, "exit_code": exit.code()});
                let _ = writeln!(out, "{doc}");
            }
            eprintln!("rotate: error: {}", crate::text::escape_controls(&text));
            exit
        }
    }
}

/// Standard error for the log, with control bytes (but line breaks and tabs) escaped:
/// log fields carry text from outside (post-hook reasons, Vault errors), and a `\r` or
/// an escape sequence there must not rewrite what the operator sees.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One event per write: its text, escaped as the reports are (C1 controls and
        // bidi overrides included), keeping its line breaks.
        let text = String::from_utf8_lossy(buf);
        let out: Vec<String> = text.split('\n').map(crate::text::escape_controls).collect();
        std::io::stderr()
            .lock()
            .write_all(out.join("\n").as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The run's own error in `e`, whether it came straight or through the session.
fn rotation_error(e: &anyhow::Error) -> Option<&RotationError> {
    e.downcast_ref::<RotationError>().or_else(|| {
        match e.downcast_ref::<crate::session::SessionError>() {
            Some(crate::session::SessionError::Rotation(r)) => Some(&**r),
            _ => None,
        }
    })
}

/// An error and its causes on one line, each cause once: error types that already put
/// their cause into their message (`cannot read X: <io error>`) would otherwise repeat it.
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// The exit code of an error that ended a command: the first error in its chain whose
/// type has a class; 1 when none has.
fn of_error(e: &(dyn std::error::Error + 'static)) -> Exit {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<ConfigError>() {
            return Exit::Config;
        }
        if let Some(e) = e.downcast_ref::<crate::session::SessionError>() {
            return e.exit();
        }
        if let Some(e) = e.downcast_ref::<RotationError>() {
            return e.exit();
        }
        if let Some(e) = e.downcast_ref::<crate::state::journal::JournalError>() {
            return e.exit();
        }
        if let Some(e) = e.downcast_ref::<crate::error::StepError>() {
            return e.exit();
        }
        if let Some(e) = e.downcast_ref::<vault_client::Error>() {
            return e.class().into();
        }
        next = e.source();
    }
    Exit::Failure
}

/// An error with the exit code it maps to.
struct Failure(anyhow::Error);

impl Failure {
    fn exit(&self) -> Exit {
        of_error(self.0.as_ref())
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.into())
    }
}

async fn dispatch(cli: &Cli, out: &mut dyn Write, cancel: &Cancel) -> Result<Exit, Failure> {
    // Generated from the command line itself; no config needed.
    let generated = match &cli.command {
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "rotate", &mut text);
            Some(text)
        }
        Command::Man => {
            let mut text = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut text)?;
            Some(text)
        }
        _ => None,
    };
    if let Some(text) = generated {
        quiet_on_closed_pipe(out.write_all(&text).and_then(|()| out.flush()))?;
        return Ok(Exit::Ok);
    }
    let config = cli.config.as_deref().map(Config::load).transpose()?;
    let (selection, mode) = match &cli.command {
        Command::Status => return status(cli, config, out).await,
        Command::Health => return health(cli, config, out).await,
        Command::Verify { apps, metrics_file } => {
            return verify(cli, config, apps, metrics_file.as_deref(), out).await;
        }
        Command::Inventory { apps, metrics_file } => {
            return inventory(cli, config, apps, metrics_file.as_deref(), out);
        }
        Command::Plan(s) => (Some(s), Mode::Plan),
        Command::Run {
            selection,
            resume: false,
        } => (Some(selection), Mode::Run),
        Command::Run { resume: true, .. } => (None, Mode::Resume),
        Command::Rollback => (None, Mode::Rollback),
        Command::Completions { .. } | Command::Man => return Ok(Exit::Ok),
    };
    let session = Session::new(config.ok_or(ConfigError::Missing)?)?.with_environment();
    let config = session.config();
    let mut run_id = None;
    let result = run_steps(cli, &session, selection, mode, out, cancel, &mut run_id).await;
    if mode != Mode::Plan {
        // What the metrics textfile reports as the last run; its own failure is only said.
        let exit = result.as_ref().map_or_else(Failure::exit, |e| *e);
        let label = match mode {
            Mode::Resume => "run --resume",
            Mode::Rollback => "rollback",
            _ => "run",
        };
        if let Err(e) = crate::state::outcome::record(
            &config.state_dir(),
            run_id.as_deref(),
            label,
            exit.code(),
            unix_now(),
        ) {
            eprintln!(
                "rotate: could not record how this run ended (for the metrics): {}",
                crate::text::escape_controls(&e.to_string())
            );
        }
    }
    result
}

/// Plan, run, resume or roll back: the report on `out`, the run's id into `run_id`.
async fn run_steps(
    cli: &Cli,
    session: &Session,
    selection: Option<&Selection>,
    mode: Mode,
    out: &mut dyn Write,
    cancel: &Cancel,
    run_id: &mut Option<String>,
) -> Result<Exit, Failure> {
    let request = Request {
        mode,
        steps: selection.map(|s| s.step.clone()).unwrap_or_default(),
        apps: selection.map(|s| s.apps.clone()).unwrap_or_default(),
        kv_access: selection.is_some_and(|s| s.kv.with_kv_access),
        kv_seed: selection.is_some_and(|s| s.kv.with_kv_seed),
        if_due: selection.is_some_and(|s| s.if_due),
    };
    let mut report = tokio::select! {
        r = session.run(&request, cancel) => r?,
        never = stop_signal(cancel) => match never {},
    };
    for what in &report.repaired {
        eprintln!(
            "rotate: before connecting: restored {} (an interrupted run left a key and certificate that did not belong together)",
            crate::text::escape_controls(what)
        );
    }
    run_id.clone_from(&report.run_id);
    if cli.quiet && cli.output == Output::Human && !report.retain_notable() {
        return Ok(report.exit());
    }
    emit(cli, out, &report)?;
    if cli.output == Output::Human && report.exit() != Exit::Ok && report.exit() != Exit::Changes {
        eprintln!("rotate: {}", crate::text::escape_controls(&report.summary));
    }
    Ok(report.exit())
}

/// Waits for SIGINT/SIGTERM, then asks the run to stop at its next safe point and keeps
/// waiting (the run finishes what it started, then returns).
async fn stop_signal(cancel: &Cancel) -> std::convert::Infallible {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("rotate: stop requested: finishing the targets under way, then stopping");
    cancel.cancel();
    std::future::pending().await
}

async fn status(cli: &Cli, config: Option<Config>, out: &mut dyn Write) -> Result<Exit, Failure> {
    if let Some(c) = &config {
        crate::repair::refuse_if_torn(c)?;
    }
    let client_cfg = match &config {
        Some(c) => c.client_config()?,
        None => {
            let cfg = vault_client::ClientConfig::from_env()?;
            match crate::config::home_token()? {
                Some(t) if cfg.token.is_none() => cfg.token(&t)?,
                _ => cfg,
            }
        }
    };
    let vault = VaultClient::new(&client_cfg)?;
    let mut report = crate::status::status(
        &vault,
        client_cfg.addr.as_str(),
        client_cfg.tls_server_name.as_deref(),
        vault.has_token(),
    )
    .await?;
    if let Some(c) = config.as_ref().filter(|c| c.is_cluster()) {
        let nodes: Vec<(String, String)> = c
            .listener
            .iter()
            .flat_map(|l| l.servers())
            .filter_map(|n| Some((n.name, n.addr?)))
            .collect();
        report.nodes = crate::status::node_states(&client_cfg, &nodes).await;
    }
    let exit = match report.state {
        HealthState::Sealed | HealthState::NotInitialized => Exit::Sealed,
        _ => Exit::Ok,
    };
    report.exit_code = exit.code();
    emit_unless_quiet(cli, out, &report, exit)?;
    Ok(exit)
}

/// [`emit`], except that `--quiet` prints nothing for a command that found all well.
fn emit_unless_quiet<T: serde::Serialize + std::fmt::Display>(
    cli: &Cli,
    out: &mut dyn Write,
    report: &T,
    exit: Exit,
) -> std::io::Result<()> {
    if cli.quiet && cli.output == Output::Human && exit == Exit::Ok {
        return Ok(());
    }
    emit(cli, out, report)
}

async fn verify(
    cli: &Cli,
    config: Option<Config>,
    names: &[String],
    metrics: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let config = config.ok_or(ConfigError::Missing)?;
    let apps = config.select_apps(names)?;
    crate::repair::refuse_if_torn(&config)?;
    let conn = Connection::open(&config, true)?;
    let cancel = Cancel::new();
    let report = crate::verify::verify(&config, &apps, conn.deps(&cancel)).await;
    if let Some(path) = metrics {
        let failed = report.checks.iter().filter(|c| !c.ok).count();
        write_metrics(&config, path, &report.inventory, Some(failed))?;
    }
    emit_unless_quiet(cli, out, &report, report.exit())?;
    Ok(report.exit())
}

fn inventory(
    cli: &Cli,
    config: Option<Config>,
    names: &[String],
    metrics: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let config = config.ok_or(ConfigError::Missing)?;
    let apps = config.select_apps(names)?;
    let inv = crate::metrics::inventory(&config, &apps, unix_now());
    if let Some(path) = metrics {
        write_metrics(&config, path, &inv.inventory, None)?;
    }
    let mut inv = inv;
    let exit = match inv.unreadable.is_empty() {
        true => Exit::Ok,
        false => Exit::VerifyFailed,
    };
    inv.exit_code = exit.code();
    emit_unless_quiet(cli, out, &inv, exit)?;
    Ok(exit)
}

/// The textfile of `inventory` (and verify's verdict) with the last run of the config's
/// state directory.
fn write_metrics(
    config: &Config,
    path: &std::path::Path,
    inventory: &[crate::checks::Material],
    verify_failed: Option<usize>,
) -> Result<(), Failure> {
    let last = crate::state::outcome::last(&config.state_dir())?;
    let text = crate::metrics::textfile(
        &config.env,
        inventory,
        unix_now(),
        &crate::metrics::Extra {
            verify_failed,
            last_run: last.as_ref(),
        },
    );
    crate::metrics::write_textfile(path, &text)?;
    Ok(())
}

async fn health(cli: &Cli, config: Option<Config>, out: &mut dyn Write) -> Result<Exit, Failure> {
    let config = config.ok_or(ConfigError::Missing)?;
    crate::repair::refuse_if_torn(&config)?;
    let conn = Connection::open(&config, true)?;
    let cancel = Cancel::new();
    let started = std::time::Instant::now();
    let step = crate::steps::health::HealthStep::new(&config, conn.deps(&cancel));
    let result = crate::engine::with_heartbeat("health", step.check()).await;
    let report = crate::steps::health::HealthReport::new(&config, result, started.elapsed());
    emit_unless_quiet(cli, out, &report, report.exit())?;
    Ok(report.exit())
}

/// The version of the JSON documents `--output json` prints (`schemas/rotate.schema.json`):
/// raised when a field is removed or changes meaning; added fields keep it.
pub const SCHEMA_VERSION: u32 = 1;

/// Every JSON document: the schema version and the command, then the command's report.
#[derive(serde::Serialize)]
struct Envelope<'a, T: serde::Serialize> {
    schema_version: u32,
    command: &'static str,
    #[serde(flatten)]
    report: &'a T,
}

impl Command {
    /// The command's name as the JSON documents carry it (`run --resume` is `run`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Plan(_) => "plan",
            Command::Run { .. } => "run",
            Command::Verify { .. } => "verify",
            Command::Inventory { .. } => "inventory",
            Command::Health => "health",
            Command::Rollback => "rollback",
            Command::Completions { .. } => "completions",
            Command::Man => "man",
        }
    }
}

fn emit<T: serde::Serialize + std::fmt::Display>(
    cli: &Cli,
    out: &mut dyn Write,
    report: &T,
) -> std::io::Result<()> {
    let doc = Envelope {
        schema_version: SCHEMA_VERSION,
        command: cli.command.name(),
        report,
    };
    let written = match cli.output {
        Output::Human => write!(out, "{report}").and_then(|()| out.flush()),
        Output::Json => serde_json::to_writer_pretty(&mut *out, &doc)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush()),
    };
    quiet_on_closed_pipe(written)
}

/// A reader that stopped reading (`rotate plan | head -1`) is not a failure: the exit
/// code still tells what happened.
fn quiet_on_closed_pipe(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn run_without_a_config_is_a_config_error() {
        let mut out = Vec::new();
        let cli = Cli::parse_from(["rotate", "-o", "json", "run", "--step", "agents"]);
        assert_eq!(run(cli, &mut out).await, Exit::Config);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["error"].as_str().unwrap().contains("--config"), "{v}");
    }

    #[test]
    fn resume_takes_no_selection() {
        let r = Cli::try_parse_from(["rotate", "run", "--resume", "--app", "x"]);
        assert!(
            r.is_err(),
            "--resume continues the interrupted run as it was asked"
        );
    }
}
