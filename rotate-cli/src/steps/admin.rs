//! Step 1: the admin's client certificate, rotated first "so `vault status` stays
//! possible".
//!
//! Plan (reads only): role, the current certificate, the files. Apply: role, issue
//! (revoked on undo), stage key (0600 from creation) + certificate (+ CA bundle, + env
//! file) completely, then — **before anything replaces the current identity** — a
//! brand-new client built only from the staged files must get `sys/seal-status` through
//! the mTLS listener and the admin token must still work over it (the lockout guard: a
//! certificate the running listener will not accept, e.g. from a CA missing in its
//! `tls_client_ca_file`, which SIGHUP never reloads, is refused and nothing is
//! replaced). Only then are the files swapped in (previous versions kept for undo) and
//! the run's admin client switched to them. Gate: the same proof from the installed
//! files. The previous certificate is not revoked: the operator's other shells may still
//! use it mid-run; it expires on its own (its not-after is reported).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use pki_ops::{
    CreatePolicy, FileSpec, IssuedMaterial, MaterialSet, Owner, RoleSpec, Staged, Tree, upsert_role,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vault_client::IssueRequest;

use crate::change::{Change, ChangeKind};
use crate::checks::PreflightReport;
use crate::checks::VerifyReport;
use crate::config::{AdminSection, AppConfig, Config};
use crate::engine::context::Deps;
use crate::engine::{DynStep, Singleton, Step, TargetPlan, Tx};
use crate::error::StepError;
use crate::exit::Exit;
use crate::served::{AdminIdentity, look, prove_admin};
use crate::state::journal::{RunRequest, StepId};
use crate::state::undo::UndoAction;
use crate::steps::common::{issue_mode, key_algorithm, merged_bundle, mount_chain};
use crate::steps::def::{Ctx, Needs, Seen, StepDef, absent_unless};

/// How long one identity proof may take.
const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// Step 1.
pub struct AdminStep<'a> {
    cfg: &'a Config,
    admin: &'a AdminSection,
    deps: Deps<'a>,
    /// The chain of `[pki] mount` (what signs the listener): the CA bundle's content.
    listener_chain: String,
}

/// What the plan hands to apply.
pub struct AdminPlan {
    role: Option<Option<Map<String, Value>>>,
    previous: Option<pki_ops::CertInfo>,
}

/// What apply produced (journaled for re-gating).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminApplied {
    /// CN.
    pub cn: String,
    /// The new serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Its not-after.
    pub not_after: String,
    /// Its issuer.
    pub issuer: String,
    /// The replaced certificate's serial (still valid: not revoked) and not-after.
    pub previous: Option<(String, String)>,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct AdminProof {
    /// The identity from the installed files.
    pub identity: AdminIdentity,
    /// Said plainly for the report.
    pub note: String,
}

/// The admin's files: certificate, key, CA bundle (when written).
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    write_ca: bool,
}

/// The admin's files as apply staged them, nothing replaced yet.
struct StagedFiles {
    // In the order apply dropped them as locals: dropping a `Staged` removes its temps.
    env: Option<Staged>,
    staged_ca: Option<Staged>,
    staged: Staged,
    same_dir: bool,
    ca_rel: PathBuf,
    ca_tree: Tree,
    key_rel: PathBuf,
    cert_rel: PathBuf,
    tree: Tree,
}

impl StagedFiles {
    /// Journals how to undo every staged file.
    fn record_undo(&self, tx: &Tx<'_>) -> Result<(), StepError> {
        // Journal how to undo every file now: the staged temps (a key among them) are
        // named by the records, so a crash from here on leaves nothing unaccounted for.
        let owner = Some(Owner::current());
        let mut records = self.staged.undo_records();
        records.extend(self.staged_ca.iter().flat_map(Staged::undo_records));
        records.extend(self.env.iter().flat_map(Staged::undo_records));
        for u in records {
            tx.record(UndoAction::File { undo: u, owner })?;
        }
        Ok(())
    }

    /// Journals the reconnect, then replaces the files with the staged ones; the files written.
    fn replace(self, env_file: Option<&PathBuf>, tx: &Tx<'_>) -> Result<Vec<PathBuf>, StepError> {
        // Proven: replace.
        tx.record(UndoAction::ReconnectAdmin)?;
        let tree = &self.tree;
        let mut files: Vec<PathBuf> = self
            .staged
            .commit()?
            .files
            .into_iter()
            .map(|o| tree.root().join(o.path))
            .collect();
        for (s, t) in [(self.staged_ca, &self.ca_tree)] {
            if let Some(s) = s {
                files.extend(s.commit()?.files.into_iter().map(|o| t.root().join(o.path)));
            }
        }
        if let (Some(s), Some(p)) = (self.env, env_file) {
            s.commit()?;
            files.push(p.clone());
        }
        Ok(files)
    }
}

