//! Step 5: the proxy's CA chain and trust material (`proxyprod`), refreshed after the
//! internal rotations so the edge trusts the chain that now signs Vault and the apps.
//!
//! Plan (reads only): the bundle to write is the PKI mount's chain plus every CA the
//! current bundle holds (never fewer); before anything is written it must verify what
//! the listener serves now and every app's `tls/<app>.fullchain.pem` (the certificate it
//! fails on is named). Apply: the bundle through the safe writer (inside the proxy's
//! home, no symlink followed, owned by the proxy user), then the reload
//! (`podman:proxyprod`); undo restores the file and reloads again. Gate: the bundle on
//! disk verifies the served listener chain and every app leaf.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use pki_ops::{FileSpec, MaterialSet, Owner, Tree};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ProxySection};
use crate::engine::change::{Change, ChangeKind};
use crate::engine::journal::StepId;
use crate::engine::undo::UndoAction;
use crate::engine::{Singleton, Step, TargetPlan, Tx};
use crate::rotation::Deps;
use crate::served::look;
use crate::steps::names::rel;
use crate::steps::{StepError, merged_bundle, owner_of_user};

/// Step 5.
pub struct ProxyStep<'a> {
    cfg: &'a Config,
    p: &'a ProxySection,
    home: PathBuf,
    bundle: PathBuf,
    deps: Deps<'a>,
    chain: String,
}

/// What the plan hands to apply.
pub struct ProxyPlan {
    owner: Owner,
    text: String,
    changed: bool,
}

/// What apply produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyApplied {
    /// The bundle written.
    pub bundle: PathBuf,
    /// Certificates in it.
    pub certificates: usize,
    /// Whether it changed (else nothing was written or reloaded).
    pub changed: bool,
    /// The reload, when one ran.
    pub reload: Option<String>,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct ProxyProof {
    /// What the bundle was proven to verify.
    pub verifies: Vec<String>,
}

impl<'a> ProxyStep<'a> {
    /// Step 5, when `[proxy]` has `home` and `ca_bundle`.
    pub fn new(cfg: &'a Config, deps: Deps<'a>, chain: String) -> Option<Self> {
        let p = cfg.proxy.as_ref()?;
        Some(ProxyStep {
            cfg,
            home: p.home.clone()?,
            bundle: p.ca_bundle.clone()?,
            p,
            deps,
            chain,
        })
    }

    /// What the bundle must verify: the listener's served chain, every app leaf present.
    async fn must_verify(&self) -> Result<Vec<(String, String)>, StepError> {
        let v = &self.cfg.vault;
        let (Some(cert), Some(key), Some(ca)) = (&v.client_cert, &v.client_key, &v.ca_cert) else {
            return Err(StepError::Invalid {
                what: "[vault] client_cert, client_key, ca_cert".into(),
                reason: "step 5 reads the listener's chain as the admin: set all three".into(),
            });
        };
        let served = look(
            self.deps.vault.gate,
            Some((cert, key)),
            ca,
            Duration::from_secs(10),
        )
        .await
        .map_err(|why| StepError::Gate {
            step: "proxy",
            app: self.p.name.clone(),
            reason: format!("cannot read the listener's chain: {why}"),
        })?;
        let mut out = vec![(
            format!(
                "the listener certificate {} ({})",
                served.serial_hex, served.cn
            ),
            served.chain_pem,
        )];
        for app in &self.cfg.apps {
            // An app whose home cannot be read safely is not silently left out.
            let tree = Tree::open(&app.home, Some(crate::steps::owner_of(app)?))?;
            let f = rel::fullchain(app);
            if let Some(pem) = tree.read(&f)? {
                out.push((
                    format!("the leaf {}", app.home.join(&f).display()),
                    String::from_utf8_lossy(&pem).into_owned(),
                ));
            }
        }
        Ok(out)
    }

    fn verify(&self, bundle: &str, what: &[(String, String)]) -> Result<Vec<String>, StepError> {
        let now = (self.deps.clock)();
        let label = self.home.join(&self.bundle).display().to_string();
        what.iter()
            .map(|(name, pem)| {
                pki_ops::verify_chain_labeled(pem, name, pem, bundle, &label, now)
                    .map(|()| name.clone())
                    .map_err(|e| StepError::Invalid {
                        what: format!("proxy CA bundle {label}"),
                        reason: format!("would not verify {name}: {e}"),
                    })
            })
            .collect()
    }
}

