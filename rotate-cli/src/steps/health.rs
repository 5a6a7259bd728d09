//! Step 7: the final healthcheck. Writes nothing: `plan` has no changes, `apply` does
//! nothing, the gate is the check ([`crate::served::healthcheck`]): consecutive
//! `sys/seal-status` answers over new mTLS connections with the SNI name, retried through
//! the restart window, each failure diagnosed with the next action.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::engine::{Singleton, Step, TargetPlan, Tx};
use crate::error::StepError;
use crate::served::{HealthProof, healthcheck};
use crate::state::journal::StepId;

/// Step 7.
pub struct HealthStep<'a> {
    cfg: &'a Config,
    deps: Deps<'a>,
}

/// Nothing is applied; journaled as such.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthApplied {}

impl<'a> HealthStep<'a> {
    /// Step 7.
    pub fn new(cfg: &'a Config, deps: Deps<'a>) -> Self {
        HealthStep { cfg, deps }
    }

    /// Run the healthcheck with the admin identity of `cfg`.
    pub async fn check(&self) -> Result<HealthProof, StepError> {
        let (cert, key, ca) = crate::host::admin_files(self.cfg, "the healthcheck checks Vault")?;
        healthcheck(
            self.deps.vault.gate,
            (cert, key, ca),
            self.cfg.health.consecutive,
            self.cfg.duration(&self.cfg.health.window),
        )
        .await
        .map_err(|f| {
            if f.sealed {
                StepError::Sealed { reason: f.reason }
            } else {
                StepError::Unhealthy { reason: f.reason }
            }
        })
    }
}

#[async_trait]
impl Step for HealthStep<'_> {
    type Target = Singleton;
    type Plan = ();
    type Applied = HealthApplied;
    type Proof = HealthProof;

    fn id(&self) -> StepId {
        StepId::Health
    }

    fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t Singleton> {
        static TARGET: Singleton = Singleton("vault");
        vec![&TARGET]
    }

    fn global(&self) -> bool {
        true
    }

    async fn plan(&self, _t: &Singleton) -> Result<TargetPlan<()>, StepError> {
        Ok(TargetPlan {
            changes: Vec::new(),
            data: (),
        })
    }

    async fn apply(
        &self,
        _t: &Singleton,
        _plan: TargetPlan<()>,
        _tx: &Tx<'_>,
    ) -> Result<HealthApplied, StepError> {
        Ok(HealthApplied {})
    }

    async fn gate(&self, _t: &Singleton, _a: &HealthApplied) -> Result<HealthProof, StepError> {
        self.check().await
    }
}

/// What `rotate health` reports: one document for human and JSON output.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// Environment.
    pub env: String,
    /// Where.
    pub addr: Option<String>,
    /// The TLS server name (SNI) verified.
    pub tls_server_name: Option<String>,
    /// Passed?
    pub healthy: bool,
    /// What passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<HealthProof>,
    /// Why it failed, with the next action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code.
    pub exit_code: u8,
    /// Milliseconds spent.
    pub millis: u64,
}

impl HealthReport {
    /// The report of one healthcheck.
    pub fn new(
        cfg: &Config,
        result: Result<HealthProof, StepError>,
        took: std::time::Duration,
    ) -> Self {
        let (proof, error, exit) = match result {
            Ok(p) => (Some(p), None, crate::exit::Exit::Ok),
            Err(e) => (None, Some(format!("{e:#}")), e.exit()),
        };
        HealthReport {
            env: cfg.env.clone(),
            addr: cfg.vault.addr.clone(),
            tls_server_name: cfg.vault.tls_server_name.clone(),
            healthy: proof.is_some(),
            proof,
            error,
            exit_code: exit.code(),
            millis: took.as_millis() as u64,
        }
    }

    /// The exit code: 0 healthy, 3 config, 4 unreachable or refused, 6 sealed.
    pub fn exit(&self) -> crate::exit::Exit {
        crate::exit::Exit::from_code(self.exit_code).unwrap_or(crate::exit::Exit::Failure)
    }
}

impl std::fmt::Display for HealthReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(
                f,
                "rotate health ({}): {} (SNI {})",
                self.env,
                self.addr.as_deref().unwrap_or("-"),
                self.tls_server_name.as_deref().unwrap_or("-")
            )?;
            match (&self.proof, &self.error) {
                (Some(p), _) => {
                    writeln!(
                        f,
                        "  healthy: {} consecutive sys/seal-status answers over new mTLS connections ({} attempts, {} ms); {}",
                        p.consecutive, p.attempts, self.millis, p.state
                    )?;
                    writeln!(
                        f,
                        "  listener serves {} (CN {}, not after {})",
                        p.listener.serial_hex, p.listener.cn, p.listener.not_after
                    )?;
                    for t in &p.transient_failures {
                        writeln!(f, "  (recovered from: {t})")?;
                    }
                }
                (None, Some(e)) => writeln!(f, "  UNHEALTHY: {e}")?,
                (None, None) => {}
            }
            writeln!(f, "(exit {})", self.exit_code)
        })
    }
}

/// Step 7 in the registry.
pub(crate) struct Def;

#[async_trait]
impl crate::steps::def::StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Health
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        _chain: &str,
        _request: &crate::state::journal::RunRequest,
    ) -> Box<dyn crate::engine::DynStep + 'a> {
        Box::new(HealthStep::new(cfg, deps))
    }
}
