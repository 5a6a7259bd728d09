//! The library's entry point: everything the `rotate` command builds from a config, for
//! a tool that embeds the rotation. A [`Session`] runs, resumes, rolls back, plans and
//! verifies exactly as the command line does: the config's `[run]` options applied
//! (`if_due`, concurrency), `[commands]` honoured, the real clock, a torn admin or agent
//! pair repaired from the journal before `--resume`/`rollback` connects, a new run
//! refused while an earlier one needs finishing; it returns the report, whose
//! [`RunReport::exit`] is the command's exit code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rotate_cli::SessionError> {
//! use rotate_cli::{Cancel, Request, Session};
//! let session = Session::open("/etc/rotate/prod.toml")?;
//! let cancel = Cancel::new();
//! cancel.on_signals(); // SIGINT/SIGTERM: finish what is under way, then stop
//! let report = session.run(&Request::default(), &cancel).await?;
//! if report.exit() != rotate_cli::Exit::Ok {
//!     eprintln!("{}", report.summary);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use hooks::{ProcessRunner, ProgramOverrides};
use vault_client::VaultClient;

use crate::checks::VerifyReport;
use crate::config::{Config, ConfigError};
use crate::deps::{FreshClients, Vault};
use crate::engine::Cancel;
use crate::engine::context::Deps;
use crate::exit::Exit;
use crate::rotation::{Mode, RotationError, RunReport, execute};
use crate::state::journal::{RunRequest, StepId};

/// Why a session could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The config is invalid, or names an app it does not configure.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Vault client could not be built (its files, its settings).
    #[error(transparent)]
    Client(#[from] vault_client::Error),
    /// The run could not start or continue: the lock, the journal, an earlier run that
    /// needs finishing, nothing to resume.
    #[error(transparent)]
    Rotation(Box<RotationError>),
}

impl From<RotationError> for SessionError {
    fn from(e: RotationError) -> Self {
        SessionError::Rotation(Box::new(e))
    }
}

impl SessionError {
    /// The exit code the command line gives this error.
    pub fn exit(&self) -> Exit {
        match self {
            SessionError::Config(_) => Exit::Config,
            SessionError::Client(e) => e.class().into(),
            SessionError::Rotation(e) => e.exit(),
        }
    }
}

/// What to do: the command line's `plan`, `run`, `run --resume` and `rollback`.
#[derive(Debug, Clone)]
pub struct Request {
    /// Plan, run, resume or roll back. Default: run.
    pub mode: Mode,
    /// Only these steps (plan and run); empty: the config's default steps.
    pub steps: Vec<StepId>,
    /// Only these apps (plan and run); empty: every configured app.
    pub apps: Vec<String>,
    /// Step 4: attach the KV policy.
    pub kv_access: bool,
    /// Step 4: seed the KV secret when missing.
    pub kv_seed: bool,
    /// Renew only what is due (also when the config's `[run] if_due` says so).
    pub if_due: bool,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            mode: Mode::Run,
            steps: Vec::new(),
            apps: Vec::new(),
            kv_access: false,
            kv_seed: false,
            if_due: false,
        }
    }
}

/// A loaded config and everything a command builds from it.
#[derive(Debug)]
pub struct Session {
    config: Config,
    environment: bool,
}

impl Session {
    /// A session over `config`, checked as [`Config::parse`] checks a file (a config
    /// built in code gets the same errors). Vault is reached with `[vault]` alone: the
    /// process's `VAULT_*`/`BAO_*` and `~/.vault-token` are read only
    /// [`Session::with_environment`].
    pub fn new(mut config: Config) -> Result<Session, SessionError> {
        config.complete();
        config.validate()?;
        Ok(Session {
            config,
            environment: false,
        })
    }