#[async_trait]
impl Step for ProxyStep<'_> {
    type Target = Singleton;
    type Plan = ProxyPlan;
    type Applied = ProxyApplied;
    type Proof = ProxyProof;

    fn id(&self) -> StepId {
        StepId::Proxy
    }

    async fn plan(&self, _t: &Singleton) -> Result<TargetPlan<ProxyPlan>, StepError> {
        let owner = owner_of_user(&format!("[proxy] {}", self.p.name), self.p.user(), None)?;
        let tree = Tree::open(&self.home, Some(owner))?;
        tree.check_dir(&rel::parent(&self.bundle))?;
        let current = tree.read(&self.bundle)?;
        let text = merged_bundle(&self.chain, current.as_ref().map(|b| b.as_slice()))?;
        // Before anything is written: the new bundle verifies what the proxy must trust.
        self.verify(&text, &self.must_verify().await?)?;
        let changed = current.as_ref().map(|c| c.as_slice()) != Some(text.as_bytes());
        let object = self.home.join(&self.bundle).display().to_string();
        let mut changes = vec![Change::new(
            match (&current, changed) {
                (None, _) => ChangeKind::Create,
                (Some(_), true) => ChangeKind::Update,
                (Some(_), false) => ChangeKind::Unchanged,
            },
            object,
        )];
        if changed && !self.p.reload.is_empty() {
            changes.push(Change::new(
                ChangeKind::Update,
                format!("reload ({})", self.p.reload),
            ));
        }
        Ok(TargetPlan {
            changes,
            data: ProxyPlan {
                owner,
                text,
                changed,
            },
        })
    }

    async fn apply(
        &self,
        _t: &Singleton,
        plan: TargetPlan<ProxyPlan>,
        tx: &Tx<'_>,
    ) -> Result<ProxyApplied, StepError> {
        let p = plan.data;
        let certificates = p.text.matches("-----BEGIN CERTIFICATE-----").count();
        let bundle = self.home.join(&self.bundle);
        if !p.changed {
            return Ok(ProxyApplied {
                bundle,
                certificates,
                changed: false,
                reload: None,
            });
        }
        let tree = Tree::open(&self.home, Some(p.owner))?;
        let staged = MaterialSet::new()
            .with(FileSpec::public(&self.bundle), p.text.into_bytes())
            .stage(&tree, &tx.run_id())?;
        for u in staged.undo_records() {
            tx.record(UndoAction::File {
                undo: u,
                owner: Some(p.owner),
            })?;
        }
        let reload = if self.p.reload.is_empty() {
            staged.commit()?;
            None
        } else {
            tx.record(UndoAction::Reload {
                reload: self.p.reload.clone(),
            })?;
            staged.commit()?;
            let r: hooks::Reloader = self.p.reload.parse()?;
            let report = hooks::reload(
                self.deps.runner,
                &r,
                self.cfg.duration(&self.cfg.leaf.command_timeout),
            )
            .await?;
            Some(format!("{report:?}"))
        };
        Ok(ProxyApplied {
            bundle,
            certificates,
            changed: true,
            reload,
        })
    }

    async fn gate(&self, _t: &Singleton, _a: &ProxyApplied) -> Result<ProxyProof, StepError> {
        let owner = owner_of_user(&format!("[proxy] {}", self.p.name), self.p.user(), None)?;
        let tree = Tree::open(&self.home, Some(owner))?;
        let on_disk = tree.read(&self.bundle)?.ok_or_else(|| StepError::Gate {
            step: "proxy",
            app: self.p.name.clone(),
            reason: format!("{} is missing", self.home.join(&self.bundle).display()),
        })?;
        let verifies = self
            .verify(
                &String::from_utf8_lossy(&on_disk),
                &self.must_verify().await?,
            )
            .map_err(|e| StepError::Gate {
                step: "proxy",
                app: self.p.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(ProxyProof { verifies })
    }
}
