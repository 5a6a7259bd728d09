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
    /// The targets among `apps`: the apps for a per-app step, its one target for a
    /// global step.
    fn targets<'t>(&'t self, apps: &[&'t AppConfig]) -> Vec<&'t Self::Target>;
    /// Whether it works on the server side (the admin identity, the listeners, the
    /// proxy, restarts, health) rather than on apps: its targets run one at a time, the
    /// first that fails stops the rest (a cluster is rotated node by node), and every
    /// later step waits on it.
    fn global(&self) -> bool {
        false
    }
    /// How many targets at once, given `[run] concurrency` (the default): a step that
    /// mostly waits on something outside (step 4 on the agents) says its own bound.
    fn concurrency(&self, configured: usize) -> usize {
        configured
    }
    /// Whether what `apply` made changed anything a restart is for (default: yes).
    fn changed(&self, _applied: &Self::Applied) -> bool {
        true
    }
    /// What the gate proved that later steps build on (kept typed until the report).
    fn facts(&self, _proof: &Self::Proof) -> Vec<Fact> {
        Vec::new()
    }
    /// The lines a human report shows for what `apply` made and, once proven, what the
    /// gate proved (the JSON report carries both whole).
    fn summary(&self, _applied: &Self::Applied, _proof: Option<&Self::Proof>) -> Vec<String> {
        Vec::new()
    }
}

/// What one step proved that another builds on, typed (never read back from JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// Step 4: the restarted agent logged in with the certificate of this serial
    /// (`aa:bb` hex), so step 3's certificate is live.
    AgentLoggedIn {
        /// The serial.
        serial: String,
    },
}

/// A step of the order as the run drives it: object-safe, so every step fits in one
/// ordered registry ([`crate::steps::registry`]), whatever it works on. Every [`Step`] is
/// one.
#[async_trait]
pub(crate) trait DynStep: Send + Sync {
    /// Which step.
    fn id(&self) -> StepId;
    /// See [`Step::global`].
    fn global(&self) -> bool;
    /// Plan (without a journal) or run its targets among `apps`; a target `done` names
    /// (committed by the run being resumed) is reported committed, not run again.
    async fn run(
        &self,
        apps: &[&AppConfig],
        ctx: RunCtx<'_>,
        done: &(dyn for<'n> Fn(&'n str) -> bool + Sync),
    ) -> Result<StepReport, JournalError>;
    /// Finish the target `name` an interrupted run left: re-gate or unwind it; one no
    /// longer among `apps` (or configured) is unwound from the journal alone.
    async fn recover(
        &self,
        name: &str,
        apps: &[&AppConfig],
        journal: &Journal,
        undo: UndoDeps<'_>,
    ) -> Result<TargetReport, JournalError>;
}

#[async_trait]
impl<S> DynStep for S
where
    S: Step,
    S::Target: Target,
{
    fn id(&self) -> StepId {
        Step::id(self)
    }

    fn global(&self) -> bool {
        Step::global(self)
    }

    async fn run(
        &self,
        apps: &[&AppConfig],
        ctx: RunCtx<'_>,
        done: &(dyn for<'n> Fn(&'n str) -> bool + Sync),
    ) -> Result<StepReport, JournalError> {
        let (done, todo): (Vec<_>, Vec<_>) =
            self.targets(apps).into_iter().partition(|t| done(t.name()));
        let rolling = Step::global(self);
        let ctx = if rolling {
            RunCtx {
                concurrency: 1,
                ..ctx
            }
        } else {
            ctx
        };
        let mut report = run_step(self, &todo, ctx, rolling).await?;
        let mut committed: Vec<TargetReport> = done
            .iter()
            .map(|t| TargetReport::new(t.name(), Outcome::Committed))
            .collect();
        committed.append(&mut report.targets);
        report.targets = committed;
        Ok(report)
    }

    async fn recover(
        &self,
        name: &str,
        apps: &[&AppConfig],
        journal: &Journal,
        undo: UndoDeps<'_>,
    ) -> Result<TargetReport, JournalError> {
        match self.targets(apps).into_iter().find(|t| t.name() == name) {
            Some(t) => recover_target(self, t, journal, undo).await,
            None => {
                unwind_unlisted(
                    journal,
                    undo,
                    Step::id(self),
                    name,
                    "is not configured any more",
                )
                .await
            }
        }
    }
}

