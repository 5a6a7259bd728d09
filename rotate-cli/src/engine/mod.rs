//! The rotation engine: every step is `plan` (reads only) → `apply` (writes, each one
//! preceded by a durable undo record) → `gate` (never writes; proves the effect the way a
//! client sees it) → commit, or unwind of everything the target wrote.
//!
//! Shape (after sqlx's migrator): take the lock of the state directory → refuse to start
//! over an unfinished run unless resuming → run the steps in order → journal every state.
//! Targets (apps) inside a step run with bounded concurrency; reports keep config order.

pub(crate) mod context;
pub(crate) mod unwind;

use std::future::Future;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::change::{self, Change};
use crate::config::AppConfig;
use crate::error::StepError;
use crate::state::journal::{self, Journal, JournalError, StepId, TargetState};
use crate::state::undo::UndoAction;
pub use context::Cancel;
pub(crate) use context::RunCtx;
use unwind::{UndoDeps, UnwindOutcome, unwind};

/// Records undo actions for one target, each durably before its write.
pub struct Tx<'a> {
    journal: &'a Journal,
    step: StepId,
    target: &'a str,
}

impl<'a> Tx<'a> {
    /// Records for `step`/`target` in `journal`.
    pub(crate) fn new(journal: &'a Journal, step: StepId, target: &'a str) -> Self {
        Tx {
            journal,
            step,
            target,
        }
    }

    /// The run's id (names the kept previous versions of files).
    pub fn run_id(&self) -> String {
        self.journal.run_id()
    }

    /// Record how to undo the write about to be made. Call it *before* the write.
    pub fn record(&self, action: UndoAction) -> Result<(), StepError> {
        self.journal
            .record_undo(self.step, self.target, action)
            .map_err(StepError::from)
    }

    /// [`Tx::record`], returning the entry's index (for [`Tx::resolved`]).
    pub(crate) fn record_indexed(&self, action: UndoAction) -> Result<usize, StepError> {
        let mut index = 0;
        self.journal
            .record_undo_then(self.step, self.target, action, |n| index = n)
            .map_err(StepError::from)?;
        Ok(index)
    }

    /// Entry `index` needs no undo any more (e.g. an issuance intent whose certificate's
    /// precise revocation is now recorded).
    pub(crate) fn resolved(&self, index: usize) -> Result<(), StepError> {
        self.journal
            .append(journal::Event::UndoDone {
                step: self.step,
                target: self.target.to_owned(),
                index,
            })
            .map_err(StepError::from)
    }
}

/// What a step's plan for one target says.
pub struct TargetPlan<P> {
    /// The changes, in the shared vocabulary.
    pub changes: Vec<Change>,
    /// Whatever `apply` needs.
    pub data: P,
}

/// What a step works on: an app ([`AppConfig`]), or the one thing a global step rotates
/// ([`Singleton`]: the admin identity, the listener). Its name keys the journal.
pub trait Target: Send + Sync {
    /// The name in reports and the journal.
    fn name(&self) -> &str;
}

impl Target for AppConfig {
    fn name(&self) -> &str {
        &self.name
    }
}

