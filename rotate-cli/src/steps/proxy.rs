//! Step 5: the proxy's CA chain and trust material (`proxyprod`), refreshed after the
//! internal rotations so the edge trusts the chain that now signs Vault and the apps.
//!
//! Plan (reads only): the bundle to write is the PKI mount's chain plus every CA the
//! current bundle holds (never fewer); before anything is written it must verify what
//! the listener serves now and every app's `tls/<app>.fullchain.pem` (the certificate it
//! fails on is named). With `[proxy] client_cert` + `client_key`, the proxy's client
//! identity (what it presents upstream, e.g. to Vault's mTLS listener) is issued too.
//! Apply: bundle, key and certificate staged together through the safe writer (inside
//! the proxy's home, no symlink followed, owned by the proxy user, the key 0600), then
//! the reload (`podman:proxyprod`); undo restores the files, reloads again and revokes
//! the certificate. Gate: the bundle on disk verifies the served listener chain and every
//! app leaf; the listener accepts the new client identity on a new handshake that trusts
//! only the bundle; and with `[proxy] probe`, Vault answers `sys/seal-status` *through*
//! the reloaded proxy.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use pki_ops::{
    CreatePolicy, FileSpec, IssuedMaterial, MaterialSet, Owner, RoleSpec, Tree, upsert_role,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vault_client::IssueRequest;
use zeroize::Zeroizing;

use crate::change::{Change, ChangeKind};
use crate::checks::{PreflightReport, VerifyReport};
use crate::config::{AppConfig, Config, KeyMode, ProxyIdentity, ProxySection};
use crate::deps::TlsIdentity;
use crate::engine::context::Deps;
use crate::engine::{DynStep, Singleton, Step, TargetPlan, Tx};
use crate::error::StepError;
use crate::exit::Exit;
use crate::host::{admin_files, owner_of, owner_of_user};
use crate::served::look;
use crate::state::journal::{RunRequest, StepId};
use crate::state::undo::UndoAction;
use crate::steps::common::{issue_mode, key_algorithm, merged_bundle, plan_role};
use crate::steps::def::{Ctx, Needs, Seen, StepDef, absent_unless};
use crate::topology::rel;

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
    /// The client identity's role: `Some(previous)` when it must be written.
    role: Option<Option<Map<String, Value>>>,
}

