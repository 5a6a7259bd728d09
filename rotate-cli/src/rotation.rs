//! A whole rotation as a transaction: lock → refuse to start over an unfinished run →
//! preflight (step 0, reads only) → the steps in order, each target journaled, gated,
//! committed or unwound. Also `--resume` (finish or unwind what an interrupted run left)
//! and `rollback` (unwind the last run's committed targets, newest first).

use std::path::PathBuf;

use serde::Serialize;

use crate::checks::PreflightReport;
use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::engine::unwind::{IssuedIndex, UndoDeps, unwind};
use crate::engine::{DynStep, Fact, Outcome, RunCtx, StepReport, TargetReport};
use crate::exit::Exit;
use crate::state::journal::{
    self, Event, Journal, JournalError, RunRequest, RunState, StepId, TargetState,
};
use crate::state::lock::{LockError, StateLock};
use crate::state::undo::UndoAction;
use crate::steps::preflight::preflight;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plan only: reads, writes nothing (not even the journal), takes no lock.
    Plan,
    /// Run the requested steps.
    Run,
    /// Finish or unwind an interrupted run, then continue it.
    Resume,
    /// Unwind the last run's committed targets.
    Rollback,
}

/// The report of a whole invocation: one document for human and JSON output.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Environment.
    pub env: String,
    /// What was done.
    pub mode: Mode,
    /// The run's id (journal), when one was started or continued.
    pub run_id: Option<String>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Step 0.
    pub preflight: Option<PreflightReport>,
    /// Targets an interrupted run left, finished or unwound by `--resume`.
    pub recovered: Vec<StepReport>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// `rollback`: what was unwound.
    pub rolled_back: Vec<TargetReport>,
    /// Files put back before any client was built (a key and certificate an interrupted
    /// run or rollback left torn, see [`crate::run::repair_torn_pairs`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// Steps not attempted because a global step (admin, listener) before them failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<StepId>,
    /// The exit code (documented in README and [`Exit`]).
    pub exit_code: u8,
    /// One sentence: what changed, what was undone, what is left.
    pub summary: String,
    /// What the operator must act on (or knowingly accept), from every step: e.g. a
    /// Vault that needs a restart this run did not make.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attention: Vec<String>,
    /// Policies `[leaf] remove_policies` names that were removed from the mapping of an
    /// app whose own rotation did not get to it (it failed, or was skipped): a security
    /// fix the app cannot veto, never undone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_fixes: Vec<String>,
}

impl RunReport {
    /// An empty report of `mode` over `cfg`'s environment, exit 0 until judged.
    fn new(cfg: &Config, mode: Mode, state_dir: &std::path::Path) -> Self {
        RunReport {
            env: cfg.env.clone(),
            mode,
            run_id: None,
            state_dir: state_dir.to_owned(),
            preflight: None,
            recovered: Vec::new(),
            steps: Vec::new(),
            rolled_back: Vec::new(),
            repaired: Vec::new(),
            not_run: Vec::new(),
            exit_code: 0,
            summary: String::new(),
            attention: Vec::new(),
            security_fixes: Vec::new(),
        }
    }

    /// The exit code.
    pub fn exit(&self) -> Exit {
        Exit::from_code(self.exit_code).unwrap_or(Exit::Failure)
    }
}

/// Why an invocation could not even start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// Another run holds the lock.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// The journal cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The last run was interrupted (or its rollback was, or left something behind) and
    /// must be finished first.
    #[error("run {run_id} (pid {pid}, started {started}) {what}: {how} (journal {journal})")]
    ResumeNeeded {
        /// The unfinished run.
        run_id: String,
        /// Its pid.
        pid: u32,
        /// When it started.
        started: String,
        /// What is unfinished about it.
        what: String,
        /// The one command that finishes it.
        how: String,
        /// Its journal.
        journal: String,
    },
    /// `--resume`/`rollback` found nothing to act on.
    #[error("{0}")]
    NothingToDo(String),
    /// The admin identity files an interrupted step 1 left could not be restored.
    #[error("{0}")]
    Repair(String),
}

