//! Step 6: restarts. The proxy stack first (in the configured order), then the Vault unit
//! or container when configured (`[restarts] vault_when = "always"`: e.g. its
//! `tls_client_ca_file` changed, which SIGHUP never reloads). A restart cannot be undone,
//! so nothing is recorded for undo; what is recorded is that it happened. Gate: Vault is
//! back — the healthcheck through the restart window. A Vault that comes back **sealed**
//! is reported with what to do (this tool never handles unseal keys) and the step stays
//! applied: `rotate run --resume` after unsealing re-gates it and continues the run.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Config, RestartsSection};
use crate::engine::change::{Change, ChangeKind};
use crate::engine::journal::StepId;
use crate::engine::undo::UndoAction;
use crate::engine::{Singleton, Step, TargetPlan, Tx};
use crate::rotation::Deps;
use crate::served::HealthProof;
use crate::steps::StepError;
use crate::steps::health::HealthStep;

/// Step 6.
pub struct RestartsStep<'a> {
    cfg: &'a Config,
    r: &'a RestartsSection,
    deps: Deps<'a>,
}

/// What was restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartsApplied {
    /// Each restart, in order, with what it reported.
    pub restarted: Vec<String>,
    /// Vault was restarted.
    pub vault: bool,
}

impl<'a> RestartsStep<'a> {
    /// Step 6, when `[restarts]` is configured.
    pub fn new(cfg: &'a Config, deps: Deps<'a>) -> Option<Self> {
        Some(RestartsStep {
            cfg,
            r: cfg.restarts.as_ref()?,
            deps,
        })
    }

    fn plan_list(&self) -> Vec<String> {
        let mut v = self.r.proxy.clone();
        if self.r.vault_when == "always" {
            v.extend(self.r.vault.clone());
        }
        v
    }
}

#[async_trait]
impl Step for RestartsStep<'_> {
    type Target = Singleton;
    type Plan = ();
    type Applied = RestartsApplied;
    type Proof = HealthProof;

    fn id(&self) -> StepId {
        StepId::Restarts
    }

    async fn plan(&self, _t: &Singleton) -> Result<TargetPlan<()>, StepError> {
        let changes = self
            .plan_list()
            .into_iter()
            .map(|r| Change::new(ChangeKind::Update, format!("restart ({r})")))
            .collect();
        Ok(TargetPlan { changes, data: () })
    }

    async fn apply(
        &self,
        _t: &Singleton,
        _plan: TargetPlan<()>,
        tx: &Tx<'_>,
    ) -> Result<RestartsApplied, StepError> {
        let timeout = self.cfg.duration(&self.cfg.leaf.command_timeout);
        let mut restarted = Vec::new();
        for spec in self.plan_list() {
            let r: hooks::Reloader = spec.parse()?;
            // Journaled first, so a failure after it never reads "nothing written".
            tx.record(UndoAction::Irreversible {
                what: format!("restart ({spec})"),
            })?;
            let report = hooks::reload(self.deps.runner, &r, timeout).await?;
            restarted.push(format!("{spec}: {report:?}"));
        }
        Ok(RestartsApplied {
            restarted,
            vault: self.r.vault_when == "always" && self.r.vault.is_some(),
        })
    }

    async fn gate(&self, _t: &Singleton, _a: &RestartsApplied) -> Result<HealthProof, StepError> {
        HealthStep::new(self.cfg, self.deps).check().await
    }
}