/// What apply produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyApplied {
    /// The bundle written.
    pub bundle: PathBuf,
    /// Certificates in it.
    pub certificates: usize,
    /// Whether anything changed (else nothing was written or reloaded).
    pub changed: bool,
    /// The reload, when one ran.
    pub reload: Option<String>,
    /// The client certificate issued (serial hex), with `[proxy] client_cert`.
    #[serde(default)]
    pub client_serial: Option<String>,
    /// Its not-after.
    #[serde(default)]
    pub client_not_after: Option<String>,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct ProxyProof {
    /// What the bundle was proven to verify.
    pub verifies: Vec<String>,
    /// The listener accepted the proxy's client certificate (its serial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_accepted: Option<String>,
    /// What Vault answered through the proxy (`[proxy] probe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
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
        let (cert, key, ca) = admin_files(self.cfg, "step 5 reads the listener's chain")?;
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
            let tree = Tree::open(&app.home, Some(crate::host::owner_of(app)?))?;
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

    fn identity(&self) -> Option<ProxyIdentity> {
        self.p.identity(&self.cfg.agents.domain)
    }

    fn role_spec(&self, id: &ProxyIdentity) -> RoleSpec {
        RoleSpec::agent_client(&id.cn, &self.p.client_ttl, &self.p.client_ttl)
            .with_key(key_algorithm(KeyMode::default()))
    }

    fn owner(&self) -> Result<Owner, StepError> {
        owner_of_user(&format!("[proxy] {}", self.p.name), self.p.user(), None)
    }

    fn gate_err(&self, reason: impl Into<String>) -> StepError {
        StepError::Gate {
            step: "proxy",
            app: self.p.name.clone(),
            reason: reason.into(),
        }
    }

    /// Ask `sys/seal-status` through the proxy until Vault answers twice in a row.
    async fn probe(&self, addr: &str) -> Result<String, StepError> {
        let ca = match (&self.p.probe_ca, &self.cfg.vault.ca_cert) {
            (Some(ca), _) | (None, Some(ca)) => ca,
            (None, None) => return Err(self.gate_err("no [proxy] probe_ca or [vault] ca_cert")),
        };
        let until = tokio::time::Instant::now() + self.cfg.duration(&self.p.probe_timeout);
        let (mut in_a_row, mut tries) = (0u32, 0u32);
        let mut pause = crate::pause::Pause::new();
        loop {
            tries += 1;
            // A new client (and connection) each time: a reloading proxy may serve a
            // kept-alive connection from a worker that still runs the old files.
            let answer =
                match self
                    .deps
                    .vault
                    .gate
                    .through_proxy(addr, self.p.probe_server_name.clone(), ca)
                {
                    Ok(client) => client.seal_status().await,
                    Err(e) => Err(e),
                };
            match answer {
                Ok(s) => {
                    in_a_row += 1;
                    if in_a_row >= 2 {
                        return Ok(format!(
                            "Vault {} answered sys/seal-status through {addr} twice, half a second apart, on new connections (sealed: {}, {tries} requests)",
                            s.version, s.sealed
                        ));
                    }
                    // Spaced, so the second answer comes from the proxy as reloaded.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => {
                    in_a_row = 0;
                    if tokio::time::Instant::now() >= until {
                        return Err(self.gate_err(format!(
                            "Vault did not answer through the proxy at {addr} within {}: {e}; {} (a 502 from the proxy means it could not verify Vault with its bundle, or Vault refused its client certificate: see the proxy's error log)",
                            self.p.probe_timeout,
                            e.next_action()
                        )));
                    }
                }
            }
            tokio::time::sleep(pause.next()).await;
        }
    }

    fn verify(&self, bundle: &str, what: &[(String, String)]) -> Result<Vec<String>, StepError> {
        let now = (self.deps.clock)();
        let label = self.home.join(&self.bundle).display().to_string();
        what.iter()
            .map(|(name, pem)| {
                pki_ops::verify_chain_as(self.p.trust.model(), pem, name, pem, bundle, &label, now)
                    .map(|()| name.clone())
                    .map_err(|e| StepError::Invalid {
                        what: format!("proxy CA bundle {label}"),
                        reason: format!(
                            "would not verify {name}: {e}{}",
                            if self.p.trust == crate::config::ProxyTrust::Openssl {
                                " (trust = \"openssl\": the chain must end at a self-signed root in the bundle, as nginx checks; import the PKI mount's chain with its root, or set [proxy] trust = \"go\" for a proxy that accepts partial chains)"
                            } else {
                                ""
                            }
                        ),
                    })
            })
            .collect()
    }

    /// Writes the client identity's role, its previous state journaled first.
    async fn write_role(
        &self,
        id: &ProxyIdentity,
        previous: Option<Map<String, Value>>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let (v, mount) = (self.deps.vault, &self.cfg.pki.mount);
        tx.record(UndoAction::Role {
            mount: mount.clone(),
            name: id.role.clone(),
            previous,
        })?;
        upsert_role(
            v.pki,
            mount,
            &id.role,
            &self.role_spec(id),
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await?;
        Ok(())
    }

    /// Issues the proxy's client certificate (revoked on undo), checked against the chain.
    async fn issue_client_cert(
        &self,
        id: &ProxyIdentity,
        tx: &Tx<'_>,
    ) -> Result<IssuedMaterial, StepError> {
        let (v, mount) = (self.deps.vault, &self.cfg.pki.mount);
        let req = IssueRequest {
            common_name: id.cn.clone(),
            ttl: Some(self.p.client_ttl.clone()),
            ..Default::default()
        };
        crate::steps::common::issue_client(
            v,
            tx,
            mount,
            &id.role,
            &req,
            issue_mode(KeyMode::default()),
            &self.chain,
            self.deps.clock,
            Duration::from_secs(600),
        )
        .await
    }

    /// Stages `set`, journals each file's undo (and the reload's), replaces and reloads.
    async fn replace_and_reload(
        &self,
        owner: Owner,
        set: MaterialSet,
        tx: &Tx<'_>,
    ) -> Result<Option<String>, StepError> {
        // Everything staged (key 0600 from creation) before anything is replaced.
        let tree = Tree::open(&self.home, Some(owner))?;
        let staged = set.stage(&tree, &tx.run_id())?;
        for u in staged.undo_records() {
            tx.record(UndoAction::File {
                undo: u,
                owner: Some(owner),
            })?;
        }
        let reload = if self.p.reload.is_empty() {
            staged.commit()?;
            None
        } else {
            tx.record(UndoAction::Reload {
                reload: self.p.reload.clone(),
                setting: "proxy.reload".into(),
            })?;
            staged.commit()?;
            let r: hooks::Reloader = self.p.reload.parse()?;
            let report = hooks::reload(
                self.deps.runner,
                &r,
                self.cfg.duration(&self.cfg.leaf.command_timeout),
            )
            .await
            .map_err(|e| StepError::Gate {
                step: "proxy",
                app: "proxy".into(),
                reason: format!("[proxy] reload ({}) failed: {e}", self.p.reload),
            })?;
            Some(format!("{report:?}"))
        };
        Ok(reload)
    }

    /// Reads the installed client pair as the proxy would; it must match and hold the serial.
    fn installed_identity(
        &self,
        tree: &Tree,
        id: &ProxyIdentity,
        a: &ProxyApplied,
        bundle: Zeroizing<Vec<u8>>,
    ) -> Result<(TlsIdentity, String, pki_ops::CertInfo), StepError> {
        let read = |r: &PathBuf| -> Result<_, StepError> {
            let path = self.home.join(r);
            let c = tree
                .read(r)?
                .ok_or_else(|| self.gate_err(format!("{} is missing", path.display())))?;
            Ok((path, c))
        };
        let identity = TlsIdentity {
            cert: read(&id.cert)?,
            key: read(&id.key)?,
            ca: (a.bundle.clone(), bundle),
        };
        let cert_pem = String::from_utf8_lossy(&identity.cert.1).into_owned();
        let key_pem = std::str::from_utf8(&identity.key.1)
            .map_err(|_| self.gate_err(format!("{} is not PEM text", identity.key.0.display())))?;
        pki_ops::key_matches_cert(key_pem, &cert_pem).map_err(|e| self.gate_err(e.to_string()))?;
        let info =
            pki_ops::CertInfo::from_pem_labeled(&cert_pem, &identity.cert.0.display().to_string())?;
        if let Some(want) = &a.client_serial
            && !info.serial_hex.eq_ignore_ascii_case(want)
        {
            return Err(self.gate_err(format!(
                "{} holds serial {}, not the issued {want}",
                identity.cert.0.display(),
                info.serial_hex
            )));
        }
        Ok((identity, cert_pem, info))
    }

    /// Proves the listener accepts `identity` on a new handshake; what it accepted.
    async fn listener_accepts(
        &self,
        identity: &TlsIdentity,
        cert_pem: &str,
        info: &pki_ops::CertInfo,
    ) -> Result<String, StepError> {
        let h = self
            .deps
            .vault
            .gate
            .handshake_as(identity, Duration::from_secs(10))
            .await
            .map_err(|e| {
                self.gate_err(format!(
                    "the listener refused the proxy's new client certificate: {e}; {}",
                    e.next_action()
                ))
            })?;
        // A 200 proves the certificate was verified only if the listener asked for
        // one from the issuers of the proxy's chain.
        let chain = pki_ops::parse_bundle(cert_pem, "proxy client certificate")?;
        let names = h.acceptable_client_cas.clone().unwrap_or_default();
        if !chain
            .iter()
            .any(|c| names.contains(&c.issuer_der) || names.contains(&c.subject_der))
        {
            return Err(self.gate_err(format!(
                "the listener does not name the issuer of the proxy's certificate ({}) among the CAs it accepts client certificates from ({:?}): its answer would not prove it verified the certificate",
                info.issuer,
                names
                    .iter()
                    .map(|d| pki_ops::distinguished_name(d).unwrap_or_default())
                    .collect::<Vec<_>>()
            )));
        }
        match h.seal_status {
            Ok(200) => {}
            Ok(code) => {
                return Err(self.gate_err(format!(
                    "sys/seal-status with the proxy's client certificate answered HTTP {code}"
                )));
            }
            Err((kind, msg)) => {
                return Err(self.gate_err(format!(
                    "the listener refused the proxy's new client certificate: {kind}: {msg}; {}",
                    kind.next_action()
                )));
            }
        }
        Ok(format!(
            "serial {} ({}) accepted by the listener",
            info.serial_hex,
            info.cn()
        ))
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

    fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t Singleton> {
        static TARGET: Singleton = Singleton("proxy");
        vec![&TARGET]
    }

    fn global(&self) -> bool {
        true
    }

    fn changed(&self, applied: &ProxyApplied) -> bool {
        applied.changed
    }

    async fn not_due(&self, _t: &Singleton) -> Result<Option<String>, StepError> {
        // Without a client identity, the plan decides (an unchanged bundle writes nothing).
        let Some(id) = self.identity() else {
            return Ok(None);
        };
        let tree = Tree::open(&self.home, Some(self.owner()?))?;
        let current = tree.read(&self.bundle)?;
        let text = merged_bundle(&self.chain, current.as_ref().map(|b| b.as_slice()))?;
        if current.as_ref().map(|c| c.as_slice()) != Some(text.as_bytes()) {
            tracing::info!("due: the proxy's CA bundle lacks the current chain");
            return Ok(None);
        }
        crate::steps::common::pair_in_tree_not_due(
            self.cfg,
            (self.deps.clock)(),
            "proxy client certificate",
            &tree,
            (&id.cert, &id.key),
            &self.chain,
        )
    }

    async fn plan(&self, _t: &Singleton) -> Result<TargetPlan<ProxyPlan>, StepError> {
        let owner = self.owner()?;
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
        let mut role = None;
        if let Some(id) = self.identity() {
            for f in [&id.cert, &id.key] {
                tree.check_dir(&rel::parent(f))?;
            }
            let (change, previous) = plan_role(
                self.deps.vault,
                &self.cfg.pki.mount,
                &id.role,
                &self.role_spec(&id),
                true,
                "[proxy] client_role",
            )
            .await?;
            changes.push(change);
            role = previous;
            let old = tree.read(&id.cert)?.and_then(|pem| {
                pki_ops::CertInfo::from_pem_labeled(&String::from_utf8_lossy(&pem), "current").ok()
            });
            changes.push(crate::steps::common::new_cert_change(
                format!("proxy client certificate {} ({})", id.cn, self.p.client_ttl),
                old.as_ref(),
                true,
            ));
            for f in [&id.cert, &id.key] {
                let kind = match tree.stat(f)? {
                    Some(_) => ChangeKind::Update,
                    None => ChangeKind::Create,
                };
                changes.push(Change::new(kind, self.home.join(f).display().to_string()));
            }
        }
        if (changed || self.identity().is_some()) && !self.p.reload.is_empty() {
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
                role,
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
        let identity = self.identity();
        if !p.changed && identity.is_none() {
            return Ok(ProxyApplied {
                bundle,
                certificates,
                changed: false,
                reload: None,
                client_serial: None,
                client_not_after: None,
            });
        }
        let mut set = MaterialSet::new();
        if p.changed {
            set = set.with(FileSpec::public(&self.bundle), p.text.into_bytes());
        }
        let mut client = None;
        if let Some(id) = &identity {
            if let Some(previous) = p.role {
                self.write_role(id, previous, tx).await?;
            }
            let issued = self.issue_client_cert(id, tx).await?;
            set = set
                .with(
                    FileSpec::private_key(&id.key),
                    issued.key_pem.as_bytes().to_vec(),
                )
                .with(
                    FileSpec::public(&id.cert),
                    issued.fullchain_pem().into_bytes(),
                );
            client = Some(issued.info.clone());
        }
        let reload = self.replace_and_reload(p.owner, set, tx).await?;
        Ok(ProxyApplied {
            bundle,
            certificates,
            changed: true,
            reload,
            client_serial: client.as_ref().map(|c| c.serial_hex.clone()),
            client_not_after: client.map(|c| c.not_after_human),
        })
    }

    async fn gate(&self, _t: &Singleton, a: &ProxyApplied) -> Result<ProxyProof, StepError> {
        let tree = Tree::open(&self.home, Some(self.owner()?))?;
        let on_disk = tree
            .read(&self.bundle)?
            .ok_or_else(|| self.gate_err(format!("{} is missing", a.bundle.display())))?;
        let verifies = self
            .verify(
                &String::from_utf8_lossy(&on_disk),
                &self.must_verify().await?,
            )
            .map_err(|e| self.gate_err(e.to_string()))?;
        let mut client_accepted = None;
        if let Some(id) = self.identity() {
            // Read as the proxy would (no symlink followed), then presented to the
            // listener on a new handshake that trusts only the proxy's bundle.
            let (identity, cert_pem, info) = self.installed_identity(&tree, &id, a, on_disk)?;
            client_accepted = Some(self.listener_accepts(&identity, &cert_pem, &info).await?);
        }
        let probe = match &self.p.probe {
            Some(addr) => Some(self.probe(addr).await?),
            None => None,
        };
        Ok(ProxyProof {
            verifies,
            client_accepted,
            probe,
        })
    }
}

/// Step 5 in the list.
pub(crate) struct Def;

#[async_trait]
impl StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Proxy
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        _request: &RunRequest,
    ) -> Box<dyn DynStep + 'a> {
        absent_unless(ProxyStep::new(cfg, deps, chain.to_owned()), StepId::Proxy)
    }

    fn needs(&self, ctx: &Ctx<'_>, needs: &mut Needs) {
        let cfg = ctx.cfg;
        if let Some(id) = cfg
            .proxy
            .as_ref()
            .and_then(|p| p.identity(&cfg.agents.domain))
        {
            let m = &cfg.pki.mount;
            needs.cap(format!("{m}/roles/{}", id.role), "update");
            needs.cap(format!("{m}/sign/{}", id.role), "update");
            needs.roles.push((m.clone(), id.role));
        }
    }

    /// The proxy's home: no symlinks, owned by its user or root.
    async fn preflight(&self, ctx: &Ctx<'_>, r: &mut PreflightReport) {
        let res = match ctx
            .cfg
            .proxy
            .as_ref()
            .and_then(|p| Some((p, p.home.as_ref()?)))
        {
            None => Err((
                Exit::Config,
                "step 5 needs [proxy] name, home and ca_bundle".to_owned(),
            )),
            Some((p, home)) => owner_of_user("[proxy]", p.user(), None)
                .map_err(|e| (Exit::Config, e.to_string()))
                .and_then(|o| {
                    Tree::open(home, Some(o))
                        .map(|_| {
                            format!(
                                "{} (no symlinks, owner {} or root)",
                                home.display(),
                                p.user()
                            )
                        })
                        .map_err(|e| (Exit::Config, e.to_string()))
                }),
        };
        r.push("proxy home", res);
    }

    async fn verify(&self, ctx: &Ctx<'_>, seen: &mut Seen, r: &mut VerifyReport) {
        if let (Some(served), Some(p)) = (&seen.served, &ctx.cfg.proxy) {
            verify_proxy(ctx.cfg, p, ctx.apps, &served.chain_pem, ctx.deps, r).await;
        }
    }
}