impl RotationError {
    /// "Finish run `r` first", with the command that does.
    pub(crate) fn resume_needed(r: &journal::RunRecord, state_dir: &std::path::Path) -> Self {
        let incomplete: Vec<String> = r
            .targets
            .iter()
            .filter(|t| t.state.is_unwinding())
            .map(|t| format!("{} {}", t.step, t.target))
            .collect();
        let (what, how) = if r.state == RunState::RollingBack {
            (
                "was being rolled back when it stopped".to_owned(),
                "`rotate rollback` finishes the rollback".to_owned(),
            )
        } else if !incomplete.is_empty() {
            (
                format!(
                    "left undo unfinished for {} (ROLLBACK INCOMPLETE)",
                    incomplete.join(", ")
                ),
                "fix what its report listed, then `rotate run --resume` retries the undo and finishes the run (or `rotate rollback` unwinds all of it)".to_owned(),
            )
        } else {
            (
                "did not finish".to_owned(),
                "run `rotate run --resume` to finish it, or `rotate rollback` to unwind it"
                    .to_owned(),
            )
        };
        RotationError::ResumeNeeded {
            run_id: r.run_id.clone(),
            pid: r.pid,
            started: crate::text::utc(r.started),
            what,
            how,
            journal: state_dir.join("journal.jsonl").display().to_string(),
        }
    }
}

impl RotationError {
    /// The exit code.
    pub fn exit(&self) -> Exit {
        match self {
            RotationError::Locked(LockError::Held { .. }) => Exit::Locked,
            RotationError::Locked(LockError::State(e)) | RotationError::Journal(e) => e.exit(),
            RotationError::Locked(_) => Exit::Failure,
            RotationError::ResumeNeeded { .. } => Exit::ResumeNeeded,
            RotationError::NothingToDo(_) => Exit::Ok,
            RotationError::Repair(_) => Exit::RollbackIncomplete,
        }
    }
}

fn undo_deps<'a>(cfg: &'a Config, deps: Deps<'a>, issued: &'a IssuedIndex) -> UndoDeps<'a> {
    UndoDeps {
        cfg,
        vault: deps.vault,
        runner: deps.runner,
        timeout: cfg.duration(&cfg.leaf.command_timeout),
        issued,
    }
}

/// Plan, run, resume or roll back.
pub async fn execute(
    cfg: &Config,
    apps: &[&AppConfig],
    request: RunRequest,
    mode: Mode,
    deps: Deps<'_>,
) -> Result<RunReport, RotationError> {
    let mut report = execute_mode(cfg, apps, request, mode, deps).await?;
    let run_level = std::mem::take(&mut report.attention);
    report.attention = report
        .recovered
        .iter()
        .chain(&report.steps)
        .flat_map(|s| {
            s.targets.iter().flat_map(move |t| {
                t.changes.iter().filter(|c| c.attention).map(move |c| {
                    format!(
                        "{} {}: {}{}",
                        s.step,
                        t.app,
                        c.object,
                        c.note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    )
                })
            })
        })
        .chain(run_level)
        .collect();
    Ok(report)
}

async fn execute_mode(
    cfg: &Config,
    apps: &[&AppConfig],
    request: RunRequest,
    mode: Mode,
    deps: Deps<'_>,
) -> Result<RunReport, RotationError> {
    let state_dir = cfg.state_dir();
    let mut report = RunReport::new(cfg, mode, &state_dir);
    let now = (deps.clock)();
    let _lock = lock_unless_plan(mode, &state_dir, &request, now)?;
    let last = journal::last_run(&state_dir)?;
    if rolls_back(mode, last.as_ref(), &state_dir)? {
        return rollback(cfg, deps, report).await;
    }

    // A resume continues the run as it was asked: its steps and apps.
    let request = match (&mode, &last) {
        (Mode::Resume, Some(r)) => r.request.clone(),
        _ => request,
    };
    let resumed_apps: Vec<&AppConfig>;
    let apps = if mode == Mode::Resume && !request.apps.is_empty() {
        resumed_apps = apps
            .iter()
            .copied()
            .filter(|a| request.apps.contains(&a.name))
            .collect();
        &resumed_apps[..]
    } else {
        apps
    };

    // Step 0: every check before the first write.
    let pre = preflight(cfg, apps, &request, deps).await;
    let chain = pre.ca_chain.clone().filter(|_| pre.ready());
    let pre_exit = pre.exit();
    report.preflight = Some(pre);
    let Some(chain) = chain else {
        report.exit_code = pre_exit.code();
        report.summary = "preflight failed: nothing was written".into();
        return Ok(report);
    };

    let registry = crate::steps::build(cfg, deps, &chain, &request);
    let issued = IssuedIndex::new();
    let undo = undo_deps(cfg, deps, &issued);
    let planned = request.steps.clone();
    let run = Run {
        registry: &registry,
        request: &request,
        apps,
        undo,
        ctx: RunCtx {
            journal: None,
            undo,
            concurrency: cfg.run.concurrency,
            cancel: deps.cancel,
            if_due: request.if_due,
            steps: &planned,
        },
    };
    if mode == Mode::Plan {
        run.plan(&mut report).await?;
        return Ok(report);
    }

    let journal = open_journal(cfg, mode, &state_dir, now, &request)?;
    report.run_id = Some(journal.record().run_id);
    let mut failed = Failed::default();
    if mode == Mode::Resume {
        run.recover(&journal, &mut report, &mut failed).await?;
    }
    run.steps(&journal, &mut report, &mut failed).await?;
    finish(cfg, &run, &journal, deps, &mut report).await?;
    Ok(report)
}

