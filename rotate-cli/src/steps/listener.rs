//! Step 2: the Vault listener's certificate, "the center of gravity".
//!
//! Plan (reads only): a proven admin identity first (the current files, as a brand-new
//! client: the run must never rotate the listener without one), what the listener serves
//! now, the role, the files, and — before anything is written — that every CA bundle
//! clients use verifies the chain that will sign the new certificate (the bundle that
//! does not is named). Apply: role, issue (revoked on undo), check the pair and the SANs,
//! stage chain + key (owner the Vault user, key 0600) completely, journal the undo
//! (restore the files, reload, prove the *old* serial is served again), replace, reload.
//! Gate: new handshakes with the SNI name until the **new serial** is served (a reload
//! is asynchronous; OpenBao accepts a SIGHUP even when the reload fails and keeps the old
//! certificate, so only the handshake proves it), the served chain verifies with every
//! client bundle, and `sys/seal-status` answers the admin identity over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use pki_ops::{
    CreatePolicy, FileSpec, IssuedMaterial, MaterialSet, Owner, RoleSpec, Tree, WriteReport,
    upsert_role,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vault_client::IssueRequest;

use crate::change::{Change, ChangeKind};
use crate::checks::PreflightReport;
use crate::checks::VerifyReport;
use crate::config::{AppConfig, Config, ListenerNode, ListenerSection};
use crate::deps::NodeGate;
use crate::engine::context::Deps;
use crate::engine::{DynStep, Step, Target, TargetPlan, Tx};
use crate::error::StepError;
use crate::exit::Exit;
use crate::served::{Served, prove_admin, wait_for_serial};
use crate::state::journal::{RunRequest, StepId};
use crate::state::undo::UndoAction;
use crate::steps::common::{issue_mode, key_algorithm};
use crate::steps::def::{Ctx, Needs, Seen, StepDef, absent_unless};
use crate::topology::rel;

const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// Step 2.
pub struct ListenerStep<'a> {
    cfg: &'a Config,
    l: &'a ListenerSection,
    nodes: Vec<ListenerNode>,
    deps: Deps<'a>,
    chain: String,
}

impl Target for ListenerNode {
    fn name(&self) -> &str {
        &self.name
    }
}

/// What the plan hands to apply.
pub struct ListenerPlan {
    role: Option<Option<Map<String, Value>>>,
    owner: Owner,
    served_before: Served,
    bundles: Vec<ClientBundle>,
}

/// What apply produced (journaled for re-gating).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerApplied {
    /// The new serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Its not-after.
    pub not_after: String,
    /// DNS and IP SANs.
    pub sans: Vec<String>,
    /// The serial served before the run.
    pub previous_serial: String,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// What the reload did.
    pub reload: String,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct ListenerProof {
    /// What the listener serves now (the new serial).
    pub served: Served,
    /// The client bundles that verify the served chain.
    pub verified_with: Vec<String>,
}

impl<'a> ListenerStep<'a> {
    /// Step 2, when `[listener]` is configured; `chain` is `[pki] mount`'s CA chain.
    pub fn new(cfg: &'a Config, deps: Deps<'a>, chain: String) -> Option<Self> {
        let l = cfg.listener.as_ref()?;
        Some(ListenerStep {
            cfg,
            l,
            nodes: l.servers(),
            deps,
            chain,
        })
    }

    fn cn(&self) -> String {
        self.cfg.listener_cn().unwrap_or_default().to_owned()
    }

    /// The DNS names of `node`'s certificate: the CN first, then its SANs.
    fn dns_names(&self, node: &ListenerNode) -> Vec<String> {
        let mut names = vec![self.cn()];
        for n in &node.alt_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    /// The role: server certificates for exactly the names of every node.
    fn role_spec(&self) -> RoleSpec {
        let mut names: Vec<String> = Vec::new();
        for n in self.nodes.iter().flat_map(|node| self.dns_names(node)) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let ips = self.nodes.iter().any(|n| !n.ip_sans.is_empty());
        RoleSpec::server_leaf(names, &self.l.ttl, &self.l.max_ttl)
            .set("allow_ip_sans", ips)
            .with_key(key_algorithm(self.l.key_mode))
    }

    /// A gate connector reaching `node` itself.
    fn gate(&self, node: &ListenerNode) -> Result<NodeGate<'a>, StepError> {
        NodeGate::new(self.deps.vault.gate, node.addr.as_deref())
            .map_err(|e| StepError::vault(format!("reach {}", node.name), e))
    }