/// The single target of a step that is not per app: `admin` (step 1), `listener` (step 2).
#[derive(Debug, Clone, Copy)]
pub struct Singleton(pub &'static str);

impl Target for Singleton {
    fn name(&self) -> &str {
        self.0
    }
}

/// A step of the order.
#[async_trait]
pub trait Step: Send + Sync {
    /// What it works on, one at a time.
    type Target: Target + ?Sized;
    /// What `plan` hands to `apply`.
    type Plan: Send + Sync;
    /// What `apply` hands to `gate` (journaled, so a resume can re-gate).
    type Applied: Serialize + DeserializeOwned + Send + Sync;
    /// What the gate proved (goes into the report).
    type Proof: Serialize + Send + Sync;

    /// Which step.
    fn id(&self) -> StepId;
    /// Reads only: what would change for `app`.
    async fn plan(&self, app: &Self::Target) -> Result<TargetPlan<Self::Plan>, StepError>;
    /// Writes, recording each undo through `tx` before the write.
    async fn apply(
        &self,
        app: &Self::Target,
        plan: TargetPlan<Self::Plan>,
        tx: &Tx<'_>,
    ) -> Result<Self::Applied, StepError>;
    /// Never writes: proves the effect as a client sees it.
    async fn gate(
        &self,
        app: &Self::Target,
        applied: &Self::Applied,
    ) -> Result<Self::Proof, StepError>;
    /// For an `--if-due` run: `Some(why)` when this target's certificate is not due, and
    /// the target is then left alone entirely (no plan, no write, no gate: not one Vault
    /// write). Only asked when the run is `--if-due`; default: always due.
    async fn not_due(&self, _app: &Self::Target) -> Result<Option<String>, StepError> {
        Ok(None)
    }
    /// What is still needed before this target is live (e.g. step 3 until step 4 restarts
    /// the agent).
    fn pending(&self, _app: &Self::Target) -> Option<String> {
        None
    }
}

/// The outcome of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Plan only.
    Planned,
    /// Nothing to do: unchanged and its gate passes.
    Unchanged,
    /// Written and proven.
    Committed,
    /// Failed before writing anything.
    FailedNothingWritten,
    /// Failed after writing; everything undone.
    RolledBack,
    /// Failed after writing; some undo failed (listed).
    RollbackIncomplete,
    /// Not started: the run was interrupted first.
    NotStarted,
    /// Skipped: an earlier step failed for this app.
    Skipped,
    /// Applied, but its gate saw Vault sealed: kept as applied (not undone) until
    /// `rotate run --resume` after unsealing re-gates it.
    AwaitingResume,
    /// `rotate rollback` undid it completely (it had not failed).
    Undone,
}

/// The report of one target.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    /// App name.
    pub app: String,
    /// Outcome.
    pub outcome: Outcome,
    /// The changes (planned, or made).
    pub changes: Vec<Change>,
    /// What `apply` produced (serials, files, ...), never keys or tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<serde_json::Value>,
    /// What the gate proved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
    /// What remains before it is live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// How it was proven live, when a later step proved it (step 3 by step 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit-code class of the failure (3 input, 4 Vault, 5 gate, 6 sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<u8>,
    /// The unwind, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<UnwindOutcome>,
    /// Milliseconds spent.
    pub millis: u64,
}

/// The report of one step.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// Which step.
    pub step: StepId,
    /// Per target, in config order.
    pub targets: Vec<TargetReport>,
    /// Milliseconds spent.
    pub millis: u64,
}

