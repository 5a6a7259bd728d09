//! Step 6: restarts. The proxy stack first (in the configured order), then the Vault unit
//! or container when needed or configured (`[restarts] vault_when`): `when-needed` (the
//! default) restarts it when the running listener has not loaded `[listener]
//! client_ca_file` — a handshake shows the issuers it accepts client certificates from,
//! and SIGHUP never reloads that file — `always` on every run that restarts.
//!
//! **Lockout guard**: a restart loads the file as it is now, so before restarting Vault
//! the admin certificate and every app's agent certificate must verify against it; one
//! that does not stops the step before anything is restarted, naming it.
//!
//! A restart cannot be undone, so nothing is recorded for undo; what is recorded is that
//! it happened. Gate: Vault is back (the healthcheck through the restart window) and, with
//! `client_ca_file`, its listener accepts exactly the issuers of that file. A Vault that
//! comes back **sealed** is reported with what to do (this tool never handles unseal keys)
//! and the step stays applied: `rotate run --resume` after unsealing re-gates it and
//! continues the run.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::change::{Change, ChangeKind};
use crate::config::{AppConfig, Config, ListenerNode, RestartsSection, VaultWhen};
use crate::deps::NodeGate;
use crate::engine::context::Deps;
use crate::engine::{Step, Target, TargetPlan, Tx};
use crate::error::StepError;
use crate::host::{admin_files, owner_of};
use crate::served::{ClientCaDrift, HealthProof, client_ca_drift, look};
use crate::state::journal::StepId;
use crate::state::undo::UndoAction;
use crate::steps::health::HealthStep;
use crate::topology::rel;

/// Step 6.
pub struct RestartsStep<'a> {
    cfg: &'a Config,
    r: &'a RestartsSection,
    deps: Deps<'a>,
    targets: Vec<RestartTarget>,
}

/// What step 6 restarts: the proxy stack (and a single Vault server), then each node of
/// a cluster, one at a time.
#[derive(Debug, Clone)]
pub enum RestartTarget {
    /// `[restarts] proxy`, and `[restarts] vault` for a single server.
    Stack,
    /// One node of a cluster, by its own `restart`.
    Node(Box<ListenerNode>),
}

impl Target for RestartTarget {
    fn name(&self) -> &str {
        match self {
            RestartTarget::Stack => "restarts",
            RestartTarget::Node(n) => &n.name,
        }
    }
}

/// What step 6 will restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartsPlan {
    /// Each restart, in order (`podman-restart:proxyprod`, ...), Vault's last.
    pub restarts: Vec<String>,
    /// Vault is among them, and why.
    pub vault_because: Option<String>,
}

/// What was restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartsApplied {
    /// Each restart, in order, with what it reported.
    pub restarted: Vec<String>,
    /// Vault was restarted.
    pub vault: bool,
}

/// What a passed step 6 proved.
#[derive(Debug, Clone, Serialize)]
pub struct RestartsProof {
    /// Vault is back and healthy (the stack; a node: the cluster through it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthProof>,
    /// A restarted node: what it serves, unsealed, and raft healthy again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The listener accepts exactly the issuers of `[listener] client_ca_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cas: Option<ClientCaDrift>,
}

impl<'a> RestartsStep<'a> {
    /// Step 6, when `[restarts]` is configured.
    pub fn new(cfg: &'a Config, deps: Deps<'a>) -> Option<Self> {
        let mut targets = vec![RestartTarget::Stack];
        if cfg.is_cluster() {
            targets.extend(
                cfg.listener
                    .iter()
                    .flat_map(|l| l.servers())
                    .map(|n| RestartTarget::Node(Box::new(n))),
            );
        }
        Some(RestartsStep {
            cfg,
            r: cfg.restarts.as_ref()?,
            deps,
            targets,
        })
    }