    /// Whether `node` is gone (nothing listens, or no answer): a node down, not a
    /// certificate problem.
    async fn gone(&self, node: &ListenerNode) -> Option<StepError> {
        let (cert, key, ca) = self.admin_files().ok()?;
        let gate = self.gate(node).ok()?;
        let e = gate
            .get()
            .handshake(Some((cert, key)), &ca, PROOF_TIMEOUT)
            .await
            .err()?;
        use vault_client::TransportKind as K;
        matches!(e.transport_kind(), Some(K::ConnectionRefused | K::Timeout)).then(|| {
            StepError::VaultGone {
                reason: format!(
                    "{} at {} does not answer ({e}): once it is back, `rotate run --resume`",
                    node.name,
                    node.addr.as_deref().unwrap_or("[vault] addr")
                ),
            }
        })
    }

    /// A gate failure of `node`.
    fn gate_err(node: &ListenerNode, reason: String) -> StepError {
        StepError::Gate {
            step: "listener",
            app: node.name.clone(),
            reason,
        }
    }

    /// The admin's files: how every gate reaches the listener.
    fn admin_files(&self) -> Result<(PathBuf, PathBuf, PathBuf), StepError> {
        crate::host::admin_files(self.cfg, "step 2 proves the listener")
            .map(|(c, k, ca)| (c.to_owned(), k.to_owned(), ca.to_owned()))
    }

    fn tree(
        &self,
        node: &ListenerNode,
        owner: Owner,
    ) -> Result<(Tree, PathBuf, PathBuf), StepError> {
        let dir = node.cert_file.parent().unwrap_or(Path::new("/"));
        let name = |p: &Path| PathBuf::from(p.file_name().unwrap_or_default());
        Ok((
            Tree::open(dir, Some(owner))?,
            name(&node.cert_file),
            name(&node.key_file),
        ))
    }

    fn owner(&self, node: &ListenerNode) -> Result<Owner, StepError> {
        crate::host::owner_of_user("[listener] owner", &node.owner, node.group.as_deref())
    }