impl<'a> AdminStep<'a> {
    /// Step 1, when `[admin]` is configured. `listener_chain` is `[pki] mount`'s CA chain.
    pub fn new(cfg: &'a Config, deps: Deps<'a>, listener_chain: String) -> Option<Self> {
        let admin = cfg.admin.as_ref()?;
        Some(AdminStep {
            cfg,
            admin,
            deps,
            listener_chain,
        })
    }

    fn files(&self) -> Result<Files, StepError> {
        let v = &self.cfg.vault;
        let missing = |s: &str| StepError::Invalid {
            what: format!("[vault] {s}"),
            reason: "step 1 needs it".into(),
        };
        Ok(Files {
            cert: v
                .client_cert
                .clone()
                .ok_or_else(|| missing("client_cert"))?,
            key: v.client_key.clone().ok_or_else(|| missing("client_key"))?,
            ca: v.ca_cert.clone().ok_or_else(|| missing("ca_cert"))?,
            write_ca: self.admin.write_ca,
        })
    }

    fn role_spec(&self) -> RoleSpec {
        let a = self.admin;
        RoleSpec::agent_client(&a.common_name, &a.ttl, &a.max_ttl)
            .with_key(key_algorithm(a.key_mode))
    }

    fn mount(&self) -> &str {
        self.cfg.admin_mount()
    }