    fn client_ca_file(&self) -> Option<&'a Path> {
        self.cfg.listener.as_ref()?.client_ca_file.as_deref()
    }

    /// How the running listener's client CAs differ from `[listener] client_ca_file`
    /// (`None` when that is not set), seen through the admin identity at `addr` (a
    /// node's own; `None`: `[vault] addr`).
    async fn client_ca_drift(
        &self,
        addr: Option<&str>,
    ) -> Result<Option<ClientCaDrift>, StepError> {
        let Some(file) = self.client_ca_file() else {
            return Ok(None);
        };
        let (cert, key, ca) = admin_files(self.cfg, "step 6 reads the listener's client CAs")?;
        let gate = NodeGate::new(self.deps.vault.gate, addr)
            .map_err(|e| StepError::vault("reach the node", e))?;
        let served = look(gate.get(), Some((cert, key)), ca, Duration::from_secs(5))
            .await
            .map_err(|reason| StepError::Invalid {
                what: "the listener's client CAs".into(),
                reason,
            })?;
        client_ca_drift(&served, self.cfg, file)
            .map(Some)
            .map_err(|reason| StepError::Invalid {
                what: format!("[listener] client_ca_file {}", file.display()),
                reason,
            })
    }

    /// The lockout guard: every client certificate the operator, the agents and the proxy
    /// log in with verifies against `client_ca_file` as it is now (a restart loads it).
    fn guard(&self, file: &Path) -> Result<(), StepError> {
        let what = || {
            format!(
                "restart of Vault with [listener] client_ca_file {}",
                file.display()
            )
        };
        let bundle = crate::host::read_root_file(file, crate::host::vault_owner(self.cfg)?)?
            .ok_or_else(|| StepError::Invalid {
                what: what(),
                reason: "the file is missing".into(),
            })?;
        let bundle = String::from_utf8_lossy(&bundle).into_owned();
        let now = (self.deps.clock)();
        let (cert, _, _) = admin_files(self.cfg, "step 6 checks the admin certificate")?;
        let mut checks = vec![(
            cert.display().to_string(),
            std::fs::read_to_string(cert).map_err(|e| StepError::Invalid {
                what: format!("admin certificate {}", cert.display()),
                reason: e.to_string(),
            })?,
        )];
        let mut in_home =
            |home: &Path, owner: pki_ops::Owner, rel: &Path| -> Result<(), StepError> {
                if let Some(b) = pki_ops::Tree::open(home, Some(owner))?.read(rel)? {
                    checks.push((
                        home.join(rel).display().to_string(),
                        String::from_utf8_lossy(&b).into_owned(),
                    ));
                }
                Ok(())
            };
        for app in &self.cfg.apps {
            in_home(&app.home, owner_of(app)?, &rel::agent_cert())?;
        }
        if let Some(p) = &self.cfg.proxy
            && let (Some(home), Some(id)) = (&p.home, p.identity(&self.cfg.agents.domain))
        {
            let owner = crate::host::owner_of_user(&format!("[proxy] {}", p.name), p.user(), None)?;
            in_home(home, owner, &id.cert)?;
        }
        for (label, pem) in &checks {
            pki_ops::verify_chain_labeled(pem, label, "", &bundle, &file.display().to_string(), now)
                .map_err(|e| StepError::Invalid {
                    what: what(),
                    reason: format!(
                        "lockout guard: after a restart the listener would reject {label} ({e}). Nothing was restarted. Add its issuer's chain to the file, or rotate that certificate first (steps 1, 3, 5), then run again"
                    ),
                })?;
        }
        Ok(())
    }
}