/// A global step the config does not set up: running it is an error naming the missing
/// section (exit 3, nothing written); what an earlier run left of it is unwound.
pub(crate) struct Absent {
    /// Which step.
    pub(crate) id: StepId,
}

#[async_trait]
impl DynStep for Absent {
    fn id(&self) -> StepId {
        self.id
    }

    fn global(&self) -> bool {
        true
    }

    async fn run(
        &self,
        _apps: &[&AppConfig],
        _ctx: RunCtx<'_>,
        _done: &(dyn for<'n> Fn(&'n str) -> bool + Sync),
    ) -> Result<StepReport, JournalError> {
        Ok(StepReport {
            step: self.id,
            targets: vec![TargetReport {
                error: Some(format!("{} is not configured", self.id)),
                error_class: Some(crate::exit::Exit::Config.code()),
                ..TargetReport::new(self.id.name(), Outcome::FailedNothingWritten)
            }],
            millis: 0,
        })
    }

    async fn recover(
        &self,
        name: &str,
        _apps: &[&AppConfig],
        journal: &Journal,
        undo: UndoDeps<'_>,
    ) -> Result<TargetReport, JournalError> {
        unwind_unlisted(journal, undo, self.id, name, "is no longer configured").await
    }
}

/// A target the journal holds that nothing can re-gate any more (its app or its section
/// is gone from the config): unwound from the journal alone.
pub(crate) async fn unwind_unlisted(
    journal: &Journal,
    undo: UndoDeps<'_>,
    id: StepId,
    target: &str,
    why: &str,
) -> Result<TargetReport, JournalError> {
    let out = unwind(journal, undo, id, target).await?;
    Ok(TargetReport {
        error: Some(format!("{id} {target} {why}: unwound from the journal")),
        outcome: if out.complete() {
            Outcome::RolledBack
        } else {
            Outcome::RollbackIncomplete
        },
        rollback: Some(out),
        ..TargetReport::new(target, Outcome::RolledBack)
    })
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
    /// What its gate proved that later steps build on.
    #[serde(skip)]
    pub facts: Vec<Fact>,
    /// The human report's lines about what was made and proven ([`Step::summary`]).
    #[serde(skip)]
    pub summary: Vec<String>,
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
pub(crate) async fn run_step<'a, S: Step>(
    step: &'a S,
    apps: &'a [&'a S::Target],
    ctx: RunCtx<'a>,
    stop_on_failure: bool,
) -> Result<StepReport, JournalError> {
    let started = std::time::Instant::now();
    tracing::info!(
        target: "rotate::progress",
        "{}: {} target(s){}",
        step.id(),
        apps.len(),
        if ctx.journal.is_none() { ", plan only" } else { "" }
    );
    // At most that many targets at once, each next one started as soon as any finishes
    // (none waits behind a slower one), reports put back in the order of `apps`. Boxed
    // futures in a plain loop (no closure held across an await): what the registry's
    // `async_trait` can prove `Send` for every lifetime.
    let bound = match stop_on_failure {
        true => 1,
        false => step.concurrency(ctx.concurrency).max(1),
    };
    let mut queue = apps.iter().copied().enumerate();
    let mut running = futures_util::stream::FuturesUnordered::new();
    for (i, app) in queue.by_ref().take(bound) {
        running.push(indexed(i, target_future(step, app, ctx)));
    }
    let mut done = Vec::with_capacity(apps.len());
    let mut failed: Option<String> = None;
    while let Some((i, r)) = running.next().await {
        let t = r?;
        let ok = matches!(
            t.outcome,
            Outcome::Committed | Outcome::Unchanged | Outcome::Planned
        );
        if stop_on_failure && ctx.journal.is_some() && !ok && failed.is_none() {
            failed = Some(t.app.clone());
        }
        done.push((i, t));
        if failed.is_none()
            && let Some((i, app)) = queue.next()
        {
            running.push(indexed(i, target_future(step, app, ctx)));
        }
    }
    done.sort_by_key(|(i, _)| *i);
    let mut targets: Vec<TargetReport> = done.into_iter().map(|(_, t)| t).collect();
    // What a rolling step did not start after its first failure: left as it is.
    for (_, app) in queue {
        targets.push(TargetReport {
            error: failed.as_ref().map(|first| {
                format!("not started: {first} failed first (one at a time; the first failure stops the rest)")
            }),
            ..blank(app, Outcome::NotStarted)
        });
    }
    Ok(StepReport {
        step: step.id(),
        targets,
        millis: started.elapsed().as_millis() as u64,
    })
}