/// The state directory's lock, taken for every mode but a plan (which writes nothing).
fn lock_unless_plan(
    mode: Mode,
    state_dir: &std::path::Path,
    request: &RunRequest,
    now: i64,
) -> Result<Option<StateLock>, RotationError> {
    Ok(match mode {
        Mode::Plan => None,
        _ => Some(StateLock::acquire(
            state_dir,
            &format!("rotate {mode:?} {:?}", request.steps).to_lowercase(),
            now,
        )?),
    })
}

/// Whether `mode` given the `last` run means unwinding (a rollback, or a resume of an
/// interrupted rollback); refuses a resume with nothing to resume and a run over an
/// unfinished one.
fn rolls_back(
    mode: Mode,
    last: Option<&journal::RunRecord>,
    state_dir: &std::path::Path,
) -> Result<bool, RotationError> {
    match mode {
        Mode::Rollback => return Ok(true),
        Mode::Resume => {
            if !last.is_some_and(|r| r.needs_resume()) {
                return Err(RotationError::NothingToDo(
                    "nothing to resume: the last run finished".into(),
                ));
            }
            // A rollback was under way: finishing it means unwinding, never running the
            // run's steps again.
            if last.is_some_and(|r| r.state == RunState::RollingBack) {
                return Ok(true);
            }
        }
        Mode::Run => {
            if let Some(r) = last.filter(|r| r.needs_resume()) {
                return Err(RotationError::resume_needed(r, state_dir));
            }
        }
        Mode::Plan => {}
    }
    Ok(false)
}

/// The journal of this run: reopened for a resume, started afresh otherwise.
fn open_journal(
    cfg: &Config,
    mode: Mode,
    state_dir: &std::path::Path,
    now: i64,
    request: &RunRequest,
) -> Result<Journal, RotationError> {
    Ok(match mode {
        Mode::Resume => Journal::reopen(state_dir)?
            .ok_or_else(|| RotationError::NothingToDo("nothing to resume: no journal".into()))?,
        _ => {
            // Unique even for runs of one process within one second (an embedder, the
            // demo): the id names kept previous versions and archived journals.
            static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let run_id = format!("{}-{}-{seq}", now, std::process::id());
            Journal::start(state_dir, &run_id, &cfg.env, now, request.clone())?
        }
    })
}

/// What failed so far: a global step (every later step depends on it), or apps (skipped
/// by the later per-app steps).
#[derive(Default)]
struct Failed {
    global: bool,
    apps: Vec<String>,
}

impl Failed {
    /// Note a target that did not end committed or unchanged (or was not cleanly
    /// recovered).
    fn note(&mut self, global: bool, t: &TargetReport, bad: &[Outcome]) {
        if bad.contains(&t.outcome) {
            if global {
                self.global = true;
            } else {
                self.apps.push(t.app.clone());
            }
        }
    }
}

/// One invocation over the registry: its steps in order, for its apps.
struct Run<'r, 'a> {
    registry: &'r [Box<dyn DynStep + 'a>],
    request: &'r RunRequest,
    apps: &'r [&'r AppConfig],
    undo: UndoDeps<'a>,
    ctx: RunCtx<'r>,
}