impl RestartsStep<'_> {
    /// The proxy stack, and a single server's Vault when it must load its client CAs.
    async fn plan_stack(&self) -> Result<TargetPlan<RestartsPlan>, StepError> {
        let mut restarts = self.r.proxy.clone();
        let mut changes: Vec<Change> = restarts
            .iter()
            .map(|r| Change::new(ChangeKind::Update, format!("restart ({r})")))
            .collect();
        // What the listener has loaded. Only a restart that would happen needs it for
        // sure; otherwise (vault_when = "never", no [restarts] vault) it is reported.
        let decides = self.r.vault.is_some() && self.r.vault_when == VaultWhen::WhenNeeded;
        let drift = match self.client_ca_drift(None).await {
            Ok(d) => d,
            Err(e) if decides => return Err(e),
            Err(e) => {
                changes.push(
                    Change::new(ChangeKind::Kept, "client CAs of the listener")
                        .note(format!("not known: {e}")),
                );
                None
            }
        };
        let stale = drift.as_ref().filter(|d| !d.is_empty());
        let vault_because = match (self.r.vault_when, stale) {
            (VaultWhen::Always, _) => Some("vault_when = \"always\"".to_owned()),
            (VaultWhen::WhenNeeded, Some(d)) => Some(d.to_string()),
            _ => None,
        };
        match (&self.r.vault, &vault_because) {
            (Some(spec), Some(why)) => {
                if let Some(file) = self.client_ca_file() {
                    self.guard(file)?;
                }
                restarts.push(spec.clone());
                changes.push(Change::new(ChangeKind::Update, format!("restart ({spec})")).note(why));
            }
            (None, Some(why)) => changes.push(
                Change::new(ChangeKind::Kept, "restart of Vault").needs_attention().note(format!(
                    "{why}; [restarts] vault is not set, so it is not restarted: restart it yourself after checking the file, then `rotate verify`"
                )),
            ),
            (_, None) => match (stale, self.r.vault_when) {
                (Some(d), _) => changes.push(Change::new(ChangeKind::Kept, "restart of Vault").needs_attention().note(
                    format!("{d}; vault_when = \"never\": restart it yourself after checking the file"),
                )),
                (None, VaultWhen::WhenNeeded) if self.r.vault.is_some() && self.client_ca_file().is_none() => {
                    changes.push(Change::new(ChangeKind::Unchanged, "restart of Vault").note(
                        "not needed as far as step 6 can tell: set [listener] client_ca_file so it can see whether the listener loaded its client CAs",
                    ));
                }
                _ => {}
            },
        }
        Ok(TargetPlan {
            changes,
            data: RestartsPlan {
                vault_because: vault_because.filter(|_| self.r.vault.is_some()),
                restarts,
            },
        })
    }

    /// Vault back and healthy; a restarted single server has loaded its client CAs.
    async fn gate_stack(&self, a: &RestartsApplied) -> Result<RestartsProof, StepError> {
        let health = HealthStep::new(self.cfg, self.deps).check().await?;
        let client_cas = match self.client_ca_file() {
            Some(file) if a.vault => {
                let d = client_ca_drift(&health.listener, self.cfg, file).map_err(|reason| {
                    StepError::Gate {
                        step: "restarts",
                        app: "vault".into(),
                        reason,
                    }
                })?;
                if !d.is_empty() {
                    return Err(StepError::Gate {
                        step: "restarts",
                        app: "vault".into(),
                        reason: format!(
                            "after the restart {d}: did the restart reach this server?"
                        ),
                    });
                }
                Some(d)
            }
            _ => None,
        };
        Ok(RestartsProof {
            health: Some(health),
            node: None,
            client_cas,
        })
    }

    /// One node: restarted when its listener has not loaded the client CA file (or
    /// always), by its own `restart`.
    async fn plan_node(&self, node: &ListenerNode) -> Result<TargetPlan<RestartsPlan>, StepError> {
        let decides = self.r.vault_when == VaultWhen::WhenNeeded;
        let drift = match self.client_ca_drift(node.addr.as_deref()).await {
            Ok(d) => d,
            Err(e) if decides && node.restart.is_some() => return Err(e),
            Err(_) => None,
        };
        let stale = drift.as_ref().filter(|d| !d.is_empty());
        let because = match (self.r.vault_when, stale) {
            (VaultWhen::Always, _) => Some("vault_when = \"always\"".to_owned()),
            (VaultWhen::WhenNeeded, Some(d)) => Some(d.to_string()),
            _ => None,
        };
        let mut changes = Vec::new();
        let mut restarts = Vec::new();
        match (&node.restart, &because) {
            (Some(spec), Some(why)) => {
                if let Some(file) = self.client_ca_file() {
                    self.guard(file)?;
                }
                restarts.push(spec.clone());
                changes.push(
                    Change::new(ChangeKind::Update, format!("restart {} ({spec})", node.name))
                        .note(format!("{why}; back, unsealed and rejoined before the next node")),
                );
            }
            (None, Some(why)) => changes.push(
                Change::new(ChangeKind::Kept, format!("restart of {}", node.name))
                    .needs_attention()
                    .note(format!(
                        "{why}; its restart is not set ([[listener.nodes]] restart): restart it yourself, one node at a time, then `rotate verify`"
                    )),
            ),
            (_, None) => changes.push(Change::new(
                ChangeKind::Unchanged,
                format!("restart of {}", node.name),
            )),
        }
        Ok(TargetPlan {
            changes,
            data: RestartsPlan {
                vault_because: because.filter(|_| node.restart.is_some()),
                restarts,
            },
        })
    }

    /// A restarted node is back at its own address, unsealed (else kept for `--resume`:
    /// this tool never holds unseal keys), raft healthy with it, and has loaded its
    /// client CAs; waits up to `[health] window`.
    async fn gate_node(
        &self,
        node: &ListenerNode,
        a: &RestartsApplied,
    ) -> Result<RestartsProof, StepError> {
        if !a.vault {
            return Ok(RestartsProof {
                health: None,
                node: None,
                client_cas: None,
            });
        }
        let (cert, key, ca) = admin_files(self.cfg, "step 6 proves the restarted node")?;
        let gate = NodeGate::new(self.deps.vault.gate, node.addr.as_deref())
            .map_err(|e| StepError::vault("reach the node", e))?;
        let until = tokio::time::Instant::now() + self.cfg.duration(&self.cfg.health.window);
        let mut pause = crate::pause::Pause::new();
        let served = loop {
            let seen = look(gate.get(), Some((cert, key)), ca, Duration::from_secs(5)).await;
            match seen {
                Ok(s) if !s.sealed && s.seal_status == Some(200) => break s,
                Ok(s) if s.sealed && tokio::time::Instant::now() >= until => {
                    return Err(StepError::Sealed {
                        reason: format!(
                            "{} came back sealed after its restart: unseal it, then `rotate run --resume` (the next node is restarted only after)",
                            node.name
                        ),
                    });
                }
                other if tokio::time::Instant::now() >= until => {
                    return Err(StepError::VaultGone {
                        reason: format!(
                            "{} is not back after its restart within {} ({}): once it is, `rotate run --resume`",
                            node.name,
                            self.cfg.health.window,
                            other.err().unwrap_or_else(|| "not answering".into())
                        ),
                    });
                }
                _ => tokio::time::sleep(pause.next()).await,
            }
        };
        // Rejoined: raft healthy again, as autopilot sees it.
        loop {
            match self.deps.vault.sys.raft_autopilot_state().await {
                Ok(Some(s)) if s.healthy => break,
                Ok(None) => break,
                _ if tokio::time::Instant::now() >= until => {
                    return Err(StepError::Gate {
                        step: "restarts",
                        app: node.name.clone(),
                        reason: format!(
                            "{} is back, but raft is not healthy within {}: check `bao operator raft autopilot state`",
                            node.name, self.cfg.health.window
                        ),
                    });
                }
                _ => tokio::time::sleep(pause.next()).await,
            }
        }
        let client_cas = match self.client_ca_file() {
            Some(file) => {
                let d =
                    client_ca_drift(&served, self.cfg, file).map_err(|reason| StepError::Gate {
                        step: "restarts",
                        app: node.name.clone(),
                        reason,
                    })?;
                if !d.is_empty() {
                    return Err(StepError::Gate {
                        step: "restarts",
                        app: node.name.clone(),
                        reason: format!("after the restart {d}: did the restart reach this node?"),
                    });
                }
                Some(d)
            }
            None => None,
        };
        Ok(RestartsProof {
            health: None,
            node: Some(format!(
                "{} serves {}, unsealed, raft healthy",
                node.name, served.serial_hex
            )),
            client_cas,
        })
    }
}