    /// Writes the admin role, its previous state journaled first.
    async fn write_role(
        &self,
        previous: Option<Map<String, Value>>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let (v, a, mount) = (self.deps.vault, self.admin, self.mount());
        tx.record(UndoAction::Role {
            mount: mount.to_owned(),
            name: a.role.clone(),
            previous,
        })?;
        upsert_role(
            v.pki,
            mount,
            &a.role,
            &self.role_spec(),
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await?;
        Ok(())
    }

    /// Issues the new admin certificate (revoked on undo), checked against its mount's chain.
    async fn issue(&self, tx: &Tx<'_>) -> Result<IssuedMaterial, StepError> {
        let (v, a, mount) = (self.deps.vault, self.admin, self.mount());
        let req = IssueRequest {
            common_name: a.common_name.clone(),
            ttl: Some(a.ttl.clone()),
            exclude_cn_from_sans: false,
            ..Default::default()
        };
        let own_chain = mount_chain(v, mount, None).await?;
        crate::steps::common::issue_client(
            v,
            tx,
            mount,
            &a.role,
            &req,
            issue_mode(a.key_mode),
            &own_chain,
            self.deps.clock,
            Duration::from_secs(600),
        )
        .await
    }

    /// Stages key, certificate, CA bundle and env file completely, replacing nothing.
    fn stage_files(
        &self,
        f: &Files,
        issued: &IssuedMaterial,
        tx: &Tx<'_>,
    ) -> Result<StagedFiles, StepError> {
        // Stage everything (key 0600 from creation), replace nothing yet.
        let (tree, cert_rel) = root_tree(&f.cert)?;
        let (_, key_rel) = split(&f.key)?;
        let mut set = MaterialSet::new()
            .with(
                FileSpec::private_key(&key_rel),
                issued.key_pem.as_bytes().to_vec(),
            )
            .with(
                FileSpec::public(&cert_rel),
                issued.fullchain_pem().into_bytes(),
            );
        let (ca_tree, ca_rel) = root_tree(&f.ca)?;
        let ca_bytes = if f.write_ca {
            let current = ca_tree.read(&ca_rel)?;
            Some(
                merged_bundle(&self.listener_chain, current.as_ref().map(|b| b.as_slice()))?
                    .into_bytes(),
            )
        } else {
            None
        };
        let same_dir = ca_tree.root() == tree.root();
        let mut ca_set = None;
        if let Some(bytes) = ca_bytes {
            if same_dir {
                set = set.with(FileSpec::public(&ca_rel), bytes);
            } else {
                ca_set = Some(MaterialSet::new().with(FileSpec::public(&ca_rel), bytes));
            }
        }
        let run_id = tx.run_id();
        let staged = set.stage(&tree, &run_id)?;
        let staged_ca = ca_set.map(|s| s.stage(&ca_tree, &run_id)).transpose()?;
        let env = match &self.admin.env_file {
            Some(p) => {
                let (t, rel) = root_tree(p)?;
                let s = MaterialSet::new()
                    .with(
                        FileSpec::new(&rel, 0o600),
                        env_text(self.cfg, f).into_bytes(),
                    )
                    .stage(&t, &run_id)?;
                Some(s)
            }
            None => None,
        };
        Ok(StagedFiles {
            env,
            staged_ca,
            staged,
            same_dir,
            ca_rel,
            ca_tree,
            key_rel,
            cert_rel,
            tree,
        })
    }

    /// The lockout guard: refuses staged files a brand-new client cannot use Vault with.
    async fn lockout_guard(
        &self,
        f: &Files,
        s: &StagedFiles,
        issued: &IssuedMaterial,
    ) -> Result<(), StepError> {
        let (v, mount) = (self.deps.vault, self.mount());
        // The lockout guard: the staged files must work, as a new client, before they
        // replace the identity this run (and the operator) depends on.
        let ca_now = match &s.staged_ca {
            Some(sc) => staged_path(sc, &s.ca_tree, &s.ca_rel),
            None if s.same_dir && f.write_ca => staged_path(&s.staged, &s.tree, &s.ca_rel),
            None => f.ca.clone(),
        };
        let proof = prove_admin(
            v.gate,
            &staged_path(&s.staged, &s.tree, &s.cert_rel),
            &staged_path(&s.staged, &s.tree, &s.key_rel),
            &ca_now,
            PROOF_TIMEOUT,
        )
        .await;
        if let Err(why) = proof {
            let accepted = self.accepted_issuers(f).await;
            return Err(StepError::Gate {
                step: "admin",
                app: "admin".into(),
                reason: format!(
                    "lockout guard: a brand-new client with the new certificate (serial {}, issued by {:?} on mount {mount}) cannot use Vault: {why}. Nothing was replaced: the current admin identity is untouched.{accepted} If the listener rejected the certificate, its tls_client_ca_file does not trust that issuer: add the chain of {mount} to it and restart the server (SIGHUP never reloads that file; step 6 does with [listener] client_ca_file and [restarts] vault), or issue from a mount it trusts ([admin] mount)",
                    issued.info.serial_hex,
                    issued.info.issuer_cn.clone().unwrap_or_default(),
                ),
            });
        }
        Ok(())
    }

    /// The sentence naming the issuers the running listener accepts (empty if not seen).
    async fn accepted_issuers(&self, f: &Files) -> String {
        let v = self.deps.vault;
        // What the listener does accept, as the current identity sees it.
        match look(v.gate, Some((&f.cert, &f.key)), &f.ca, PROOF_TIMEOUT)
            .await
            .map(|s| s.client_cas)
        {
            Ok(Some(names)) => format!(
                " The running listener accepts client certificates issued by {:?}.",
                names
                    .iter()
                    .map(|d| pki_ops::distinguished_name(d).unwrap_or_default())
                    .collect::<Vec<_>>()
            ),
            _ => String::new(),
        }
    }
}

/// `path`'s directory and name.
fn split(path: &Path) -> Result<(PathBuf, PathBuf), StepError> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) if d.is_absolute() => Ok((d.to_owned(), PathBuf::from(n))),
        _ => Err(StepError::Invalid {
            what: path.display().to_string(),
            reason: "must be an absolute file path".into(),
        }),
    }
}

/// Root's own tree holding `path` (no symlinks, owned by root).
fn root_tree(path: &Path) -> Result<(Tree, PathBuf), StepError> {
    let (dir, name) = split(path)?;
    Ok((Tree::open(&dir, Some(Owner::current()))?, name))
}

/// The env file: where the admin's files are, for `source`.
fn env_text(cfg: &Config, f: &Files) -> String {
    let mut lines = vec![format!(
        "# Written by rotate (step 1) for env {}: source me to use the admin identity.",
        cfg.env
    )];
    let mut vars: Vec<(&str, String)> = vec![
        ("CLIENT_CERT", f.cert.display().to_string()),
        ("CLIENT_KEY", f.key.display().to_string()),
        ("CACERT", f.ca.display().to_string()),
    ];
    if let Some(a) = &cfg.vault.addr {
        vars.push(("ADDR", a.clone()));
    }
    if let Some(n) = &cfg.vault.tls_server_name {
        vars.push(("TLS_SERVER_NAME", n.clone()));
    }
    for prefix in ["VAULT", "BAO"] {
        for (k, v) in &vars {
            lines.push(format!(
                "export {prefix}_{k}='{}'",
                v.replace('\'', r"'\''")
            ));
        }
    }
    lines.join("\n") + "\n"
}