/// Run one step over `apps`: plan each (bounded concurrency), then, unless `dry_run`,
/// apply, gate and commit or unwind each. Stops starting new targets once `cancel` is
/// set.
pub(crate) async fn run_step<S: Step>(
    step: &S,
    apps: &[&S::Target],
    ctx: RunCtx<'_>,
) -> Result<StepReport, JournalError> {
    let started = std::time::Instant::now();
    tracing::info!(
        target: "rotate::progress",
        "{}: {} target(s){}",
        step.id(),
        apps.len(),
        if ctx.journal.is_none() { ", plan only" } else { "" }
    );
    let results = bounded(apps, ctx.concurrency, |app| async move {
        let r = run_target(step, app, ctx).await;
        if let Ok(t) = &r {
            tracing::info!(
                target: "rotate::progress",
                "{} {}: {:?} ({} ms){}",
                step.id(),
                t.app,
                t.outcome,
                t.millis,
                t.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        r
    })
    .await;
    let mut targets = Vec::with_capacity(results.len());
    for r in results {
        targets.push(r?);
    }
    Ok(StepReport {
        step: step.id(),
        targets,
        millis: started.elapsed().as_millis() as u64,
    })
}

/// `f` over `items` with at most `n` at a time; results in the order of `items`.
pub(crate) async fn bounded<'a, T: ?Sized + 'a, F, Fut, R>(
    items: &'a [&'a T],
    n: usize,
    f: F,
) -> Vec<R>
where
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = R>,
{
    futures_util::stream::iter(items.iter().map(|item| f(item)))
        .buffered(n.max(1))
        .collect()
        .await
}

fn blank<T: Target + ?Sized>(app: &T, outcome: Outcome) -> TargetReport {
    TargetReport::new(app.name(), outcome)
}

impl TargetReport {
    /// An empty report of `app` with `outcome`.
    pub fn new(app: &str, outcome: Outcome) -> TargetReport {
        TargetReport {
            app: app.to_owned(),
            outcome,
            changes: Vec::new(),
            applied: None,
            proof: None,
            pending: None,
            live: None,
            error: None,
            error_class: None,
            rollback: None,
            millis: 0,
        }
    }
}

async fn run_target<S: Step>(
    step: &S,
    app: &S::Target,
    ctx: RunCtx<'_>,
) -> Result<TargetReport, JournalError> {
    let RunCtx {
        journal,
        undo: undo_deps,
        cancel,
        if_due,
        ..
    } = ctx;
    let started = std::time::Instant::now();
    let mut r = blank(app, Outcome::Planned);
    let fail = |r: &mut TargetReport, e: &StepError| {
        r.error = Some(format!("{e:#}"));
        r.error_class = Some(e.exit().code());
    };
    if if_due {
        match step.not_due(app).await {
            Ok(Some(why)) => {
                r.outcome = Outcome::Unchanged;
                r.changes = vec![
                    Change::new(change::ChangeKind::Unchanged, app.name().to_owned()).note(why),
                ];
                r.millis = started.elapsed().as_millis() as u64;
                return Ok(r);
            }
            Ok(None) => {}
            Err(e) => {
                r.outcome = Outcome::FailedNothingWritten;
                fail(&mut r, &e);
                return Ok(r);
            }
        }
    }
    let plan = match step.plan(app).await {
        Ok(p) => p,
        Err(StepError::NeedsEarlier {
            what,
            step: earlier,
        }) if journal.is_none() && ctx.steps.contains(&earlier) => {
            r.changes = vec![
                Change::new(change::ChangeKind::Create, app.name().to_owned())
                    .note(format!("planned after {earlier}, which creates {what}")),
            ];
            r.millis = started.elapsed().as_millis() as u64;
            return Ok(r);
        }
        Err(e) => {
            r.outcome = Outcome::FailedNothingWritten;
            fail(&mut r, &e);
            r.millis = started.elapsed().as_millis() as u64;
            return Ok(r);
        }
    };
    r.changes = plan.changes.clone();
    let Some(journal) = journal else {
        r.millis = started.elapsed().as_millis() as u64;
        return Ok(r);
    };
    if cancel.is_cancelled() {
        r.outcome = Outcome::NotStarted;
        return Ok(r);
    }
    let id = step.id();
    journal.set_state(id, app.name(), TargetState::Applying, None)?;
    let tx = Tx::new(journal, id, app.name());
    // What apply produced is reported even when the gate then fails (e.g. the serial
    // that was issued, and is revoked by the unwind).
    let mut applied_ok = false;
    let result = async {
        let applied = step.apply(app, plan, &tx).await?;
        applied_ok = true;
        r.applied = serde_json::to_value(&applied).ok();
        journal.append(journal::Event::Target {
            step: id,
            target: app.name().to_owned(),
            state: TargetState::Applied,
            note: None,
            data: r.applied.clone(),
        })?;
        step.gate(app, &applied).await
    }
    .await;
    match result {
        Ok(proof) => {
            journal.set_state(id, app.name(), TargetState::Committed, None)?;
            // Proven; "unchanged" when its plan had nothing to change (e.g. a bundle that
            // was already right, the healthcheck).
            r.outcome = if r.changes.iter().any(Change::is_change) {
                Outcome::Committed
            } else {
                Outcome::Unchanged
            };
            r.proof = serde_json::to_value(&proof).ok();
            r.pending = step.pending(app);
        }
        Err(e) if applied_ok && e.awaits_resume() => {
            fail(&mut r, &e);
            r.outcome = Outcome::AwaitingResume;
            r.pending = Some("unseal Vault, then `rotate run --resume` re-gates this step".into());
        }
        Err(e) => {
            fail(&mut r, &e);
            let wrote = journal
                .record()
                .target(id, app.name())
                .is_some_and(|t| !t.undo.is_empty());
            // A Vault that went away after the writes (sealed by a restart, unreachable)
            // can neither prove nor undo them: keep them as they are, for `--resume`.
            if wrote && let Some(why) = vault_down(undo_deps).await {
                r.outcome = Outcome::AwaitingResume;
                r.error_class = Some(crate::exit::Exit::ResumeNeeded.code());
                r.pending = Some(format!(
                    "Vault is {why} after this target's writes: kept as it is, neither proven nor undone; once Vault is back (unsealed), `rotate run --resume` re-gates it (or undoes it)"
                ));
                r.millis = started.elapsed().as_millis() as u64;
                return Ok(r);
            }
            let out = unwind(journal, undo_deps, id, app.name()).await?;
            r.outcome = if !wrote {
                Outcome::FailedNothingWritten
            } else if out.complete() {
                Outcome::RolledBack
            } else {
                Outcome::RollbackIncomplete
            };
            if wrote {
                r.rollback = Some(out);
            }
        }
    }
    r.millis = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// `Some("sealed")` or `Some("unreachable")` when Vault cannot serve a proof or an undo
/// now; `None` when it answers unsealed.
pub(crate) async fn vault_down(deps: UndoDeps<'_>) -> Option<&'static str> {
    match deps.vault.sys.seal_status().await {
        Ok(s) if s.sealed => Some("sealed"),
        Ok(_) => None,
        // Gone (refused, reset, no answer): not a TLS or trust failure, which an undo
        // of local files (a listener certificate) may be the very thing to fix.
        Err(vault_client::Error::Transport {
            kind:
                vault_client::TransportKind::ConnectionRefused
                | vault_client::TransportKind::ConnectionReset
                | vault_client::TransportKind::Timeout,
            ..
        }) => Some("unreachable"),
        Err(e) if e.status() == Some(503) => Some("sealed"),
        Err(_) => None,
    }
}

/// Finish a target an interrupted run left `Applied`: gate it again from the journaled
/// `apply` data; commit if it passes, unwind if not. A target left `Applying` (writes
/// possibly half made) is unwound.
pub(crate) async fn recover_target<S: Step>(
    step: &S,
    app: &S::Target,
    journal: &Journal,
    undo_deps: UndoDeps<'_>,
) -> Result<TargetReport, JournalError> {
    let started = std::time::Instant::now();
    let id = step.id();
    let rec = journal.record();
    let Some(t) = rec.target(id, app.name()) else {
        return Ok(blank(app, Outcome::NotStarted));
    };
    let mut r = blank(app, Outcome::Committed);
    let regate = match (t.state, &t.data) {
        (TargetState::Applied, Some(data)) => {
            match serde_json::from_value::<S::Applied>(data.clone()) {
                Ok(applied) => Some(step.gate(app, &applied).await.map(|p| (data.clone(), p))),
                Err(e) => Some(Err(StepError::Invalid {
                    what: format!("journal data of {id} for {}", app.name()),
                    reason: e.to_string(),
                })),
            }
        }
        _ => None,
    };
    match regate {
        Some(Err(e)) if e.awaits_resume() => {
            r.outcome = Outcome::AwaitingResume;
            r.error = Some(format!("re-gate after interruption: {e:#}"));
            r.error_class = Some(e.exit().code());
            r.pending = Some("unseal Vault, then `rotate run --resume` again".into());
        }
        Some(Ok((data, proof))) => {
            journal.set_state(id, app.name(), TargetState::Committed, None)?;
            r.applied = Some(data);
            r.proof = serde_json::to_value(&proof).ok();
            r.pending = step.pending(app);
        }
        other => {
            if let Some(Err(e)) = other {
                r.error = Some(format!("re-gate after interruption: {e:#}"));
                r.error_class = Some(e.exit().code());
            } else if t.state.is_unwinding() {
                r.error = Some("its unwind was interrupted or incomplete; finished it".to_owned());
            } else {
                r.error = Some("interrupted while writing; unwound".to_owned());
            }
            if let Some(why) = vault_down(undo_deps).await {
                r.outcome = Outcome::AwaitingResume;
                r.error = Some(format!(
                    "Vault is {why}: nothing can be proven or undone now"
                ));
                r.pending = Some(
                    "once Vault is back (unsealed), `rotate run --resume` again finishes this target"
                        .into(),
                );
                r.millis = started.elapsed().as_millis() as u64;
                return Ok(r);
            }
            let out = unwind(journal, undo_deps, id, app.name()).await?;
            r.outcome = if out.complete() {
                Outcome::RolledBack
            } else {
                Outcome::RollbackIncomplete
            };
            r.rollback = Some(out);
        }
    }
    r.millis = started.elapsed().as_millis() as u64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_keeps_order_and_limits_concurrency() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let items: Vec<usize> = (0..20).collect();
        let refs: Vec<&usize> = items.iter().collect();
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = bounded(&refs, 3, |i| {
            let (live, peak) = (&live, &peak);
            async move {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis((20 - i) as u64)).await;
                live.fetch_sub(1, Ordering::SeqCst);
                *i * 2
            }
        })
        .await;
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