#[async_trait]
impl Step for RestartsStep<'_> {
    type Target = RestartTarget;
    type Plan = RestartsPlan;
    type Applied = RestartsApplied;
    type Proof = RestartsProof;

    fn id(&self) -> StepId {
        StepId::Restarts
    }

    /// The stack first, then each node of a cluster, one at a time (the step is global:
    /// the first failure stops the rest).
    fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t RestartTarget> {
        self.targets.iter().collect()
    }

    fn global(&self) -> bool {
        true
    }

    async fn plan(&self, t: &RestartTarget) -> Result<TargetPlan<RestartsPlan>, StepError> {
        match t {
            RestartTarget::Stack => self.plan_stack().await,
            RestartTarget::Node(n) => self.plan_node(n).await,
        }
    }

    async fn apply(
        &self,
        _t: &RestartTarget,
        plan: TargetPlan<RestartsPlan>,
        tx: &Tx<'_>,
    ) -> Result<RestartsApplied, StepError> {
        let timeout = self.cfg.duration(&self.cfg.leaf.command_timeout);
        let mut restarted = Vec::new();
        for spec in &plan.data.restarts {
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
            vault: plan.data.vault_because.is_some(),
        })
    }

    async fn gate(
        &self,
        t: &RestartTarget,
        a: &RestartsApplied,
    ) -> Result<RestartsProof, StepError> {
        match t {
            RestartTarget::Stack => self.gate_stack(a).await,
            RestartTarget::Node(n) => self.gate_node(n, a).await,
        }
    }
}

/// Step 6 in the registry.
pub(crate) struct Def;

#[async_trait]
impl crate::steps::def::StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Restarts
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        _chain: &str,
        _request: &crate::state::journal::RunRequest,
    ) -> Box<dyn crate::engine::DynStep + 'a> {
        crate::steps::def::absent_unless(RestartsStep::new(cfg, deps), StepId::Restarts)
    }
}
