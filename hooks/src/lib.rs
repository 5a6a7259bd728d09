//! Post-hooks and reloads: everything a rotation runs outside Vault.
//!
//! - [`CommandRunner`] is the seam every external command goes through:
//!   [`ProcessRunner`] runs it for real (a trusted program resolved on [`SAFE_PATH`], a
//!   new session without a terminal, a cleared environment, time limit, captured stderr),
//!   [`DryRunRunner`] records it for a plan, `MockCommandRunner` (feature
//!   `mocks`) scripts it in tests.
//! - [`Reloader`] and [`reload`]: podman containers by label or name,
//!   systemd user units, signals from pid files, commands; parsed from the
//!   write-up's strings (`PROXY_RELOAD='podman:proxyprod'`) or from config.
//! - [`render_post_hook`]: the agent's `vault-agent-post-leaf.sh` (POSIX sh:
//!   checks the leaf files and that key and certificate match, reloads, and
//!   reports its outcome for the exact bytes it checked, [`parse_status`]).
//!   Rendering only: the caller writes it (rotate-cli through pki-ops' safe
//!   writer, inside the app's tree without following symlinks).
//! - [`render_agent_config`]: the OpenBao/Vault Agent HCL of one app (cert
//!   auto-auth over mTLS, one leaf template running the post-hook).
//! - [`Version`] and [`compare_versions`]: agent/server version skew.
//! - [`check_trusted`] / [`trusted_program`]: what root may run or believe (owned by
//!   root, writable by nobody else, along the whole path).
//!
//! ```no_run
//! use std::time::Duration;
//! use hooks::{ProcessRunner, Reloader, reload};
//!
//! # async fn demo() -> Result<(), hooks::Error> {
//! // RELOAD_TLS_LABEL='tls=true' PROXY_RELOAD='podman:proxyprod'
//! let label: Reloader = "podman-label:tls=true".parse()?;
//! let proxy: Reloader = "podman:proxyprod".parse()?;
//! for reloader in [label, proxy] {
//!     let report = reload(&ProcessRunner, &reloader, Duration::from_secs(30)).await?;
//!     println!("{}: {:?}", report.reloader, report.reloaded);
//! }
//! # Ok(())
//! # }
//! ```

// `unsafe` is denied everywhere but the one call that starts a child in its own session.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod agent;
mod error;
mod posthook;
mod process;
mod programs;
mod reload;
mod runner;
mod trust;
mod users;
mod version;

use async_trait::async_trait;

pub use crate::{
    agent::{AgentConfigSpec, AgentFiles, hcl_string, render_agent_config, render_leaf_template},
    error::{Error, Result},
    posthook::{
        HookStatus, POST_HOOK_MODE, PostHookSpec, check_safe_path, parse_status, render_post_hook,
    },
    process::{
        ExpectProcess, ProcessInfo, RELOAD_SIGNALS, open_pid_file, read_pid_file, signal_pid_file,
    },
    programs::ProgramOverrides,
    reload::{ReloadReport, Reloader, reload, reload_expecting, stop_unit, unit_state},
    runner::{
        CHILD_ENV, CommandOutput, CommandSpec, DEFAULT_TIMEOUT, DryRunRunner, OUTPUT_LIMIT,
        ProcessRunner,
    },
    trust::{
        SAFE_PATH, check_named_files, check_trusted, resolve_program, trusted_path, trusted_program,
    },
    version::{Version, VersionCheck, command_version, compare_versions},
};

/// Runs one external command: the seam between rotation logic and the
/// machine. Implementations must turn a non-zero exit into
/// [`Error::HookFailed`] and an exceeded [`CommandSpec::timeout`] into
/// [`Error::Timeout`].
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `cmd` to completion and returns what it printed.
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, Error>;
}
