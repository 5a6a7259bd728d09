//! The rotation workflow as a library, so other Rust tools can embed it; the `rotate`
//! binary is a thin shell around `run` (the command line, default feature `cli`), which
//! builds a [`Session`]. Feature `test-kit`: `testing`, mocks and fixtures for unit
//! tests of code that embeds this crate.
//!
//! - [`Config`]: the TOML topology (Vault, PKI mount, agents, apps, run state).
//! - [`execute`]: a whole rotation as a transaction. It takes the state directory's lock,
//!   refuses to start over an unfinished run, runs step 0 ([`preflight`], reads only),
//!   then each [`Step`] per app: `plan` (reads) → `apply` (every write preceded by a
//!   durable undo record in the journal) → `gate` (proves the effect as a client sees
//!   it) → commit, or unwind everything the app wrote (certificates it issued revoked).
//!   [`Mode::Resume`] finishes an interrupted run; [`Mode::Rollback`] unwinds the last one.
//! - Steps: [`AdminStep`] (step 1, the admin's client certificate, proven by a brand-new
//!   client *before* it replaces the current identity), [`ListenerStep`] (step 2, the
//!   listener certificate, proven by the served serial on new handshakes; restored and
//!   re-proven on failure), [`AgentsStep`] (step 3, agent login certs + cert auth
//!   mappings), [`LeafStep`] (step 4, app leaf certs through the agent, post-hook,
//!   restart), [`ProxyStep`] (step 5, the proxy's CA bundle and client identity, proven
//!   through the proxy), [`RestartsStep`] (step 6, the proxy stack, then Vault when its
//!   listener has not loaded its client CAs: [`ClientCaDrift`], behind a lockout guard)
//!   and [`HealthStep`] (step 7). Global steps have one [`Singleton`] target; per-app
//!   steps run per app.
//! - [`look`] / [`wait_for_serial`] / [`prove_admin`]: what the listener serves and
//!   whether an identity works, as a new client sees it.
//! - [`verify`]: the write-up's per-app checklist plus the admin identity, the served
//!   listener certificate, drift and an expiry inventory; reads only.
//! - [`RunReport`]: one report for human and JSON output; [`Exit`]: documented exit codes.
//! - Vault is reached through [`Vault`], a bundle of narrow traits, so steps run against
//!   mocks in unit tests.
//!
//! The whole order from a config, as `rotate run` does it (see [`Session`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), rotate_cli::SessionError> {
//! use rotate_cli::{Cancel, Exit, Request, Session};
//! let session = Session::open("/etc/rotate/prod.toml")?;
//! let cancel = Cancel::new();
//! cancel.on_signals();
//! let report = session.run(&Request::default(), &cancel).await?;
//! println!("{report}");
//! if report.exit() != Exit::Ok {
//!     std::process::exit(report.exit().code().into());
//! }
//! # Ok(()) }
//! ```
//!
//! Lower down, [`execute`] runs a request with dependencies of your own ([`Deps`]: a mocked
//! Vault, a fixed clock, a recording runner), as the unit tests do.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod change;
mod checks;
#[cfg(feature = "cli")]
mod cli;
mod config;
mod deps;
mod engine;
mod error;
mod exit;
mod host;
mod metrics;
mod pause;
mod policy_fix;
mod render;
mod repair;
mod rotation;
mod served;
mod session;
mod state;
mod status;
mod step_id;
mod steps;
#[cfg(any(test, feature = "test-kit"))]
pub mod testing;
mod text;
mod topology;
mod verify;

pub use change::{Change, ChangeKind, FieldDiff};
pub use checks::{Check, Labels, Material, MaterialKind, PreflightReport, VerifyReport};
#[cfg(feature = "cli")]
pub use cli::{Cli, Command, KvFlags, LogWriter, Output, SCHEMA_VERSION, Selection, run};
pub use config::{
    AdminSection, AgentsSection, AppConfig, Config, ConfigError, HealthSection, KeyMode,
    LeafSection, ListenerSection, PkiSection, ProxyIdentity, ProxySection, ProxyTrust,
    RestartsSection, RunSection, VaultSection, VaultWhen,
};
pub use deps::{AdminApi, FreshClients, GateConnector, TlsIdentity, Vault};
pub use engine::context::Deps;
pub use engine::unwind::{IssuedIndex, UndoDeps, UnwindOutcome, carry_out, unwind};
pub use engine::{
    Cancel, Fact, Outcome, Singleton, Step, StepReport, Target, TargetPlan, TargetReport, Tx,
};
pub use error::StepError;
pub use exit::Exit;
pub use metrics::{Extra, Inventory, inventory, textfile, write_textfile};
pub use repair::{refuse_if_torn, repair_torn_pairs};
pub use rotation::{Mode, RotationError, RunReport, execute};
pub use served::{
    AdminIdentity, ClientCaDrift, HealthFailure, HealthProof, Served, WaitError, healthcheck, look,
    prove_admin, wait_for_serial,
};
pub use session::{Request, Session, SessionError};
pub use state::journal::{
    Event, Journal, JournalError, RunRecord, RunRequest, RunState, StepId, TargetRecord,
    TargetState, check_state_dir, last_run,
};
pub use state::lock::{LockError, StateLock};
pub use state::outcome::LastRun;
pub use state::undo::UndoAction;
pub use status::{Identity, NodeStatus, StatusReport, status};
pub use steps::admin::{AdminApplied, AdminPlan, AdminProof, AdminStep};
pub use steps::agents::{AgentApplied, AgentProof, AgentsStep};
pub use steps::health::{HealthApplied, HealthReport, HealthStep};
pub use steps::leaf::{LeafApplied, LeafExpectation, LeafProof, LeafStep, verify_leaf};
pub use steps::listener::{ListenerApplied, ListenerPlan, ListenerProof, ListenerStep};
pub use steps::preflight::preflight;
pub use steps::proxy::{ProxyApplied, ProxyPlan, ProxyProof, ProxyStep};
pub use steps::restarts::{RestartsApplied, RestartsPlan, RestartsProof, RestartsStep};
pub use text::escape_controls;
pub use topology::kv_policy_name;
pub use verify::verify;
