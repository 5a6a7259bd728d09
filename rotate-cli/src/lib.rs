//! The rotation workflow as a library, so other Rust tools can embed it; the `rotate`
//! binary is a thin shell around [`run`].
//!
//! - [`Config`]: the TOML topology (Vault, PKI mount, agents, apps, proxy).
//! - [`status()`]: reachability, seal state, version and identity over mTLS.
//! - [`run_agents`]: step 3, agent login certs + cert auth mappings, with its login gate
//!   (and, with `dry_run`, the plan). Vault is reached through [`Vault`], a bundle of
//!   narrow traits, so the step runs against mocks in unit tests.
//! - [`run_leaf`]: step 4, app leaf certs through the agent, post-hook, agent restart,
//!   and the leaf gate ([`verify_leaf`]).
//! - [`Exit`]: the documented exit codes.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use rotate_cli::{Config, status};
//! let cfg = Config::load(std::path::Path::new("/etc/rotate/prod.toml"))?;
//! let client_cfg = cfg.client_config()?;
//! let vault = vault_client::VaultClient::new(&client_cfg)?;
//! let report = status(&vault, client_cfg.addr.as_str(), None, true).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cli;
mod config;
mod deps;
mod exit;
mod status;
mod steps;

pub use cli::{Cli, Command, KvFlags, Output, Step, run};
pub use config::{
    AgentsSection, AppConfig, Config, ConfigError, KeyMode, PkiSection, ProxySection, VaultSection,
};
pub use deps::{FreshClients, GateConnector, Vault};
pub use exit::Exit;
pub use status::{Identity, StatusReport, status};
pub use steps::StepError;
pub use steps::agents::{AgentReport, AgentsReport, AppStatus, run_agents};
pub use steps::leaf::{
    KvReport, LeafExpectation, LeafOptions, LeafReport, LeafStepReport, kv_policy_name, run_leaf,
    verify_leaf,
};