    /// Every CA bundle clients use, by name, with its text: the admin's, each app's
    /// `vault/ca/ca.pem` (read inside the app's tree, no symlink followed), the extras.
    /// An app's bundle is that app's: one that cannot be read (a symlink, a FIFO) is
    /// returned as a warning, never an error, so no app can hold up the listener of all.
    fn client_bundles(&self) -> Result<(Vec<ClientBundle>, Vec<String>), StepError> {
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| StepError::Invalid {
                what: format!("client CA bundle {}", p.display()),
                reason: e.to_string(),
            })
        };
        let (_, _, ca) = self.admin_files()?;
        out.push(ClientBundle::go(ca.display().to_string(), read(&ca)?));
        for app in &self.cfg.apps {
            let path = app.home.join(rel::ca_file());
            let bytes = crate::host::owner_of(app)
                .and_then(|o| Ok(Tree::open(&app.home, Some(o))?.read(&rel::ca_file())?));
            match bytes {
                Ok(Some(b)) => out.push(ClientBundle {
                    app: Some(app.name.clone()),
                    ..ClientBundle::go(
                        path.display().to_string(),
                        String::from_utf8_lossy(&b).into_owned(),
                    )
                }),
                Ok(None) => {}
                Err(e) => warnings.push(format!(
                    "{} of app {} cannot be read ({e}): its agent may not verify the new listener until step 3 rewrites it",
                    path.display(),
                    app.name
                )),
            }
        }
        for p in &self.l.client_bundles {
            // Possibly inside a tree someone else owns (the proxy's, an app's): read as
            // that tree's, no symlink followed, no FIFO.
            let bytes =
                crate::host::read_managed_file(self.cfg, p)?.ok_or_else(|| StepError::Invalid {
                    what: format!("client CA bundle {}", p.display()),
                    reason: "missing".into(),
                })?;
            let name = p.display().to_string();
            if !out.iter().any(|b| b.name == name) {
                out.push(ClientBundle::go(
                    name,
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        // The proxy verifies Vault with its bundle too (as its TLS library does).
        if let Some(px) = &self.cfg.proxy
            && let (Some(home), Some(bundle)) = (&px.home, &px.ca_bundle)
        {
            let why = |e: StepError| StepError::Invalid {
                what: format!(
                    "[proxy] ca_bundle {} (step 2 checks the proxy's bundle too)",
                    home.join(bundle).display()
                ),
                reason: e.to_string(),
            };
            let owner =
                crate::host::owner_of_user(&format!("[proxy] {}", px.name), px.user(), None)
                    .map_err(why)?;
            let read = Tree::open(home, Some(owner))
                .and_then(|t| t.read(bundle))
                .map_err(|e| why(e.into()))?;
            if let Some(b) = read {
                let name = home.join(bundle).display().to_string();
                out.retain(|x| x.name != name);
                out.push(ClientBundle {
                    name,
                    text: String::from_utf8_lossy(&b).into_owned(),
                    trust: px.trust.model(),
                    proxy: true,
                    app: None,
                });
            }
        }
        Ok((out, warnings))
    }

    fn timeout(&self) -> Duration {
        self.cfg.duration(&self.l.reload_timeout)
    }

    /// What `node` serves now, seen through a proven admin identity at its own address
    /// (the precondition).
    async fn proven_admin_served(&self, node: &ListenerNode) -> Result<Served, StepError> {
        let (cert, key, ca) = self.admin_files()?;
        let gate = self.gate(node)?;
        // Never touch a listener without a working admin identity.
        match prove_admin(gate.get(), &cert, &key, &ca, PROOF_TIMEOUT).await {
            Ok(identity) => Ok(identity.listener),
            Err(why) => Err(match self.gone(node).await {
                Some(gone) => gone,
                None => Self::gate_err(
                    node,
                    format!(
                        "precondition: no proven admin identity ({why}); step 2 is not attempted without one"
                    ),
                ),
            }),
        }
    }

    /// Every client bundle (and warnings), checked to verify the new certificate's issuer.
    fn bundles_verifying_issuer(&self) -> Result<(Vec<ClientBundle>, Vec<String>), StepError> {
        let mount = &self.cfg.pki.mount;
        // Every client bundle must verify the chain that will sign the new certificate,
        // before anything is written.
        let now = (self.deps.clock)();
        let (bundles, mut warnings) = self.client_bundles()?;
        let certs = pki_ops::parse_bundle(&self.chain, &format!("{mount}/cert/ca_chain"))?;
        let issuer_pem = self
            .chain
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .to_owned();
        let issuer_label = format!(
            "the issuer {:?} of {mount}",
            certs.first().map(|c| c.cn().to_owned()).unwrap_or_default()
        );
        verify_with_all(
            &issuer_pem,
            &issuer_label,
            &self.chain,
            &bundles,
            now,
            &mut warnings,
        )?;
        Ok((bundles, warnings))
    }

    /// Refuses a certificate file that holds another serial than the listener serves.
    fn files_hold_served(
        &self,
        node: &ListenerNode,
        tree: &Tree,
        cert_rel: &Path,
        served_before: &Served,
    ) -> Result<(), StepError> {
        // The undo proves the *previous* serial is served again after restoring the files:
        // that only means something when the files hold what is served now.
        if let Some(pem) = tree.read(cert_rel)? {
            let file = pki_ops::CertInfo::from_pem_labeled(
                &String::from_utf8_lossy(&pem),
                &node.cert_file.display().to_string(),
            )?;
            if !file
                .serial_hex
                .eq_ignore_ascii_case(&served_before.serial_hex)
            {
                return Err(StepError::Invalid {
                    what: format!("listener {} of {}", node.cert_file.display(), node.name),
                    reason: format!(
                        "holds serial {} but the listener serves {}: a reload is pending, or this is not the server's tls_cert_file; reload or fix [listener] cert_file first",
                        file.serial_hex, served_before.serial_hex
                    ),
                });
            }
        }
        Ok(())
    }

    /// The planned swap: the new certificate, its two files, the reload.
    fn swap_changes(
        &self,
        node: &ListenerNode,
        tree: &Tree,
        files: [&PathBuf; 2],
        served_before: &Served,
        bundle_count: usize,
    ) -> Result<Vec<Change>, StepError> {
        let mut changes = vec![
            Change::new(
                ChangeKind::Create,
                format!(
                    "listener certificate {} ({})",
                    self.dns_names(node).join(", "),
                    self.l.ttl
                ),
            )
            .note(format!(
                "replaces served serial {} (not after {})",
                served_before.serial_hex, served_before.not_after
            )),
        ];
        for r in files {
            let kind = match tree.stat(r)? {
                Some(_) => ChangeKind::Update,
                None => ChangeKind::Create,
            };
            changes.push(Change::new(kind, tree.root().join(r).display().to_string()));
        }
        changes.push(
            Change::new(ChangeKind::Update, format!("reload ({})", node.reload)).note(format!(
                "then wait up to {} for the new serial; {} client bundle(s) verified",
                self.l.reload_timeout, bundle_count
            )),
        );
        Ok(changes)
    }

    /// Writes the listener role, its previous state journaled first.
    async fn write_role(
        &self,
        previous: Option<Map<String, Value>>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let (v, l, mount) = (self.deps.vault, self.l, &self.cfg.pki.mount);
        tx.record(UndoAction::Role {
            mount: mount.clone(),
            name: l.role.clone(),
            previous,
        })?;
        upsert_role(
            v.pki,
            mount,
            &l.role,
            &self.role_spec(),
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await?;
        Ok(())
    }

    /// Issues the new certificate (revoked on undo) and checks it in memory; with its SANs.
    async fn issue_checked(
        &self,
        node: &ListenerNode,
        bundles: &[ClientBundle],
        tx: &Tx<'_>,
    ) -> Result<(IssuedMaterial, Vec<String>), StepError> {
        let (v, l, mount) = (self.deps.vault, self.l, &self.cfg.pki.mount);
        let names = self.dns_names(node);
        let req = IssueRequest {
            common_name: self.cn(),
            alt_names: names[1..].to_vec(),
            ip_sans: node.ip_sans.clone(),
            ttl: Some(l.ttl.clone()),
            exclude_cn_from_sans: false,
            ..Default::default()
        };
        let issued = crate::steps::common::issue_journaled(
            v,
            tx,
            mount,
            &l.role,
            &req,
            issue_mode(l.key_mode),
            self.deps.clock,
        )
        .await?;
        let now = (self.deps.clock)();
        let info = &issued.info;
        info.expect_cn(&self.cn())?;
        info.expect_issuer_cn(&self.cfg.pki.issuer_name)?;
        info.expect_server_auth()?;
        info.expect_validity(now, Duration::from_secs(3600), None)?;
        let mut sans: Vec<String> = info.dns_sans.clone();
        sans.extend(info.ip_sans.iter().map(|ip| ip.to_string()));
        for want in names.iter().chain(&node.ip_sans) {
            if !sans.iter().any(|s| s == want) {
                return Err(Self::gate_err(
                    node,
                    format!("the issued certificate lacks SAN {want} (has {sans:?})"),
                ));
            }
        }
        pki_ops::key_matches_cert(&issued.key_pem, &issued.cert_pem)?;
        verify_with_all(
            &issued.cert_pem,
            "the new listener certificate",
            &issued.chain_pem,
            bundles,
            now,
            &mut Vec::new(),
        )?;
        Ok((issued, sans))
    }

    /// Stages chain + key, journals their undo and the reload's, replaces; the tree, the report.
    fn replace_files(
        &self,
        node: &ListenerNode,
        owner: Owner,
        served_before: &Served,
        issued: &IssuedMaterial,
        tx: &Tx<'_>,
    ) -> Result<(Tree, WriteReport), StepError> {
        let (tree, cert_rel, key_rel) = self.tree(node, owner)?;
        let staged = MaterialSet::new()
            .with(
                FileSpec::public(&cert_rel),
                issued.fullchain_pem().into_bytes(),
            )
            .with(
                FileSpec::private_key(&key_rel),
                issued.key_pem.as_bytes().to_vec(),
            )
            .stage(&tree, &tx.run_id())?;
        for u in staged.undo_records() {
            tx.record(UndoAction::File {
                undo: u,
                owner: Some(owner),
            })?;
        }
        let (cert, key, ca) = self.admin_files()?;
        tx.record(UndoAction::ReloadListener {
            reload: node.reload.clone(),
            previous_serial: served_before.serial_hex.clone(),
            ca,
            cert,
            key,
            timeout_secs: self.timeout().as_secs().max(1),
            node: node.addr.as_ref().map(|_| node.name.clone()),
            addr: node.addr.clone(),
        })?;
        let written = staged.commit()?;
        Ok((tree, written))
    }
}

/// `leaf_pem` (plus `chain`) verifies with every bundle; the error names the first that
/// does not. An app's bundle that does not is a warning (the app's own, which step 3
/// rewrites), not an error: one app must not hold up the listener of all.
fn verify_with_all(
    leaf_pem: &str,
    leaf_label: &str,
    chain: &str,
    bundles: &[ClientBundle],
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, StepError> {
    let mut ok = Vec::new();
    for b in bundles {
        let verified =
            pki_ops::verify_chain_as(b.trust, leaf_pem, leaf_label, chain, &b.text, &b.name, now);
        match (verified, &b.app) {
            (Ok(()), _) => ok.push(b.name.clone()),
            (Err(e), Some(app)) => warnings.push(format!(
                "{} of app {app} does not verify {leaf_label} ({e}): its agent may not verify the new listener until step 3 rewrites it",
                b.name
            )),
            (Err(e), None) => {
                return Err(StepError::Invalid {
                    what: format!("client CA bundle {}", b.name),
                    reason: format!(
                        "does not verify {leaf_label}: {e}. Clients using it would fail with \"certificate signed by unknown authority\" after the swap: {}",
                        if b.proxy {
                            "run `rotate run --step proxy` first (it adds the PKI mount's chain to the proxy's bundle and keeps the CAs it had); with [proxy] trust = \"openssl\" the chain must end at a self-signed root in the bundle, so the mount's chain must include its root (or set trust = \"go\" for a proxy that accepts partial chains)"
                        } else {
                            "add the chain of the PKI mount to it first"
                        }
                    ),
                });
            }
        }
    }
    Ok(ok)
}

/// A CA bundle a client of the listener verifies it with.
#[derive(Debug, Clone)]
pub(crate) struct ClientBundle {
    /// Its file.
    name: String,
    /// Its PEM.
    text: String,
    /// How its client verifies with it.
    trust: pki_ops::TrustModel,
    /// It is the proxy's (`[proxy] ca_bundle`).
    proxy: bool,
    /// It is this app's `vault/ca/ca.pem`.
    app: Option<String>,
}

impl ClientBundle {
    /// A bundle Go clients use (the `bao` CLI, agents).
    fn go(name: String, text: String) -> Self {
        ClientBundle {
            name,
            text,
            trust: pki_ops::TrustModel::AnyCertificate,
            proxy: false,
            app: None,
        }
    }
}

#[async_trait]
impl Step for ListenerStep<'_> {
    type Target = ListenerNode;
    type Plan = ListenerPlan;
    type Applied = ListenerApplied;
    type Proof = ListenerProof;

    fn id(&self) -> StepId {
        StepId::Listener
    }

    fn summary(&self, a: &Self::Applied, _proof: Option<&Self::Proof>) -> Vec<String> {
        vec![
            format!("serial_hex: {}", a.serial_hex),
            format!("not_after: {}", a.not_after),
            format!("previous_serial: {}", a.previous_serial),
        ]
    }

    /// Every server, one at a time (rolling): a node is proven before the next starts.
    fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t ListenerNode> {
        self.nodes.iter().collect()
    }

    fn global(&self) -> bool {
        true
    }

    async fn not_due(&self, node: &ListenerNode) -> Result<Option<String>, StepError> {
        let (tree, cert_rel, key_rel) = self.tree(node, self.owner(node)?)?;
        let cert = tree
            .read(&cert_rel)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let key = tree.read(&key_rel)?;
        // The file is what the listener serves (else a reload is pending: not "not due").
        let (c, k, ca) = self.admin_files()?;
        let gate = self.gate(node)?;
        let served = crate::served::look(gate.get(), Some((&c, &k)), &ca, PROOF_TIMEOUT)
            .await
            .map_err(|why| {
                Self::gate_err(node, format!("cannot see what {} serves: {why}", node.name))
            })?;
        let file = cert
            .as_deref()
            .and_then(|p| pki_ops::CertInfo::from_pem_labeled(p, "listener").ok());
        if file.is_some_and(|f| !f.serial_hex.eq_ignore_ascii_case(&served.serial_hex)) {
            tracing::info!("due: the listener serves another certificate than its file");
            return Ok(None);
        }
        Ok(crate::steps::common::pair_not_due(
            self.cfg,
            (self.deps.clock)(),
            &format!("listener certificate of {}", node.name),
            key.as_deref().map(|k| k.as_slice()),
            cert.as_deref(),
            &self.chain,
        ))
    }

    async fn plan(&self, node: &ListenerNode) -> Result<TargetPlan<ListenerPlan>, StepError> {
        let v = self.deps.vault;
        let mount = &self.cfg.pki.mount;
        let served_before = self.proven_admin_served(node).await?;
        let mut changes = Vec::new();
        let (change, role) = crate::steps::common::plan_role(
            v,
            mount,
            &self.l.role,
            &self.role_spec(),
            self.l.create_role,
            "[listener] create_role",
        )
        .await?;
        changes.push(change);
        let (bundles, warnings) = self.bundles_verifying_issuer()?;

        let owner = self.owner(node)?;
        let (tree, cert_rel, key_rel) = self.tree(node, owner)?;
        self.files_hold_served(node, &tree, &cert_rel, &served_before)?;
        changes.extend(self.swap_changes(
            node,
            &tree,
            [&cert_rel, &key_rel],
            &served_before,
            bundles.len(),
        )?);
        changes.extend(warnings.into_iter().map(|w| {
            Change::new(ChangeKind::Kept, "client CA bundle of an app")
                .note(w)
                .needs_attention()
        }));
        Ok(TargetPlan {
            changes,
            data: ListenerPlan {
                role,
                owner,
                served_before,
                bundles,
            },
        })
    }

    async fn apply(
        &self,
        node: &ListenerNode,
        plan: TargetPlan<ListenerPlan>,
        tx: &Tx<'_>,
    ) -> Result<ListenerApplied, StepError> {
        let p = plan.data;
        if let Some(previous) = p.role {
            self.write_role(previous, tx).await?;
        }
        let (issued, sans) = self.issue_checked(node, &p.bundles, tx).await?;
        let info = &issued.info;

        let (tree, written) = self.replace_files(node, p.owner, &p.served_before, &issued, tx)?;
        let reloader: hooks::Reloader = node.reload.parse()?;
        let report = hooks::reload_expecting(
            self.deps.runner,
            &reloader,
            self.cfg.duration(&self.cfg.leaf.command_timeout),
            &self.cfg.server_process(node),
        )
        .await?;
        Ok(ListenerApplied {
            serial_hex: info.serial_hex.clone(),
            not_after: info.not_after_human.clone(),
            sans,
            previous_serial: p.served_before.serial_hex,
            files: written
                .files
                .into_iter()
                .map(|o| tree.root().join(o.path))
                .collect(),
            reload: format!("{report:?}"),
        })
    }

    async fn gate(
        &self,
        node: &ListenerNode,
        a: &ListenerApplied,
    ) -> Result<ListenerProof, StepError> {
        let (cert, key, ca) = self.admin_files()?;
        let gate_err = |reason: String| Self::gate_err(node, reason);
        let gate = self.gate(node)?;
        let waited = wait_for_serial(
            gate.get(),
            Some((&cert, &key)),
            &ca,
            &a.serial_hex,
            self.timeout(),
        )
        .await;
        let served = match waited {
            Ok(s) => s,
            // A node that went down (killed, restarting) is kept applied for `--resume`,
            // never "undone" through a server that is not there.
            Err(crate::served::WaitError::Unreachable { .. })
                if let Some(gone) = self.gone(node).await =>
            {
                return Err(gone);
            }
            Err(e) => {
                return Err(gate_err(format!(
                    "new serial {} not served within {}: {e}",
                    a.serial_hex, self.l.reload_timeout
                )));
            }
        };
        if served.sealed {
            return Err(StepError::Sealed {
                reason: format!(
                    "the listener serves the new certificate {} but Vault is sealed: unseal it, then `rotate run --resume`",
                    a.serial_hex
                ),
            });
        }
        if served.seal_status != Some(200) {
            // A reset because the node died under the request (killed, restarting) is
            // not the certificate's fault: kept applied for `--resume`, like a wait that
            // found it gone.
            if let Some(gone) = self.gone(node).await {
                return Err(gone);
            }
            return Err(gate_err(format!(
                "the listener serves the new certificate but sys/seal-status failed for the admin: {}",
                served
                    .seal_status_error
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {:?}", served.seal_status))
            )));
        }
        let now = (self.deps.clock)();
        let (bundles, mut warnings) = self.client_bundles()?;
        let verified_with = verify_with_all(
            &served.chain_pem,
            "the served listener chain",
            "",
            &bundles,
            now,
            &mut warnings,
        )?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        // And the served certificate is the one in the files (a matching pair on disk).
        let (tree, cert_rel, key_rel) = self.tree(node, self.owner(node)?)?;
        let missing = |p: &Path| gate_err(format!("{} is missing", p.display()));
        let on_disk = tree
            .read(&cert_rel)?
            .ok_or_else(|| missing(&node.cert_file))?;
        let key_pem = tree
            .read(&key_rel)?
            .ok_or_else(|| missing(&node.key_file))?;
        let file = pki_ops::CertInfo::from_pem_labeled(
            &String::from_utf8_lossy(&on_disk),
            &node.cert_file.display().to_string(),
        )?;
        if !file.serial_hex.eq_ignore_ascii_case(&a.serial_hex) {
            return Err(gate_err(format!(
                "{} holds serial {}, not the new {} that is served",
                node.cert_file.display(),
                file.serial_hex,
                a.serial_hex
            )));
        }
        pki_ops::key_matches_cert(
            &String::from_utf8_lossy(&key_pem),
            &String::from_utf8_lossy(&on_disk),
        )?;
        Ok(ListenerProof {
            served,
            verified_with,
        })
    }
}

/// Step 2 in the registry.
pub(crate) struct Def;

#[async_trait]
impl StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Listener
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        _request: &RunRequest,
    ) -> Box<dyn DynStep + 'a> {
        absent_unless(
            ListenerStep::new(cfg, deps, chain.to_owned()),
            StepId::Listener,
        )
    }

    fn needs(&self, ctx: &Ctx<'_>, needs: &mut Needs) {
        if let Some(l) = &ctx.cfg.listener {
            needs.issuer(&ctx.cfg.pki.mount, &l.role, l.key_mode);
        }
    }

    async fn preflight(&self, ctx: &Ctx<'_>, r: &mut PreflightReport) {
        let cfg = ctx.cfg;
        let Some(l) = &cfg.listener else {
            r.push(
                "step 2 (listener) configured",
                Err((
                    Exit::Config,
                    "add a [listener] section to the config".into(),
                )),
            );
            return;
        };
        let servers = l.servers();
        let several = servers.len() > 1;
        for node in &servers {
            preflight_server(cfg, node, several, r).await;
        }
        if cfg.vault.client_cert.is_none() || cfg.vault.ca_cert.is_none() {
            r.push(
                "listener gate identity",
                Err((
                    Exit::Config,
                    "[vault] client_cert, client_key and ca_cert are needed to prove the listener"
                        .into(),
                )),
            );
        }
    }

    /// Each server serves the certificate its file holds (seen at its own address), its
    /// pair matches, every client bundle verifies its served chain, and it has loaded its
    /// client CA file; each server's certificate goes into the inventory.
    async fn verify(&self, ctx: &Ctx<'_>, seen: &mut Seen, r: &mut VerifyReport) {
        let cfg = ctx.cfg;
        let (Some(l), Some(ca)) = (&cfg.listener, &cfg.vault.ca_cert) else {
            return;
        };
        let servers = l.servers();
        for node in &servers {
            let served = match &node.addr {
                None => seen.served.clone(),
                Some(_) => served_by(ctx, node, r).await,
            };
            if let Some(s) = served {
                let chain = seen.chain.as_deref();
                verify_server(ctx, l, node, &s, ca, chain, servers.len() > 1, r);
            }
        }
    }
}