impl Run<'_, '_> {
    /// The registry's step `id`, in the order `request.steps` asks for (step 0 is not in
    /// the registry: preflight runs before it).
    fn step(&self, id: StepId) -> Option<&dyn DynStep> {
        self.registry
            .iter()
            .find(|s| s.id() == id)
            .map(|s| &**s as &dyn DynStep)
    }

    /// `plan`: every step, reading only; exit 10 when anything would change.
    async fn plan(&self, report: &mut RunReport) -> Result<(), JournalError> {
        for id in &self.request.steps {
            let Some(step) = self.step(*id) else { continue };
            // As the run decides: nothing rotated, nothing restarted.
            let rotating_planned = report
                .steps
                .iter()
                .flat_map(|s| &s.targets)
                .any(|t| t.changes.iter().any(|c| c.is_change()));
            if *id == StepId::Restarts
                && !rotating_planned
                && self.request.steps.iter().any(|s| s.rotates())
            {
                report.steps.push(nothing_to_restart(*id));
                continue;
            }
            report
                .steps
                .push(step.run(self.apps, self.ctx, &|_| false).await?);
        }
        let changes = report
            .steps
            .iter()
            .flat_map(|s| &s.targets)
            .flat_map(|t| &t.changes)
            .filter(|c| c.is_change())
            .count();
        let failed = report
            .steps
            .iter()
            .flat_map(|s| &s.targets)
            .find_map(|t| t.error_class);
        report.exit_code = match failed {
            Some(c) => c,
            None if changes > 0 => Exit::Changes.code(),
            None => Exit::Ok.code(),
        };
        report.summary = match failed {
            Some(_) => "plan found problems (listed); nothing was written".into(),
            None => format!("plan: {changes} change(s); nothing was written"),
        };
        Ok(())
    }

    /// `--resume`: every target the interrupted run left unfinished, in step order,
    /// re-gated or unwound, configured or not.
    async fn recover(
        &self,
        journal: &Journal,
        report: &mut RunReport,
        failed: &mut Failed,
    ) -> Result<(), JournalError> {
        let rec = journal.record();
        for id in &self.request.steps {
            let Some(step) = self.step(*id) else { continue };
            let mut targets = Vec::new();
            for rt in rec
                .targets
                .iter()
                .filter(|t| t.step == *id && t.state.is_unfinished())
            {
                let t = step
                    .recover(&rt.target, self.apps, journal, self.undo)
                    .await?;
                // Still waiting (sealed) or not cleanly unwound: not run a second time
                // over what it left.
                failed.note(
                    step.global(),
                    &t,
                    &[Outcome::RollbackIncomplete, Outcome::AwaitingResume],
                );
                targets.push(t);
            }
            if !targets.is_empty() {
                report.recovered.push(StepReport {
                    step: *id,
                    targets,
                    millis: 0,
                });
            }
        }
        Ok(())
    }

    /// The steps, in order. A global step (admin, listener) that fails stops the run:
    /// every later step depends on it; an app that fails a step is skipped by the later
    /// ones.
    async fn steps(
        &self,
        journal: &Journal,
        report: &mut RunReport,
        failed: &mut Failed,
    ) -> Result<(), JournalError> {
        let ctx = RunCtx {
            journal: Some(journal),
            ..self.ctx
        };
        for id in &self.request.steps {
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            let Some(step) = self.step(*id) else { continue };
            if failed.global {
                report.not_run.push(*id);
                continue;
            }
            let rec = journal.record();
            let committed = |name: &str| {
                rec.target(*id, name)
                    .is_some_and(|t| t.state == TargetState::Committed)
            };
            let sr = match step.global() {
                true if *id == StepId::Restarts
                    && !committed("restarts")
                    && !renewed(journal, &self.request.steps) =>
                {
                    nothing_to_restart(*id)
                }
                true => step.run(&[], ctx, &committed).await?,
                false => {
                    let todo: Vec<&AppConfig> = self
                        .apps
                        .iter()
                        .copied()
                        .filter(|a| !failed.apps.contains(&a.name) && !committed(&a.name))
                        .collect();
                    let mut sr = step.run(&todo, ctx, &|_| false).await?;
                    for a in self.apps.iter().filter(|a| failed.apps.contains(&a.name)) {
                        sr.targets.push(skipped(a, *id));
                    }
                    sr
                }
            };
            let bad = [
                Outcome::Planned,
                Outcome::FailedNothingWritten,
                Outcome::RolledBack,
                Outcome::RollbackIncomplete,
                Outcome::NotStarted,
                Outcome::Skipped,
                Outcome::AwaitingResume,
            ];
            for t in &sr.targets {
                failed.note(step.global(), t, &bad);
            }
            report.steps.push(sr);
        }
        Ok(())
    }
}