/// `work`'s output tagged with `i`, its place in the config order.
async fn indexed<F: Future>(i: usize, work: F) -> (usize, F::Output) {
    (i, work.await)
}

/// One target of a step, run and logged, as a boxed `Send` future.
fn target_future<'a, S: Step>(
    step: &'a S,
    app: &'a S::Target,
    ctx: RunCtx<'a>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<TargetReport, JournalError>> + Send + 'a>> {
    Box::pin(async move {
        let label = format!("{} {}", step.id(), app.name());
        let r = with_heartbeat(&label, run_target(step, app, ctx)).await;
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
}

/// How often a long wait says it is still waiting.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// `work`, with a progress line every [`HEARTBEAT`] while it runs (a listener serial
/// wait, an agent's render, a healthcheck through a restart): a long wait is never silent.
pub(crate) async fn with_heartbeat<F: Future>(label: &str, work: F) -> F::Output {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + HEARTBEAT, HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => tracing::info!(
                target: "rotate::progress",
                "{label}: still under way ({} s)",
                started.elapsed().as_secs()
            ),
        }
    }
}

fn blank<T: Target + ?Sized>(app: &T, outcome: Outcome) -> TargetReport {
    TargetReport::new(app.name(), outcome)
}

impl TargetReport {
    /// Why it failed, typed: the exit code its failure maps to and the message; `None`
    /// when it did not fail.
    pub fn failure(&self) -> Option<(crate::exit::Exit, &str)> {
        let class = crate::exit::Exit::from_code(self.error_class?)?;
        Some((class, self.error.as_deref().unwrap_or_default()))
    }

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
            facts: Vec::new(),
            summary: Vec::new(),
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
    if if_due && !check_due(step, app, &mut r, started).await {
        r.millis = started.elapsed().as_millis() as u64;
        return Ok(r);
    }
    let Some(plan) = plan_target(step, app, &mut r, ctx, started).await else {
        return Ok(r);
    };
    r.changes = plan.changes.clone();
    let Some(journal) = journal else {
        r.millis = started.elapsed().as_millis() as u64;
        return Ok(r);
    };
    if cancel.is_cancelled() {
        r.outcome = Outcome::NotStarted;
        r.millis = started.elapsed().as_millis() as u64;
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
        r.summary = step.summary(&applied, None);
        journal.append(journal::Event::Target {
            step: id,
            target: app.name().to_owned(),
            state: TargetState::Applied,
            note: None,
            data: r.applied.clone(),
            changed: Some(step.changed(&applied)),
        })?;
        let proof = step.gate(app, &applied).await?;
        Ok::<_, StepError>((applied, proof))
    }
    .await;
    match result {
        Ok((applied, proof)) => commit_target(step, app, journal, &mut r, &applied, &proof)?,
        Err(e) if applied_ok && e.awaits_resume() => {
            fail(&mut r, &e);
            r.outcome = Outcome::AwaitingResume;
            r.pending = Some("unseal Vault, then `rotate run --resume` re-gates this step".into());
        }
        Err(e) => {
            fail(&mut r, &e);
            let lost = e.lost_vault();
            keep_or_unwind(id, app.name(), journal, undo_deps, lost, &mut r).await?;
        }
    }
    r.millis = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// Puts the failure `e` (its message and exit class) into `r`.
fn fail(r: &mut TargetReport, e: &StepError) {
    r.error = Some(format!("{e:#}"));
    r.error_class = Some(e.exit().code());
}

/// For an `--if-due` run: whether `app` is due; when it is not (or asking failed), `r` is
/// its whole report.
async fn check_due<S: Step>(
    step: &S,
    app: &S::Target,
    r: &mut TargetReport,
    started: std::time::Instant,
) -> bool {
    match step.not_due(app).await {
        Ok(Some(why)) => {
            r.outcome = Outcome::Unchanged;
            r.changes =
                vec![Change::new(change::ChangeKind::Unchanged, app.name().to_owned()).note(why)];
            r.millis = started.elapsed().as_millis() as u64;
            false
        }
        Ok(None) => true,
        Err(e) => {
            r.outcome = Outcome::FailedNothingWritten;
            fail(r, &e);
            false
        }
    }
}

/// Plans `app`; `None` when `r` is then its whole report (a plan only run that plans it
/// after the earlier step creating what it needs, or a failed plan).
async fn plan_target<S: Step>(
    step: &S,
    app: &S::Target,
    r: &mut TargetReport,
    ctx: RunCtx<'_>,
    started: std::time::Instant,
) -> Option<TargetPlan<S::Plan>> {
    match step.plan(app).await {
        Ok(p) => Some(p),
        Err(StepError::NeedsEarlier {
            what,
            step: earlier,
        }) if ctx.journal.is_none() && ctx.steps.contains(&earlier) => {
            r.changes = vec![
                Change::new(change::ChangeKind::Create, app.name().to_owned())
                    .note(format!("planned after {earlier}, which creates {what}")),
            ];
            r.millis = started.elapsed().as_millis() as u64;
            None
        }
        // Vault (or the server this target is) went away before anything was written:
        // not a failure of the target; the run is left to `--resume`.
        Err(e) if ctx.journal.is_some() && e.lost_vault() => {
            r.outcome = Outcome::NotStarted;
            fail(r, &e);
            r.error_class = Some(crate::exit::Exit::ResumeNeeded.code());
            r.pending = Some(
                "Vault did not answer before this target's first write: `rotate run --resume` once it is back"
                    .into(),
            );
            r.millis = started.elapsed().as_millis() as u64;
            None
        }
        Err(e) => {
            r.outcome = Outcome::FailedNothingWritten;
            fail(r, &e);
            r.millis = started.elapsed().as_millis() as u64;
            None
        }
    }
}

/// Journals `app` committed and reports what its gate proved.
fn commit_target<S: Step>(
    step: &S,
    app: &S::Target,
    journal: &Journal,
    r: &mut TargetReport,
    applied: &S::Applied,
    proof: &S::Proof,
) -> Result<(), JournalError> {
    journal.set_state(step.id(), app.name(), TargetState::Committed, None)?;
    r.facts = step.facts(proof);
    r.summary = step.summary(applied, Some(proof));
    // Proven; "unchanged" when its plan had nothing to change (e.g. a bundle that
    // was already right, the healthcheck).
    r.outcome = if r.changes.iter().any(Change::is_change) {
        Outcome::Committed
    } else {
        Outcome::Unchanged
    };
    r.proof = serde_json::to_value(proof).ok();
    r.pending = step.pending(app);
    Ok(())
}

/// A failed target: kept as it is for `--resume` when Vault went away after its writes,
/// else unwound; `r` gets the outcome.
async fn keep_or_unwind(
    id: StepId,
    target: &str,
    journal: &Journal,
    undo_deps: UndoDeps<'_>,
    lost: bool,
    r: &mut TargetReport,
) -> Result<(), JournalError> {
    let wrote = journal.with_record(|r| r.target(id, target).is_some_and(|t| !t.undo.is_empty()));
    // A Vault that went away after the writes (sealed by a restart, unreachable, or
    // gone mid-request: a leader change) can neither prove nor undo them now, or left
    // a write's outcome unknown: keep them as they are, for `--resume`.
    let down = match lost {
        true => Some("lost mid-request (a leader change, a restart)"),
        false => vault_down(undo_deps).await,
    };
    if wrote && let Some(why) = down {
        r.outcome = Outcome::AwaitingResume;
        r.error_class = Some(crate::exit::Exit::ResumeNeeded.code());
        r.pending = Some(format!(
            "Vault is {why} after this target's writes: kept as it is, neither proven nor undone; once Vault is back (unsealed), `rotate run --resume` re-gates it (or undoes it)"
        ));
        return Ok(());
    }
    let out = unwind(journal, undo_deps, id, target).await?;
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
    Ok(())
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
        Err(e) if e.class() == vault_client::ErrorClass::Sealed => Some("sealed"),
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
    let Some((state, data)) = journal.with_record(|rec| {
        rec.target(id, app.name())
            .map(|t| (t.state, t.data.clone()))
    }) else {
        return Ok(blank(app, Outcome::NotStarted));
    };
    let mut r = blank(app, Outcome::Committed);
    let regate = match (state, &data) {
        (TargetState::Applied, Some(data)) => {
            match serde_json::from_value::<S::Applied>(data.clone()) {
                Ok(applied) => Some(
                    step.gate(app, &applied)
                        .await
                        .map(|p| (data.clone(), step.summary(&applied, Some(&p)), p)),
                ),
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
        Some(Ok((data, summary, proof))) => {
            journal.set_state(id, app.name(), TargetState::Committed, None)?;
            r.facts = step.facts(&proof);
            r.summary = summary;
            r.applied = Some(data);
            r.proof = serde_json::to_value(&proof).ok();
            r.pending = step.pending(app);
        }
        other => {
            if let Some(Err(e)) = other {
                r.error = Some(format!("re-gate after interruption: {e:#}"));
                r.error_class = Some(e.exit().code());
            } else if state.is_unwinding() {
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
    use crate::testing::{Mocks, prod_config};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Collects formatted log lines.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_says_every_ten_seconds_that_it_is_still_under_way() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let out = with_heartbeat("leaf billing", async {
            tokio::time::sleep(std::time::Duration::from_secs(25)).await;
            7
        })
        .await;
        assert_eq!(out, 7);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let said: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("still under way"))
            .collect();
        assert_eq!(said.len(), 2, "{text}");
        assert!(
            said[0].contains("leaf billing: still under way (10 s)"),
            "{text}"
        );
        assert!(said[1].contains("(20 s)"), "{text}");
        // A quick one says nothing.
        with_heartbeat("quick", async {}).await;
        assert!(
            !String::from_utf8(lines.0.lock().unwrap().clone())
                .unwrap()
                .contains("quick")
        );
    }

    /// A target of the fake step.
    struct Named(String);

    impl Target for Named {
        fn name(&self) -> &str {
            &self.0
        }
    }

    /// Writes two policies per target (each journaled first), tracks how many targets
    /// run at once, and fails the gate of `bad`.
    struct Fake {
        targets: Vec<Named>,
        bad: &'static str,
        live: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl Step for Fake {
        type Target = Named;
        type Plan = ();
        type Applied = String;
        type Proof = String;

        fn id(&self) -> StepId {
            StepId::Agents
        }
        async fn plan(&self, t: &Named) -> Result<TargetPlan<()>, StepError> {
            Ok(TargetPlan {
                changes: vec![Change::new(change::ChangeKind::Create, &t.0)],
                data: (),
            })
        }
        async fn apply(
            &self,
            t: &Named,
            _: TargetPlan<()>,
            tx: &Tx<'_>,
        ) -> Result<String, StepError> {
            let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            for (n, previous) in [(1, None), (2, Some("old".to_owned()))] {
                tx.record(UndoAction::Policy {
                    name: format!("{}-{n}", t.0),
                    previous,
                })?;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            self.live.fetch_sub(1, Ordering::SeqCst);
            Ok(t.0.clone())
        }
        async fn gate(&self, t: &Named, applied: &String) -> Result<String, StepError> {
            if t.0 == self.bad {
                return Err(StepError::Gate {
                    step: "fake",
                    app: t.0.clone(),
                    reason: "the client saw the old serial".into(),
                });
            }
            Ok(format!("{applied} proven"))
        }
        fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t Named> {
            self.targets.iter().collect()
        }
    }

    /// Targets run at most `concurrency` at once and report in order; the one whose gate
    /// fails is unwound newest write first, reported rolled back with the gate's exit
    /// class, and journaled as such; the others commit.
    #[tokio::test]
    async fn a_failed_gate_unwinds_its_target_newest_first_and_the_others_commit() {
        let cfg = prod_config();
        let mut mocks = Mocks::default();
        mocks.unsealed();
        let mut seq = mockall::Sequence::new();
        mocks
            .sys
            .expect_write_policy()
            .withf(|name, text| name == "c-2" && text == "old")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        mocks
            .sys
            .expect_delete_policy()
            .withf(|name| name == "c-1")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        let runner = hooks::MockCommandRunner::new();
        let issued = unwind::IssuedIndex::new();
        let undo = UndoDeps {
            cfg: &cfg,
            vault: mocks.vault(),
            runner: &runner,
            timeout: std::time::Duration::from_secs(1),
            issued: &issued,
        };
        let dir = tempfile::tempdir().unwrap();
        let request = journal::RunRequest {
            steps: vec![StepId::Agents],
            apps: vec![],
            kv_access: false,
            kv_seed: false,
            if_due: false,
        };
        let journal = Journal::start(dir.path(), "r1", "test", 1, request).unwrap();
        let cancel = Cancel::new();
        let step = Fake {
            targets: ["a", "b", "c", "d", "e"].map(|n| Named(n.into())).into(),
            bad: "c",
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        };
        let ctx = RunCtx {
            journal: Some(&journal),
            undo,
            concurrency: 2,
            cancel: &cancel,
            if_due: false,
            steps: &[StepId::Agents],
        };
        let report = DynStep::run(&step, &[], ctx, &|_| false).await.unwrap();

        let seen: Vec<(&str, Outcome)> = report
            .targets
            .iter()
            .map(|t| (t.app.as_str(), t.outcome))
            .collect();
        use Outcome::{Committed, RolledBack};
        assert_eq!(
            seen,
            [
                ("a", Committed),
                ("b", Committed),
                ("c", RolledBack),
                ("d", Committed),
                ("e", Committed)
            ]
        );
        let c = &report.targets[2];
        assert_eq!(c.error_class, Some(crate::exit::Exit::GateFailed.code()));
        assert!(c.rollback.as_ref().is_some_and(|o| o.complete()));
        assert_eq!(report.targets[0].proof, Some(serde_json::json!("a proven")));
        assert_eq!(step.peak.load(Ordering::SeqCst), 2);
        let record = journal.record();
        assert_eq!(
            record.target(StepId::Agents, "c").unwrap().state,
            TargetState::RolledBack
        );
        assert_eq!(
            record.target(StepId::Agents, "e").unwrap().state,
            TargetState::Committed
        );
    }
}