/// Step 0 for one server: its owner, its directory, and a reloader that signals only it.
async fn preflight_server(
    cfg: &Config,
    node: &ListenerNode,
    several: bool,
    r: &mut PreflightReport,
) {
    let of = if several {
        format!(" of {}", node.name)
    } else {
        String::new()
    };
    let Some(u) = nix::unistd::User::from_name(&node.owner).ok().flatten() else {
        r.push(
            format!("listener owner {}{of}", node.owner),
            Err((Exit::Config, "no such user ([listener] owner)".into())),
        );
        return;
    };
    let o = Owner {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    };
    let d = node
        .cert_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    r.push(
        format!("listener directory {}{of}", d.display()),
        Tree::open(&d, Some(o))
            .map(|_| format!("no symlinks, owner {} or root", node.owner))
            .map_err(|e| (Exit::Config, e.to_string())),
    );
    let down = match &node.addr {
        Some(a) => (!crate::deps::listening(a).await).then_some(a.as_str()),
        None => None,
    };
    let res = match node.reload.parse::<hooks::Reloader>() {
        // Root signals only the Vault server: a stale or planted pid file must not make
        // it signal anything else.
        Ok(hooks::Reloader::Signal { pid_file, .. }) => {
            hooks::open_pid_file(&pid_file, &cfg.server_process(node))
                .map(|(_, info)| format!("{} names the server: {info}", pid_file.display()))
                .map_err(|e| match down {
                    // A node that is down is not a config problem: start it (unseal
                    // it), then run again.
                    Some(addr) => (
                        Exit::Vault,
                        format!(
                            "{} is down: nothing listens at {addr} and {e}; start it (and unseal it), then run again",
                            node.name
                        ),
                    ),
                    None => (Exit::Config, format!("{e}: fix [{}]", node.reload_setting)),
                })
        }
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err((Exit::Config, e.to_string())),
    };
    r.push(format!("listener reload{of}"), res);
}