/// After the steps: the security fix no app can veto, step 3 marked live where step 4
/// proved it, the run's end journaled, earlier runs' backups pruned once this one
/// committed, the exit code and summary.
async fn finish(
    cfg: &Config,
    run: &Run<'_, '_>,
    journal: &Journal,
    deps: Deps<'_>,
    report: &mut RunReport,
) -> Result<(), JournalError> {
    let steps = &run.request.steps;
    if steps
        .iter()
        .any(|s| matches!(s, StepId::Agents | StepId::Leaf))
    {
        let converged = crate::policy_fix::converged_mappings(journal);
        let pending: Vec<&AppConfig> = run
            .apps
            .iter()
            .copied()
            .filter(|a| !converged.contains(&a.name))
            .collect();
        let (fixed, left) = crate::policy_fix::strip_removed_policies(cfg, &pending, deps).await;
        report.security_fixes = fixed;
        report.attention.extend(left);
    }
    mark_step_3_live(report);
    let interrupted = deps.cancel.is_cancelled()
        || report
            .recovered
            .iter()
            .chain(&report.steps)
            .flat_map(|s| &s.targets)
            .any(|t| matches!(t.outcome, Outcome::NotStarted | Outcome::AwaitingResume));
    journal.append(Event::RunEnded {
        state: if interrupted {
            RunState::Interrupted
        } else {
            RunState::Finished
        },
    })?;
    // The previous versions an earlier run kept back `rotate rollback` of that run: they
    // go only once this run has committed something (a run that commits nothing leaves
    // the last committed run undoable).
    if journal.record().committed_any() {
        prune_earlier_runs(&cfg.state_dir(), &journal.run_id())?;
    }
    let (exit, summary) = judge(report, interrupted);
    report.exit_code = exit.code();
    report.summary = summary;
    Ok(())
}

fn skipped(app: &AppConfig, id: StepId) -> TargetReport {
    TargetReport {
        error: Some(format!("skipped: an earlier step failed for {}", app.name)),
        ..TargetReport::new(&app.name, Outcome::Skipped)
    }
    .with_step_note(id)
}

impl TargetReport {
    fn with_step_note(mut self, id: StepId) -> Self {
        if let Some(e) = &mut self.error {
            e.push_str(&format!(" ({id} not attempted)"));
        }
        self
    }
}