/// Where the bytes a client would read for `rel` are right now: the staged temp if the
/// file changes, else the target.
fn staged_path(staged: &Staged, tree: &Tree, rel: &Path) -> PathBuf {
    staged
        .undo_records()
        .into_iter()
        .find(|u| u.rel == rel)
        .and_then(|u| u.temp)
        .map_or_else(|| tree.root().join(rel), |t| tree.root().join(t))
}

#[async_trait]
impl Step for AdminStep<'_> {
    type Target = Singleton;
    type Plan = AdminPlan;
    type Applied = AdminApplied;
    type Proof = AdminProof;

    fn id(&self) -> StepId {
        StepId::Admin
    }

    fn summary(&self, a: &Self::Applied, _proof: Option<&Self::Proof>) -> Vec<String> {
        vec![
            format!("serial_hex: {}", a.serial_hex),
            format!("not_after: {}", a.not_after),
        ]
    }

    fn targets<'t>(&'t self, _apps: &[&'t AppConfig]) -> Vec<&'t Singleton> {
        static TARGET: Singleton = Singleton("admin");
        vec![&TARGET]
    }

    fn global(&self) -> bool {
        true
    }

    async fn not_due(&self, _t: &Singleton) -> Result<Option<String>, StepError> {
        let f = self.files()?;
        let (tree, name) = root_tree(&f.cert)?;
        let (_, key_name) = split(&f.key)?;
        let chain = mount_chain(self.deps.vault, self.mount(), None).await?;
        crate::steps::common::pair_in_tree_not_due(
            self.cfg,
            (self.deps.clock)(),
            "admin certificate",
            &tree,
            (&name, &key_name),
            &chain,
        )
    }

    async fn plan(&self, _t: &Singleton) -> Result<TargetPlan<AdminPlan>, StepError> {
        let v = self.deps.vault;
        let f = self.files()?;
        let mount = self.mount();
        let mut changes = Vec::new();
        let (change, role) = crate::steps::common::plan_role(
            v,
            mount,
            &self.admin.role,
            &self.role_spec(),
            self.admin.create_role,
            "[admin] create_role",
        )
        .await?;
        changes.push(change);
        let (tree, cert_name) = root_tree(&f.cert)?;
        let previous = tree.read(&cert_name)?.and_then(|pem| {
            pki_ops::CertInfo::from_pem_labeled(
                &String::from_utf8_lossy(&pem),
                &f.cert.display().to_string(),
            )
            .ok()
        });
        changes.push(crate::steps::common::new_cert_change(
            format!(
                "admin certificate {} ({})",
                self.admin.common_name, self.admin.ttl
            ),
            previous.as_ref(),
            true,
        ));
        let mut files = vec![f.cert.clone(), f.key.clone()];
        if f.write_ca {
            files.push(f.ca.clone());
        }
        files.extend(self.admin.env_file.clone());
        for p in files {
            let (tree, name) = root_tree(&p)?;
            let kind = match tree.stat(&name)? {
                Some(_) => ChangeKind::Update,
                None => ChangeKind::Create,
            };
            changes.push(Change::new(kind, p.display().to_string()));
        }
        Ok(TargetPlan {
            changes,
            data: AdminPlan { role, previous },
        })
    }

    async fn apply(
        &self,
        _t: &Singleton,
        plan: TargetPlan<AdminPlan>,
        tx: &Tx<'_>,
    ) -> Result<AdminApplied, StepError> {
        let v = self.deps.vault;
        let a = self.admin;
        let f = self.files()?;
        if let Some(previous) = plan.data.role {
            self.write_role(previous, tx).await?;
        }
        let issued = self.issue(tx).await?;
        let staged = self.stage_files(&f, &issued, tx)?;
        staged.record_undo(tx)?;
        self.lockout_guard(&f, &staged, &issued).await?;
        let files = staged.replace(a.env_file.as_ref(), tx)?;
        // From here on the run uses the new identity.
        v.identity
            .reconnect()
            .map_err(|e| StepError::vault("switch the run to the new admin identity", e))?;
        Ok(AdminApplied {
            cn: a.common_name.clone(),
            serial_hex: issued.info.serial_hex.clone(),
            not_after: issued.info.not_after_human.clone(),
            issuer: issued.info.issuer_cn.clone().unwrap_or_default(),
            previous: plan
                .data
                .previous
                .map(|p| (p.serial_hex, p.not_after_human)),
            files,
        })
    }

    async fn gate(&self, _t: &Singleton, a: &AdminApplied) -> Result<AdminProof, StepError> {
        let f = self.files()?;
        let gate_err = |reason: String| StepError::Gate {
            step: "admin",
            app: "admin".into(),
            reason,
        };
        let identity = prove_admin(self.deps.vault.gate, &f.cert, &f.key, &f.ca, PROOF_TIMEOUT)
            .await
            .map_err(|why| gate_err(format!("the installed admin files do not work: {why}")))?;
        let on_disk = pki_ops::CertInfo::from_pem_file(&f.cert)?;
        if !on_disk.serial_hex.eq_ignore_ascii_case(&a.serial_hex) {
            return Err(gate_err(format!(
                "{} holds serial {}, not the new {}",
                f.cert.display(),
                on_disk.serial_hex,
                a.serial_hex
            )));
        }
        pki_ops::key_matches_cert_files(&f.key, &f.cert)?;
        Ok(AdminProof {
            identity,
            note: match &a.previous {
                Some((serial, until)) => format!(
                    "new admin identity {} works; the previous certificate {serial} was not revoked (shells still using it keep working until {until})",
                    a.serial_hex
                ),
                None => format!("new admin identity {} works", a.serial_hex),
            },
        })
    }
}

