//! The rotation workflow as a library, so other Rust tools can embed it; the `rotate`
//! binary is a thin shell around `run` (the command line, default feature `cli`), which
//! builds a [`Session`]. Feature `test-kit`: `testing`, mocks and fixtures for unit
//! tests of code that embeds this crate.
//!
//! What an embedder needs is at the top: [`Session`] (everything the command builds from
//! a [`Config`]), [`Request`], [`Cancel`], the [`RunReport`] it returns and its [`Exit`]
//! code. The rest is grouped:
//!
//! - [`config`]: the TOML topology and its sections.
//! - [`mod@run`]: a rotation as a transaction ([`run::execute`]: the state directory's lock,
//!   step 0 ([`steps::preflight`], reads only), then each step per target: `plan` (reads)
//!   → `apply` (every write preceded by a durable undo record in the [`journal`]) →
//!   `gate` (proves the effect as a client sees it) → commit, or unwind everything it
//!   wrote (certificates it issued revoked); [`Mode::Resume`], [`Mode::Rollback`]), and
//!   the read-only commands ([`run::verify`], [`run::status`]).
//! - [`steps`]: the [`steps::Step`] trait, the dependencies a step reaches the world
//!   through ([`steps::Deps`], [`steps::Vault`]: narrow traits, so steps run against
//!   mocks), and the seven steps: [`steps::AdminStep`] (1), [`steps::ListenerStep`] (2),
//!   [`steps::AgentsStep`] (3), [`steps::LeafStep`] (4), [`steps::ProxyStep`] (5),
//!   [`steps::RestartsStep`] (6), [`steps::HealthStep`] (7).
//! - [`report`]: what the commands report, for humans and as JSON
//!   (`schemas/rotate.schema.json`).
//! - [`served`]: what the listener serves and whether an identity works, as a new client
//!   sees it.
//! - [`journal`]: the run's durable record, its undo vocabulary and lock.
//! - [`metrics`]: the expiry inventory from files, and the node_exporter textfile.
//!
//! The whole order from a config, as `rotate run` does it:
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

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod change;
mod checks;
#[cfg(feature = "cli")]
mod cli;
pub mod config;
mod deps;
mod engine;
mod error;
mod exit;
mod host;
pub mod metrics;
mod pause;
mod policy_fix;
mod render;
mod repair;
mod rotation;
pub mod served;
mod session;
mod state;
mod status;
mod step_id;
pub mod steps;
#[cfg(any(test, feature = "test-kit"))]
pub mod testing;
mod text;
mod topology;
mod verify;

// What an embedder needs first.
#[cfg(feature = "cli")]
pub use cli::{Cli, Command, KvFlags, LogWriter, Output, SCHEMA_VERSION, Selection, run};
pub use config::{Config, ConfigError};
pub use engine::Cancel;
pub use exit::Exit;
pub use rotation::{Mode, RunReport};
pub use session::{Request, Session, SessionError};
pub use step_id::StepId;

/// A rotation as a transaction, and the read-only commands.
pub mod run {
    pub use crate::engine::unwind::{IssuedIndex, UndoDeps, carry_out, unwind};
    pub use crate::repair::{refuse_if_torn, repair_torn_pairs};
    pub use crate::rotation::{Mode, RotationError, execute};
    pub use crate::status::status;
    pub use crate::verify::verify;
}

/// What the commands report (human text and JSON, `schemas/rotate.schema.json`).
pub mod report {
    pub use crate::change::{Change, ChangeKind, FieldDiff};
    pub use crate::checks::{Check, Labels, Material, MaterialKind, PreflightReport, VerifyReport};
    pub use crate::engine::unwind::UnwindOutcome;
    pub use crate::engine::{Outcome, StepReport, TargetReport};
    pub use crate::metrics::Inventory;
    pub use crate::rotation::RunReport;
    pub use crate::state::outcome::LastRun;
    pub use crate::status::{Identity, NodeStatus, StatusReport};
    pub use crate::steps::health::HealthReport;
    pub use crate::text::escape_controls;
}

/// The run's durable record: events, undo actions, the lock of its state directory.
pub mod journal {
    pub use crate::state::journal::{
        Event, Journal, JournalError, RunRecord, RunRequest, RunState, TargetRecord, TargetState,
        check_state_dir, last_run,
    };
    pub use crate::state::lock::{LockError, StateLock};
    pub use crate::state::undo::UndoAction;
    pub use crate::step_id::StepId;
}