/// The exit code and summary of a run from its targets' outcomes.
fn judge(report: &RunReport, interrupted: bool) -> (Exit, String) {
    // A recovered target that its step then ran again is judged by that later outcome.
    let rerun = |step: StepId, app: &str| {
        report
            .steps
            .iter()
            .filter(|s| s.step == step)
            .flat_map(|s| &s.targets)
            .any(|t| t.app == app && t.outcome != Outcome::Skipped)
    };
    let all: Vec<&TargetReport> = report
        .recovered
        .iter()
        .flat_map(|s| {
            s.targets
                .iter()
                .filter(|t| t.outcome != Outcome::RolledBack || !rerun(s.step, &t.app))
        })
        .chain(report.steps.iter().flat_map(|s| &s.targets))
        .collect();
    let count = |o: Outcome| all.iter().filter(|t| t.outcome == o).count();
    let committed = count(Outcome::Committed);
    let rolled_back = count(Outcome::RolledBack);
    let incomplete = count(Outcome::RollbackIncomplete);
    let failed_clean = count(Outcome::FailedNothingWritten);
    let mut exit = Exit::Ok;
    for t in &all {
        let e = match t.outcome {
            Outcome::RollbackIncomplete => Exit::RollbackIncomplete,
            Outcome::RolledBack => Exit::GateFailed,
            Outcome::FailedNothingWritten => t
                .error_class
                .and_then(Exit::from_code)
                .unwrap_or(Exit::Failure),
            _ => Exit::Ok,
        };
        exit = exit.worst(e);
    }
    // 3/4/6 promise "nothing written": only true when nothing at all was committed.
    if committed > 0 && matches!(exit, Exit::Config | Exit::Vault | Exit::Sealed) {
        exit = Exit::GateFailed;
    }
    if interrupted {
        exit = exit.worst(Exit::ResumeNeeded);
    }
    let mut parts = vec![format!("{committed} target(s) committed")];
    let unchanged = count(Outcome::Unchanged);
    if unchanged > 0 {
        parts.push(format!("{unchanged} unchanged"));
    }
    if rolled_back > 0 {
        parts.push(format!("{rolled_back} failed and fully rolled back"));
    }
    if incomplete > 0 {
        parts.push(format!(
            "{incomplete} ROLLBACK INCOMPLETE (see the listed leftovers; `rotate rollback` retries)"
        ));
    }
    if failed_clean > 0 {
        parts.push(format!("{failed_clean} failed before writing anything"));
    }
    let waiting = count(Outcome::AwaitingResume);
    if waiting > 0 {
        parts.push(format!(
            "{waiting} WAITING: Vault was sealed or unreachable after the step's writes; once it is back (unsealed), `rotate run --resume`"
        ));
    } else if interrupted {
        parts.push("interrupted: run `rotate run --resume` to finish".into());
    }
    (exit, parts.join(", "))
}

/// Step 3 is live only once step 4's restarted agent logged in with its certificate: for
/// each app whose leaf gate proved that in this run, step 3's "pending" becomes a fact.
fn mark_step_3_live(report: &mut RunReport) {
    let live: Vec<(String, String)> = report
        .steps
        .iter()
        .filter(|s| s.step == StepId::Leaf)
        .flat_map(|s| &s.targets)
        .filter(|t| t.outcome == Outcome::Committed)
        .flat_map(|t| {
            t.facts.iter().map(|f| match f {
                Fact::AgentLoggedIn { serial } => (t.app.clone(), serial.clone()),
            })
        })
        .collect();
    for t in report
        .steps
        .iter_mut()
        .filter(|s| s.step == StepId::Agents)
        .flat_map(|s| &mut s.targets)
    {
        if let Some((_, serial)) = live.iter().find(|(app, _)| *app == t.app) {
            t.pending = None;
            t.live = Some(format!(
                "live: the restarted agent logged in with certificate serial {serial} (step 4)"
            ));
        }
    }
}

/// Step 6's report when nothing was (or would be) rotated.
fn nothing_to_restart(id: StepId) -> StepReport {
    let mut t = TargetReport::new("restarts", Outcome::Unchanged);
    t.changes = vec![
        crate::change::Change::new(crate::change::ChangeKind::Unchanged, "restarts")
            .note("nothing is rotated in this run, so nothing is restarted"),
    ];
    StepReport {
        step: id,
        targets: vec![t],
        millis: 0,
    }
}

/// Whether this run (its journal: resumed parts included) committed a rotation a restart
/// is for. A run asked for restarts alone (`--step restarts`) always restarts.
fn renewed(journal: &Journal, steps: &[StepId]) -> bool {
    if !steps.iter().any(|s| s.rotates()) {
        return true;
    }
    journal
        .record()
        .targets
        .iter()
        .any(|t| t.step.rotates() && t.state == TargetState::Committed && t.changed != Some(false))
}

/// The earlier runs of `state_dir` (archived journals), newest first.
fn archived_runs(state_dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, JournalError> {
    let dir = state_dir.join("runs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                path: dir,
                op: "list earlier runs",
                source,
            });
        }
    };
    let mut runs: Vec<(u64, String, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".jsonl")?.to_owned();
            // Run ids start with the unix second they started.
            let started = id.split('-').next()?.parse().unwrap_or(0);
            Some((started, id, e.path()))
        })
        .collect();
    runs.sort();
    Ok(runs.into_iter().rev().map(|(_, _, p)| p).collect())
}