/// What `node` serves to the admin identity at its own address (into the inventory);
/// `None`, with a failed check, when it cannot be seen.
async fn served_by(ctx: &Ctx<'_>, node: &ListenerNode, r: &mut VerifyReport) -> Option<Served> {
    let v = &ctx.cfg.vault;
    let (cert, key, ca) = (
        v.client_cert.as_ref()?,
        v.client_key.as_ref()?,
        v.ca_cert.as_ref()?,
    );
    let seen = match NodeGate::new(ctx.deps.vault.gate, node.addr.as_deref()) {
        Ok(g) => crate::served::look(g.get(), Some((cert, key)), ca, PROOF_TIMEOUT).await,
        Err(e) => Err(format!("{e:#}")),
    };
    match seen {
        Ok(s) => {
            let what = format!("listener certificate of {}", node.name);
            let at = format!(
                "served by {}",
                node.addr.as_deref().unwrap_or("the listener")
            );
            r.served(
                crate::checks::Labels::node(crate::checks::MaterialKind::Listener, &node.name),
                &what,
                &at,
                &s,
                ctx.now(),
            );
            Some(s)
        }
        Err(why) => {
            r.check(format!("listener of {}", node.name), Err(why));
            None
        }
    }
}

/// `rotate verify` of one server, given what it serves.
#[allow(clippy::too_many_arguments)]
fn verify_server(
    ctx: &Ctx<'_>,
    l: &ListenerSection,
    node: &ListenerNode,
    s: &Served,
    ca: &Path,
    chain: Option<&str>,
    several: bool,
    r: &mut VerifyReport,
) {
    let (cfg, now) = (ctx.cfg, ctx.now());
    let of = if several {
        format!(" of {}", node.name)
    } else {
        String::new()
    };
    // The listener's directory belongs to the Vault user: read without following
    // symlinks.
    let read = |p: &Path| -> Result<String, String> {
        let dir = p.parent().unwrap_or(Path::new("/"));
        let name = Path::new(p.file_name().unwrap_or_default());
        match Tree::open(dir, None).and_then(|t| t.read(name)) {
            Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Ok(None) => Err(format!("{} is missing", p.display())),
            Err(x) => Err(format!("{x:#}")),
        }
    };
    let file = read(&node.cert_file).and_then(|pem| {
        pki_ops::CertInfo::from_pem_labeled(&pem, &node.cert_file.display().to_string())
            .map_err(|x| format!("{x:#}"))
    });
    r.check(
        format!("listener{of} serves the certificate its file holds"),
        match file {
            Ok(f) if f.serial_hex.eq_ignore_ascii_case(&s.serial_hex) => Ok(format!(
                "serial {} ({}), verified with {}",
                s.serial_hex,
                node.cert_file.display(),
                ca.display()
            )),
            Ok(f) => Err(format!(
                "{} holds {} but {} serves {}: reload it",
                node.cert_file.display(),
                f.serial_hex,
                node.addr.as_deref().unwrap_or("the listener"),
                s.serial_hex
            )),
            Err(x) => Err(x),
        },
    );
    let pair = read(&node.cert_file).and_then(|c| {
        let k = read(&node.key_file)?;
        pki_ops::key_matches_cert(&k, &c).map_err(|x| format!("{x:#}"))
    });
    r.check(
        format!("listener key{of} matches its certificate"),
        pair.map(|()| node.key_file.display().to_string()),
    );
    for b in &l.client_bundles {
        // Possibly in the proxy's or an app's tree: read as that tree's.
        let res = match crate::host::read_managed_file(cfg, b) {
            Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(None) => Err(format!("{} is missing", b.display())),
            Err(x) => Err(x.to_string()),
        }
        .and_then(|bundle| {
            pki_ops::verify_chain_labeled(
                &s.chain_pem,
                "the served listener chain",
                &s.chain_pem,
                &bundle,
                &b.display().to_string(),
                now,
            )
            .map(|()| "verifies the served listener chain".to_owned())
            .map_err(|x| format!("{x:#}"))
        });
        r.check(format!("client bundle {}{of}", b.display()), res);
    }
    if let Some(chain) = chain {
        // Expiring, or signed by a CA that does not sign now: what `--if-due` renews.
        let what = format!("the listener certificate{of}");
        let leaf = s
            .chain_pem
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default();
        let renewal =
            crate::steps::common::renewal(&what, Some(leaf), chain, now, cfg.run.renew_share);
        r.check(
            format!("listener{of} certificate is current"),
            match renewal {
                crate::steps::common::Renewal::NotDue(why) => Ok(why),
                crate::steps::common::Renewal::Due(why) => {
                    Err(format!("{why}: `rotate run --step listener` renews it"))
                }
            },
        );
    }
    if let Some(f) = &l.client_ca_file {
        let loaded = crate::served::client_ca_drift(s, cfg, f).and_then(|d| {
            if d.is_empty() {
                Ok(d.to_string())
            } else {
                Err(format!(
                    "{d}: check the file, then restart Vault (step 6 does with [restarts] vault)"
                ))
            }
        });
        r.check(
            format!("listener{of} has loaded its client CA file"),
            loaded,
        );
    }
}
