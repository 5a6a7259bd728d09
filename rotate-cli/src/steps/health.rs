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
use crate::served::{ClusterHealth, HealthProof, NodeHealth, healthcheck};
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

    /// Run the healthcheck with the admin identity of `cfg`; for a cluster, then every
    /// node at its own address and raft's failure tolerance (0 with a node lost fails).
    pub async fn check(&self) -> Result<HealthProof, StepError> {
        let (cert, key, ca) = crate::host::admin_files(self.cfg, "the healthcheck checks Vault")?;
        let mut proof = healthcheck(
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
        })?;
        let servers: Vec<_> = self.cfg.listener.iter().flat_map(|l| l.servers()).collect();
        if servers.len() > 1 {
            let cluster = self.cluster(&servers, (cert, key, ca)).await;
            if cluster.failure_tolerance == Some(0) && !cluster.attention.is_empty() {
                return Err(StepError::Unhealthy {
                    reason: format!(
                        "raft failure tolerance is 0: losing one more node loses the quorum ({}); bring the node back (unseal it) before anything else",
                        cluster.attention.join("; ")
                    ),
                });
            }
            proof.cluster = Some(cluster);
        }
        Ok(proof)
    }

    /// Every node at its own address, and raft as autopilot sees it.
    async fn cluster(
        &self,
        servers: &[crate::config::ListenerNode],
        (cert, key, ca): (&std::path::Path, &std::path::Path, &std::path::Path),
    ) -> ClusterHealth {
        let mut out = ClusterHealth {
            nodes: Vec::new(),
            failure_tolerance: None,
            raft: Vec::new(),
            attention: Vec::new(),
        };
        let timeout = std::time::Duration::from_secs(5);
        for n in servers {
            let addr = n.addr.clone().unwrap_or_default();
            let seen = match crate::deps::NodeGate::new(self.deps.vault.gate, n.addr.as_deref()) {
                Ok(g) => crate::served::look(g.get(), Some((cert, key)), ca, timeout).await,
                Err(e) => Err(e.to_string()),
            };
            let node = match seen {
                Ok(s) => NodeHealth {
                    name: n.name.clone(),
                    addr,
                    serial: Some(s.serial_hex),
                    sealed: Some(s.sealed),
                    error: None,
                },
                Err(e) => NodeHealth {
                    name: n.name.clone(),
                    addr,
                    serial: None,
                    sealed: None,
                    error: Some(e),
                },
            };
            if let Some(e) = &node.error {
                out.attention
                    .push(format!("{} at {} is DOWN: {e}", node.name, node.addr));
            } else if node.sealed == Some(true) {
                out.attention.push(format!(
                    "{} at {} is SEALED: unseal it",
                    node.name, node.addr
                ));
            }
            out.nodes.push(node);
        }
        // What this check itself saw: voters answering unsealed, above the quorum.
        let up = out
            .nodes
            .iter()
            .filter(|n| n.serial.is_some() && n.sealed == Some(false))
            .count();
        let quorum = servers.len() / 2 + 1;
        out.failure_tolerance = Some(up.saturating_sub(quorum) as u32);
        match self.deps.vault.sys.raft_autopilot_state().await {
            Ok(Some(state)) => {
                // Autopilot notices a lost node only after its contact threshold: the
                // lower of the two.
                out.failure_tolerance = out
                    .failure_tolerance
                    .map(|t| t.min(state.failure_tolerance));
                for (id, s) in &state.servers {
                    out.raft.push(format!(
                        "{id}: {} {}, {}",
                        s.node_status,
                        s.status,
                        if s.healthy { "healthy" } else { "UNHEALTHY" }
                    ));
                    if !s.healthy {
                        out.attention
                            .push(format!("raft server {id} is unhealthy ({})", s.node_status));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => out
                .attention
                .push(format!("raft autopilot state unreadable: {e}")),
        }
        out
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

    fn summary(&self, _a: &HealthApplied, proof: Option<&HealthProof>) -> Vec<String> {
        proof
            .and_then(|p| p.cluster.as_ref())
            .map(cluster_lines)
            .unwrap_or_default()
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
                    for line in p.cluster.as_ref().map(cluster_lines).unwrap_or_default() {
                        writeln!(f, "  {line}")?;
                    }
                }
                (None, Some(e)) => writeln!(f, "  UNHEALTHY: {e}")?,
                (None, None) => {}
            }
            writeln!(f, "(exit {})", self.exit_code)
        })
    }
}

/// A cluster's health as report lines.
fn cluster_lines(c: &ClusterHealth) -> Vec<String> {
    let mut lines = vec![format!(
        "cluster: {} nodes, raft failure tolerance {}",
        c.nodes.len(),
        c.failure_tolerance
            .map_or("unknown".to_owned(), |t| t.to_string())
    )];
    for n in &c.nodes {
        lines.push(match (&n.serial, &n.error) {
            (Some(s), _) => format!(
                "  {} ({}): serves {s}{}",
                n.name,
                n.addr,
                if n.sealed == Some(true) {
                    ", SEALED"
                } else {
                    ""
                }
            ),
            (None, e) => format!(
                "  {} ({}): DOWN: {}",
                n.name,
                n.addr,
                e.as_deref().unwrap_or("-")
            ),
        });
    }
    lines.extend(c.raft.iter().map(|r| format!("  raft {r}")));
    lines.extend(c.attention.iter().map(|a| format!("ATTENTION: {a}")));
    lines
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
