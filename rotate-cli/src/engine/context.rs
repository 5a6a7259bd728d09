//! What a run works with: [`Deps`] (the outside world: Vault, the command runner, the
//! clock, the stop request), [`Cancel`], and [`RunCtx`] (how one step is run).

use std::sync::atomic::{AtomicBool, Ordering};

use super::unwind::UndoDeps;
use crate::deps::Vault;
use crate::state::journal::{Journal, StepId};

/// Everything a rotation needs from the outside world.
#[derive(Clone, Copy)]
pub struct Deps<'a> {
    /// Vault as the admin (plus fresh clients for gates).
    pub vault: Vault<'a>,
    /// Runs `systemctl`, `podman`, the agent binary.
    pub runner: &'a dyn hooks::CommandRunner,
    /// Unix seconds now (injected so tests control time).
    pub clock: &'a (dyn Fn() -> i64 + Send + Sync),
    /// Stop request (SIGINT/SIGTERM).
    pub cancel: &'a Cancel,
}

/// A cooperative stop request (SIGINT/SIGTERM): checked at safe points, i.e. before a
/// target starts writing. A target that started finishes (commit or unwind). Clones share
/// the request.
#[derive(Debug, Default, Clone)]
pub struct Cancel(std::sync::Arc<AtomicBool>);

impl Cancel {
    /// Not cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }
    /// Ask to stop at the next safe point.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Asks to stop on the process's first SIGINT or SIGTERM (from a task on the current
    /// tokio runtime), as the `rotate` command does: the run finishes the targets under
    /// way, then returns a report that names the command that continues it.
    pub fn on_signals(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let me = self.clone();
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                tracing::warn!("stop requested: finishing the targets under way, then stopping");
                me.cancel();
            });
        }
    }
}

/// How a step is run: where it journals (`None`: plan only), how it undoes, how many
/// targets at once, the stop request, and whether only what is due is renewed.
#[derive(Clone, Copy)]
pub(crate) struct RunCtx<'a> {
    pub(crate) journal: Option<&'a Journal>,
    pub(crate) undo: UndoDeps<'a>,
    pub(crate) concurrency: usize,
    pub(crate) cancel: &'a Cancel,
    pub(crate) if_due: bool,
    /// The steps of this invocation (a plan of several steps plans a target whose
    /// precondition an earlier one of them creates).
    pub(crate) steps: &'a [StepId],
}
