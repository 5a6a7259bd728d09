//! The human rendering of a [`RunReport`]. JSON is the same structure serialised, so the
//! two never disagree about what happened.
//!
//! Human output carries text from outside (an app's post-hook status and files, Vault's
//! errors, config strings): every report goes through [`crate::text::escaped`], so none of
//! it can drive the operator's terminal (clear the screen, fake a line, write the
//! clipboard).

use std::fmt;

use crate::engine::{Outcome, StepReport, TargetReport};
use crate::rotation::{Mode, RunReport};

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(
                f,
                "rotate {} ({}){}",
                match self.mode {
                    Mode::Plan => "plan",
                    Mode::Run => "run",
                    Mode::Resume => "run --resume",
                    Mode::Rollback => "rollback",
                },
                self.env,
                self.run_id
                    .as_deref()
                    .map(|r| format!("  run {r}"))
                    .unwrap_or_default()
            )?;
            for r in &self.repaired {
                writeln!(f, "\nRepaired before connecting: {r}")?;
            }
            if let Some(p) = &self.preflight {
                write!(f, "\n{p}")?;
            }
            for s in &self.recovered {
                writeln!(f, "\nRecovered from the interrupted run:")?;
                write!(f, "{s}")?;
            }
            for s in &self.steps {
                write!(f, "\n{s}")?;
            }
            if !self.rolled_back.is_empty() {
                writeln!(f, "\nRolled back:")?;
                for t in &self.rolled_back {
                    write!(f, "{t}")?;
                }
            }
            if !self.security_fixes.is_empty() {
                writeln!(f, "\nSecurity fixes (kept whatever else happened):")?;
                for x in &self.security_fixes {
                    writeln!(f, "  - {x}")?;
                }
            }
            if !self.attention.is_empty() {
                writeln!(f, "\nNeeds your attention:")?;
                for a in &self.attention {
                    writeln!(f, "  ! {a}")?;
                }
            }
            writeln!(f, "\n{} (exit {})", self.summary, self.exit_code)
        })
    }
}

impl RunReport {
    /// `--quiet`: keeps only what changed or failed (targets neither unchanged nor
    /// skipped, a failed preflight); whether anything is left worth printing (always when
    /// the run did not end well).
    pub fn retain_notable(&mut self) -> bool {
        let notable = |t: &TargetReport| {
            t.error.is_some() || !matches!(t.outcome, Outcome::Unchanged | Outcome::Skipped)
        };
        for s in self.steps.iter_mut().chain(self.recovered.iter_mut()) {
            s.targets.retain(notable);
        }
        self.steps.retain(|s| !s.targets.is_empty());
        self.recovered.retain(|s| !s.targets.is_empty());
        if self.preflight.as_ref().is_some_and(|p| p.ready()) {
            self.preflight = None;
        }
        self.exit() != crate::exit::Exit::Ok
            || !self.steps.is_empty()
            || !self.recovered.is_empty()
            || !self.rolled_back.is_empty()
            || !self.repaired.is_empty()
            || !self.attention.is_empty()
            || !self.security_fixes.is_empty()
    }
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} — {} ms", self.step, self.millis)?;
        for t in &self.targets {
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TargetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Planned => "planned",
            Outcome::Unchanged => "unchanged",
            Outcome::Committed => "committed (gate passed)",
            Outcome::FailedNothingWritten => "FAILED, nothing written",
            Outcome::RolledBack => "FAILED, rolled back",
            Outcome::RollbackIncomplete => "FAILED, ROLLBACK INCOMPLETE",
            Outcome::NotStarted => "not started (interrupted)",
            Outcome::Skipped => "skipped",
            Outcome::AwaitingResume => "WAITING: Vault sealed; unseal, then run --resume",
            Outcome::Undone => "rolled back",
        };
        writeln!(f, "  {}  [{outcome}]", self.app)?;
        for c in &self.changes {
            writeln!(f, "    {c}")?;
        }
        for line in &self.summary {
            writeln!(f, "    {line}")?;
        }
        if let Some(l) = &self.live {
            writeln!(f, "    {l}")?;
        }
        if let Some(p) = &self.pending {
            writeln!(f, "    pending: {p}")?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "    error: {e}")?;
        }
        if let Some(r) = &self.rollback {
            for u in &r.undone {
                writeln!(f, "    undone: {u}")?;
            }
            for l in &r.left {
                writeln!(f, "    LEFT (fix by hand): {l}")?;
            }
        }
        Ok(())
    }
}
