//! The command line (clap derive) and `run`, which the binary calls.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use vault_client::{HealthState, VaultClient};

use crate::config::{Config, ConfigError};
use crate::deps::{FreshClients, Vault};
use crate::exit::Exit;
use crate::steps::agents::run_agents;
use crate::steps::leaf::{LeafOptions, run_leaf};
use hooks::{ProcessRunner, ProgramOverrides};

/// Rotate every piece of TLS/mTLS material around a Vault/OpenBao deployment, in the order
/// that cannot lock you out, proving each step before the next.
#[derive(Debug, Parser)]
#[command(name = "rotate", version, about)]
pub struct Cli {
    /// The TOML config (the topology: Vault, PKI mount, apps, proxy). Without it, `status`
    /// uses the VAULT_*/BAO_* environment alone.
    #[arg(long, short = 'c', global = true, env = "ROTATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Output format. JSON never contains key material or tokens.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,

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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show Vault's health, seal status, version and our identity, over mTLS.
    Status,
    /// Show what a run would change (roles, policies, mappings, files); writes nothing.
    /// Exits 10 when roles, policies or mappings would change.
    Plan {
        /// The step to plan.
        #[arg(long, value_enum, default_value_t = Step::Agents)]
        step: Step,
        /// Only these apps (repeatable); default: every configured app.
        #[arg(long = "app", value_name = "NAME")]
        apps: Vec<String>,
        /// Step leaf: KV access and seed switches.
        #[command(flatten)]
        kv: KvFlags,
    },
    /// Run a step: write, then prove it with the step's gate (rolled back if it fails).
    Run {
        /// The step to run.
        #[arg(long, value_enum)]
        step: Step,
        /// Only these apps (repeatable); default: every configured app.
        #[arg(long = "app", value_name = "NAME")]
        apps: Vec<String>,
        /// Step leaf: KV access and seed switches.
        #[command(flatten)]
        kv: KvFlags,
    },
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

/// The steps, in the order they must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Step 3: agent login mTLS certs + cert auth mappings.
    Agents,
    /// Step 4: app leaf certs via the agent, post-hook reloads, agent restart.
    Leaf,
}

/// Run a parsed command line, writing the report to `out`. Returns the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Exit {
    match dispatch(&cli, out).await {
        Ok(exit) => exit,
        Err(e) => {
            let exit = e.exit();
            if cli.output == Output::Json {
                let doc =
                    serde_json::json!({"error": format!("{:#}", e.0), "exit_code": exit.code()});
                let _ = writeln!(out, "{doc}");
            }
            eprintln!("rotate: error: {:#}", e.0);
            exit
        }
    }
}

/// An error with the exit code it maps to.
struct Failure(anyhow::Error);

impl Failure {
    fn exit(&self) -> Exit {
        if self.0.downcast_ref::<ConfigError>().is_some() {
            return Exit::Config;
        }
        if let Some(e) = self.0.downcast_ref::<crate::steps::StepError>() {
            return e.exit();
        }
        if let Some(e) = self.0.downcast_ref::<vault_client::Error>() {
            return match e {
                vault_client::Error::Config { .. }
                | vault_client::Error::ReadFile { .. }
                | vault_client::Error::BadPem { .. } => Exit::Config,
                vault_client::Error::Api { status: 503, .. } => Exit::Sealed,
                _ => Exit::Vault,
            };
        }
        Exit::Failure
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.into())
    }
}

async fn dispatch(cli: &Cli, out: &mut dyn Write) -> Result<Exit, Failure> {
    let config = cli.config.as_deref().map(Config::load).transpose()?;
    match &cli.command {
        Command::Status => {
            let client_cfg = match &config {
                Some(c) => c.client_config()?,
                None => vault_client::ClientConfig::from_env()?,
            };
            let vault = VaultClient::new(&client_cfg)?;
            let report = crate::status::status(
                &vault,
                client_cfg.addr.as_str(),
                client_cfg.tls_server_name.as_deref(),
                vault.has_token(),
            )
            .await?;
            emit(cli.output, out, &report)?;
            Ok(match report.state {
                HealthState::Sealed | HealthState::NotInitialized => Exit::Sealed,
                _ => Exit::Ok,
            })
        }
        Command::Plan { step, apps, kv } => {
            run_step(cli, config, *step, apps, *kv, true, out).await
        }
        Command::Run { step, apps, kv } => {
            run_step(cli, config, *step, apps, *kv, false, out).await
        }
    }
}

async fn run_step(
    cli: &Cli,
    config: Option<Config>,
    step: Step,
    apps: &[String],
    kv: KvFlags,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let config = config.ok_or(ConfigError::Missing)?;
    let selected = config.select_apps(apps)?;
    let client_cfg = config.client_config()?;
    let admin = VaultClient::new(&client_cfg)?;
    let gate = FreshClients::new(&client_cfg);
    let vault = Vault::from_client(&admin, &gate);
    match step {
        Step::Agents => {
            let report = run_agents(&config, &selected, vault, dry_run, unix_now()).await?;
            emit(cli.output, out, &report)?;
            Ok(report.exit())
        }
        Step::Leaf => {
            let runner =
                ProgramOverrides::new(ProcessRunner::new(), config.commands.overrides.clone());
            let opts = LeafOptions {
                kv_access: kv.with_kv_access,
                kv_seed: kv.with_kv_seed,
            };
            let report =
                run_leaf(&config, &selected, vault, &runner, opts, dry_run, unix_now).await?;
            emit(cli.output, out, &report)?;
            Ok(report.exit())
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn emit<T: serde::Serialize + std::fmt::Display>(
    output: Output,
    out: &mut dyn Write,
    report: &T,
) -> std::io::Result<()> {
    match output {
        Output::Human => write!(out, "{report}"),
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)
        }
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
}
