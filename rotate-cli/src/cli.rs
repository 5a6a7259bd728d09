//! The command line (clap derive) and `run`, which the binary calls.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use vault_client::{HealthState, VaultClient};

use crate::config::{Config, ConfigError};
use crate::exit::Exit;

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
    }
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
}