/// The proxy's bundle (step 5) verifies the served listener chain and every app leaf.
async fn verify_proxy(
    cfg: &Config,
    p: &crate::config::ProxySection,
    apps: &[&AppConfig],
    served: &str,
    deps: Deps<'_>,
    r: &mut VerifyReport,
) {
    let now = (deps.clock)();
    let (Some(home), Some(bundle)) = (&p.home, &p.ca_bundle) else {
        return;
    };
    let name = format!("proxy bundle {}", home.join(bundle).display());
    let (tree, text) = match read_proxy_bundle(p, home, bundle) {
        Ok(read) => read,
        Err(why) => return r.check(name, Err(why)),
    };
    let label = home.join(bundle).display().to_string();
    let res = bundle_verifies(p, apps, served, &text, &label, now);
    r.check(name, res);

    if let Some(id) = p.identity(&cfg.agents.domain) {
        check_client_pair(home, &tree, &id, &text, &label, now, r);
    }
    if let Some(addr) = &p.probe {
        let res = probe_through(cfg, p, addr, deps).await;
        r.check(format!("Vault through the proxy at {addr}"), res);
    }
}

/// The proxy's home as its user's tree, and the text of its bundle (why not, for the report).
fn read_proxy_bundle(
    p: &crate::config::ProxySection,
    home: &std::path::Path,
    bundle: &std::path::Path,
) -> Result<(Tree, String), String> {
    let tree = match crate::host::owner_of_user("[proxy]", p.user(), None)
        .and_then(|o| pki_ops::Tree::open(home, Some(o)).map_err(Into::into))
    {
        Ok(t) => t,
        Err(x) => return Err(format!("{x:#}")),
    };
    let text = match tree.read(bundle) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => return Err("missing: run step 5".into()),
        Err(x) => return Err(format!("{x:#}")),
    };
    Ok((tree, text))
}