    /// A session over the config file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Session, SessionError> {
        Session::new(Config::load(path.as_ref())?)
    }

    /// Also read the process's `VAULT_*`/`BAO_*` and `~/.vault-token` under `[vault]`,
    /// as the `rotate` command does.
    pub fn with_environment(mut self) -> Session {
        self.environment = true;
        self
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Plans, runs, resumes or rolls back as `request` says; `cancel` stops it at the
    /// next safe point (then the report says what to resume).
    pub async fn run(&self, request: &Request, cancel: &Cancel) -> Result<RunReport, SessionError> {
        let config = &self.config;
        let apps = config.select_apps(&request.apps)?;
        let mut steps = match request.steps.is_empty() {
            true => config.default_steps(),
            false => request.steps.clone(),
        };
        steps.sort();
        steps.dedup();
        let run_request = RunRequest {
            steps,
            apps: request.apps.clone(),
            kv_access: request.kv_access,
            kv_seed: request.kv_seed,
            if_due: request.if_due || config.run.if_due,
        };
        let repaired = match request.mode {
            Mode::Resume | Mode::Rollback => crate::repair::repair_torn_pairs(config, unix_now())?,
            // Nothing is built from files an unfinished run may have left torn.
            Mode::Run => {
                if let Some(r) = crate::state::journal::last_run(&config.state_dir())
                    .map_err(RotationError::from)?
                    .filter(|r| r.needs_resume())
                {
                    return Err(RotationError::resume_needed(&r, &config.state_dir()).into());
                }
                Vec::new()
            }
            Mode::Plan => {
                crate::repair::refuse_if_torn(config)?;
                Vec::new()
            }
        };
        let conn = Connection::open(config, self.environment)?;
        let mut report =
            execute(config, &apps, run_request, request.mode, conn.deps(cancel)).await?;
        if !repaired.is_empty() {
            report.summary = format!(
                "{}; before connecting, {} file(s) an interrupted run left torn were restored from the journal",
                report.summary,
                repaired.len()
            );
        }
        report.repaired = repaired;
        Ok(report)
    }

    /// `rotate verify` of `apps` (empty: every configured app); reads only.
    pub async fn verify(&self, apps: &[String]) -> Result<VerifyReport, SessionError> {
        let apps = self.config.select_apps(apps)?;
        crate::repair::refuse_if_torn(&self.config)?;
        let conn = Connection::open(&self.config, self.environment)?;
        let cancel = Cancel::new();
        Ok(crate::verify::verify(&self.config, &apps, conn.deps(&cancel)).await)
    }
}

/// What a command needs to reach the world: the admin client, fresh clients for gates,
/// the command runner (with `[commands]` overrides).
pub(crate) struct Connection {
    admin: VaultClient,
    gate: FreshClients,
    runner: ProgramOverrides<ProcessRunner>,
}

impl Connection {
    /// With `environment`, `VAULT_*`/`BAO_*` and `~/.vault-token` under `[vault]`.
    pub(crate) fn open(config: &Config, environment: bool) -> Result<Connection, SessionError> {
        let client_cfg = config.client_config_from(environment)?;
        Ok(Connection {
            admin: VaultClient::new(&client_cfg)?,
            gate: FreshClients::new(&client_cfg),
            runner: ProgramOverrides::new(ProcessRunner::new(), config.commands.overrides.clone()),
        })
    }

    pub(crate) fn deps<'a>(&'a self, cancel: &'a Cancel) -> Deps<'a> {
        Deps {
            vault: Vault::from_client(&self.admin, &self.gate),
            runner: &self.runner,
            clock: &unix_now,
            cancel,
        }
    }
}

/// Now, unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_built_in_code_is_checked_like_a_file() {
        let mut cfg = crate::testing::prod_config();
        cfg.leaf.ttl = "a day".into();
        let e = Session::new(cfg).unwrap_err();
        assert_eq!(e.exit(), Exit::Config);
        assert!(e.to_string().contains("leaf.ttl"), "{e}");
        Session::new(crate::testing::prod_config()).unwrap();
    }

    #[test]
    fn without_the_environment_vault_is_reached_with_the_config_alone() {
        let mut cfg = crate::testing::prod_config();
        cfg.vault.token_file = None;
        let alone = cfg.client_config_from(false).unwrap();
        assert_eq!(
            alone.addr.as_str(),
            cfg.vault
                .addr
                .as_deref()
                .map(|a| format!("{}/", a.trim_end_matches('/')))
                .unwrap()
        );
        assert_eq!(alone.tls_server_name, cfg.vault.tls_server_name);
        assert!(
            alone.token.is_none(),
            "no token from the environment or ~/.vault-token"
        );
    }
}