/// Whether `rotate rollback` has something to unwind in `rec`: a committed target whose
/// previous versions are kept, or a target left unfinished.
fn rollback_work(rec: &journal::RunRecord) -> bool {
    rec.targets
        .iter()
        .any(|t| (t.state == TargetState::Committed && !t.pruned) || t.state.is_unfinished())
}

/// Once a run has committed: the previous versions (old keys) the last committed run
/// before it kept are no longer needed by any undo; unlink them. (Every committing run
/// does this, so only the newest earlier one that committed can still hold any.)
fn prune_earlier_runs(state_dir: &std::path::Path, current: &str) -> Result<(), JournalError> {
    for path in archived_runs(state_dir)? {
        let j = Journal::open_file(&path)?;
        let rec = j.record();
        if rec.run_id == current {
            continue;
        }
        // A target whose undo is unfinished still needs its previous versions.
        for t in rec.targets.iter().filter(|t| !t.state.is_unfinished()) {
            // Marked first: a kill while discarding leaves a target that no rollback
            // would pretend to restore; discarding again is harmless.
            if !t.pruned {
                j.append(Event::Pruned {
                    step: t.step,
                    target: t.target.clone(),
                })?;
            }
            for u in &t.undo {
                if let UndoAction::File { undo, owner } = &u.action
                    && undo.prev.is_some()
                    && !u.done
                    && let Err(e) = pki_ops::discard_prev(undo, *owner)
                {
                    tracing::warn!(error = %e, "could not remove a kept previous version");
                }
            }
        }
        if rec.committed_any() {
            break;
        }
    }
    Ok(())
}

/// Which run `rotate rollback` unwinds.
enum RollbackCandidate {
    /// The current run.
    Current(Journal),
    /// An earlier run, in `runs/`: made current again before anything is undone.
    Archived(std::path::PathBuf),
}

/// The run `rotate rollback` unwinds: the current one when it has anything to unwind
/// (or its rollback was under way), else the newest earlier run that committed something
/// (a no-op run since does not hide it); `None` when the newest committing run was
/// already rolled back or pruned.
fn rollback_candidate(
    state_dir: &std::path::Path,
) -> Result<Option<RollbackCandidate>, JournalError> {
    if let Some(current) = Journal::reopen(state_dir)? {
        let rec = current.record();
        if rollback_work(&rec) || rec.committed_any() || rec.state == RunState::RollingBack {
            return Ok(Some(RollbackCandidate::Current(current)));
        }
    }
    for path in archived_runs(state_dir)? {
        let rec = Journal::open_file(&path)?.record();
        if rollback_work(&rec) || rec.state == RunState::RollingBack {
            return Ok(Some(RollbackCandidate::Archived(path)));
        }
        if rec.committed_any() || rec.state == RunState::RolledBack {
            break;
        }
    }
    Ok(None)
}