/// Whether bundle `text` verifies the served listener chain and every app leaf present.
fn bundle_verifies(
    p: &crate::config::ProxySection,
    apps: &[&AppConfig],
    served: &str,
    text: &str,
    label: &str,
    now: i64,
) -> Result<String, String> {
    let mut what = vec![("the served listener chain".to_owned(), served.to_owned())];
    for app in apps {
        let leaf = owner_of(app)
            .ok()
            .and_then(|o| pki_ops::Tree::open(&app.home, Some(o)).ok())
            .and_then(|t| t.read(&rel::fullchain(app)).ok().flatten());
        if let Some(b) = leaf {
            what.push((
                format!("the leaf of {}", app.name),
                String::from_utf8_lossy(&b).into_owned(),
            ));
        }
    }
    what.iter()
        .map(|(n, pem)| {
            pki_ops::verify_chain_as(p.trust.model(), pem, n, pem, text, label, now)
                .map(|()| n.clone())
                .map_err(|x| format!("does not verify {n}: {x:#}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|ok| format!("verifies {}", ok.join(", ")))
}

/// Checks the proxy's client pair: key matches, valid now, verifies with the proxy's bundle.
fn check_client_pair(
    home: &std::path::Path,
    tree: &Tree,
    id: &ProxyIdentity,
    text: &str,
    label: &str,
    now: i64,
    r: &mut VerifyReport,
) {
    let what = format!("proxy client certificate {}", home.join(&id.cert).display());
    let pair = (|| -> Result<String, String> {
        let read = |f: &std::path::Path| match tree.read(f) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(format!("{} is missing: run step 5", home.join(f).display())),
            Err(x) => Err(format!("{x:#}")),
        };
        let cert = String::from_utf8_lossy(&read(&id.cert)?).into_owned();
        let key = read(&id.key)?;
        let key = std::str::from_utf8(&key).map_err(|_| "the key is not PEM text".to_owned())?;
        pki_ops::key_matches_cert(key, &cert).map_err(|x| format!("{x:#}"))?;
        let c = pki_ops::CertInfo::from_pem_labeled(&cert, &what).map_err(|x| format!("{x:#}"))?;
        c.expect_validity(now, Duration::from_secs(0), None)
            .map_err(|x| format!("{x:#}"))?;
        pki_ops::verify_chain_labeled(&cert, &what, &cert, text, label, now)
            .map_err(|x| format!("{x:#}"))?;
        r.material(
            crate::checks::Labels::of(crate::checks::MaterialKind::Proxy),
            "proxy client certificate",
            home.join(&id.cert).display().to_string(),
            &c,
            now,
        );
        Ok(format!(
            "serial {}: key matches, valid, verifies with the proxy's bundle",
            c.serial_hex
        ))
    })();
    r.check(what, pair);
}

/// Asks Vault `sys/seal-status` through the proxy at `addr`, once.
async fn probe_through(
    cfg: &Config,
    p: &crate::config::ProxySection,
    addr: &str,
    deps: Deps<'_>,
) -> Result<String, String> {
    let ca = p.probe_ca.as_ref().or(cfg.vault.ca_cert.as_ref());
    match ca {
        None => Err("no [proxy] probe_ca or [vault] ca_cert".to_owned()),
        Some(ca) => {
            match deps
                .vault
                .gate
                .through_proxy(addr, p.probe_server_name.clone(), ca)
            {
                Err(x) => Err(format!("{x:#}")),
                Ok(c) => c
                    .seal_status()
                    .await
                    .map(|s| format!("Vault {} answered sys/seal-status through it", s.version))
                    .map_err(|x| format!("{x:#}; {}", x.next_action())),
            }
        }
    }
}