/// Step 1 in the registry.
pub(crate) struct Def;

#[async_trait]
impl StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Admin
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        _request: &RunRequest,
    ) -> Box<dyn DynStep + 'a> {
        absent_unless(AdminStep::new(cfg, deps, chain.to_owned()), StepId::Admin)
    }

    fn needs(&self, ctx: &Ctx<'_>, needs: &mut Needs) {
        if let Some(a) = &ctx.cfg.admin {
            let m = ctx.cfg.admin_mount();
            needs.issuer(m, &a.role, a.key_mode);
            needs.cap(format!("{m}/revoke"), "update");
        }
    }

    async fn preflight(&self, ctx: &Ctx<'_>, r: &mut PreflightReport) {
        let cfg = ctx.cfg;
        if cfg.admin.is_none() {
            r.push(
                "step 1 (admin) configured",
                Err((Exit::Config, "add an [admin] section to the config".into())),
            );
            return;
        }
        let m = cfg.admin_mount();
        let chain = mount_chain(ctx.deps.vault, m, None).await;
        r.push(
            format!("admin PKI mount {m}"),
            chain
                .map(|_| "CA chain readable".to_owned())
                .map_err(|e| (Exit::Config, format!("{e:#}"))),
        );
        let dir_of = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut dirs: Vec<PathBuf> = [&cfg.vault.client_cert, &cfg.vault.ca_cert]
            .into_iter()
            .flatten()
            .map(|p| dir_of(p))
            .collect();
        dirs.extend(
            cfg.admin
                .iter()
                .filter_map(|a| a.env_file.as_deref())
                .map(dir_of),
        );
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            r.push(
                format!("admin directory {}", d.display()),
                Tree::open(&d, Some(Owner::current()))
                    .map(|_| "no symlinks, owned by root".to_owned())
                    .map_err(|e| (Exit::Config, e.to_string())),
            );
        }
    }

    /// The admin identity works (and what the listener serves to it, for step 2's
    /// checks), whether or not step 1 is set up.
    async fn verify(&self, ctx: &Ctx<'_>, seen: &mut Seen, r: &mut VerifyReport) {
        let vs = &ctx.cfg.vault;
        let (Some(cert), Some(key), Some(ca)) = (&vs.client_cert, &vs.client_key, &vs.ca_cert)
        else {
            return;
        };
        let (gate, now) = (ctx.deps.vault.gate, ctx.now());
        let pair = pki_ops::key_matches_cert_files(key, cert).map_err(|x| format!("{x:#}"));
        r.check(
            "admin key matches its certificate",
            pair.map(|()| cert.display().to_string()),
        );
        if let Ok(c) = pki_ops::CertInfo::from_pem_file(cert) {
            r.material(
                crate::checks::Labels::of(crate::checks::MaterialKind::Admin),
                "admin certificate",
                cert.display().to_string(),
                &c,
                now,
            );
        }
        match prove_admin(gate, cert, key, ca, Duration::from_secs(10)).await {
            Ok(id) => {
                r.check(
                    "admin identity",
                    Ok(format!(
                        "sys/seal-status and token lookup work; policies {:?}",
                        id.policies
                    )),
                );
                r.served(
                    crate::checks::Labels::of(crate::checks::MaterialKind::Listener),
                    "listener certificate",
                    "served by the listener",
                    &id.listener,
                    now,
                );
                seen.served = Some(id.listener);
            }
            Err(why) => r.check("admin identity", Err(why)),
        }
        if let Ok(s) = look(gate, Some((cert, key)), ca, Duration::from_secs(10)).await
            && s.sealed
        {
            r.check("vault unsealed", Err("sealed: unseal it".into()));
        }
    }
}