/// `rotate rollback`: unwind the last run's committed (and unfinished) targets, the
/// latest step first.
async fn rollback(
    cfg: &Config,
    deps: Deps<'_>,
    mut report: RunReport,
) -> Result<RunReport, RotationError> {
    let state_dir = cfg.state_dir();
    let journal = match rollback_candidate(&state_dir)? {
        Some(RollbackCandidate::Current(j)) => j,
        // Current again: every guard (a new run, status, repair) sees its rollback.
        Some(RollbackCandidate::Archived(path)) => Journal::promote(&state_dir, &path)?,
        None => {
            return Err(RotationError::NothingToDo(
                "nothing to roll back: no run since the last rollback committed anything (or its previous versions were discarded when a later run committed)".into(),
            ));
        }
    };
    let rec = journal.record();
    report.run_id = Some(rec.run_id.clone());
    if !rollback_work(&rec) {
        if rec.state == RunState::RollingBack {
            // Killed after its last undo, before it said so: say so now.
            journal.append(Event::RunEnded {
                state: RunState::RolledBack,
            })?;
            report.summary = format!("finished the rollback of run {}", rec.run_id);
            return Ok(report);
        }
        return Err(RotationError::NothingToDo(format!(
            "run {} was already rolled back",
            rec.run_id
        )));
    }
    // From here, a kill leaves a run that `rotate rollback` (or `--resume`) finishes,
    // and that blocks new runs until then.
    journal.append(Event::RunEnded {
        state: RunState::RollingBack,
    })?;
    let issued = IssuedIndex::new();
    let undo = undo_deps(cfg, deps, &issued);
    let mut targets: Vec<_> = rec
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Committed || t.state.is_unfinished())
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.step));
    for t in targets {
        if t.pruned {
            report.rolled_back.push(TargetReport {
                error: Some("its previous versions were already discarded".into()),
                ..TargetReport::new(&t.target, Outcome::RollbackIncomplete)
            });
            continue;
        }
        let out = unwind(&journal, undo, t.step, &t.target).await?;
        let outcome = if out.complete() {
            Outcome::Undone
        } else {
            Outcome::RollbackIncomplete
        };
        report.rolled_back.push(TargetReport {
            rollback: Some(out),
            ..TargetReport::new(&t.target, outcome)
        });
    }
    let incomplete = report
        .rolled_back
        .iter()
        .any(|t| t.outcome == Outcome::RollbackIncomplete);
    // An incomplete rollback stays under way: `rotate rollback` (or `--resume`) retries
    // it, and nothing re-runs the run's steps meanwhile.
    if !incomplete {
        journal.append(Event::RunEnded {
            state: RunState::RolledBack,
        })?;
    }
    report.exit_code = if incomplete {
        Exit::RollbackIncomplete
    } else {
        Exit::Ok
    }
    .code();
    report.summary = format!(
        "rolled back run {} (started {}): {} target(s) unwound{}",
        rec.run_id,
        crate::text::utc(rec.started),
        report.rolled_back.len(),
        if incomplete { ", SOME INCOMPLETE" } else { "" }
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(outcome: Outcome, class: Option<u8>) -> TargetReport {
        TargetReport {
            error_class: class,
            ..TargetReport::new("a", outcome)
        }
    }

    fn report(targets: Vec<TargetReport>) -> RunReport {
        RunReport {
            env: "t".into(),
            mode: Mode::Run,
            run_id: None,
            state_dir: PathBuf::new(),
            preflight: None,
            recovered: Vec::new(),
            steps: vec![StepReport {
                step: StepId::Agents,
                targets,
                millis: 0,
            }],
            rolled_back: Vec::new(),
            repaired: Vec::new(),
            not_run: Vec::new(),
            exit_code: 0,
            summary: String::new(),
            attention: Vec::new(),
            security_fixes: Vec::new(),
        }
    }

    #[test]
    fn what_needs_attention_is_listed_before_the_summary() {
        let mut r = report(vec![target(Outcome::Unchanged, None)]);
        r.summary = "0 target(s) committed".into();
        r.attention = vec!["restarts restarts: restart of Vault: restart it yourself".into()];
        let text = r.to_string();
        let at = text.find("Needs your attention:").expect(&text);
        let item = text
            .find("  ! restarts restarts: restart of Vault")
            .expect(&text);
        let summary = text.find("0 target(s) committed").expect(&text);
        assert!(at < item && item < summary, "{text}");
        r.attention.clear();
        assert!(!r.to_string().contains("attention"));
    }

    #[test]
    fn exit_codes_tell_what_happened() {
        use Outcome::*;
        let cases = [
            (vec![target(Committed, None)], false, Exit::Ok),
            (
                vec![target(FailedNothingWritten, Some(3))],
                false,
                Exit::Config,
            ),
            (
                vec![target(FailedNothingWritten, Some(4))],
                false,
                Exit::Vault,
            ),
            // Something was committed: "nothing changed" would be a lie.
            (
                vec![
                    target(Committed, None),
                    target(FailedNothingWritten, Some(3)),
                ],
                false,
                Exit::GateFailed,
            ),
            (vec![target(RolledBack, Some(5))], false, Exit::GateFailed),
            (
                vec![
                    target(RolledBack, Some(5)),
                    target(RollbackIncomplete, Some(5)),
                ],
                false,
                Exit::RollbackIncomplete,
            ),
            (vec![target(Committed, None)], true, Exit::ResumeNeeded),
        ];
        for (targets, interrupted, want) in cases {
            let r = report(targets);
            let (exit, summary) = judge(&r, interrupted);
            assert_eq!(exit, want, "{summary}");
        }
    }
}
