//! Step 3: agent login mTLS certificates and their cert auth mappings, per app.
//!
//! Plan (reads only): cert auth enabled?, role `agent-mtls-<app>`, policies
//! `pki-issue-<app>` + the marker, mapping `auth/<mount>/certs/agent-<app>` (managed and
//! unmanaged fields), the files. Apply (each write preceded by its undo record): enable
//! cert auth, role, policies, issue (revoked on undo), stage `agent.key` (0600) +
//! `agent.crt` + `ca.pem` completely and only then replace them, mapping. Gate: a fresh
//! client built from the files on disk logs in and its token carries exactly the expected
//! policies (token + identity), for the new serial. Live only once step 4 restarts the
//! agent.

use async_trait::async_trait;
use cert_auth::{LoginProof, MappingSpec, Unmanaged, login_gate, upsert_mapping};
use pki_ops::{
    CreatePolicy, FileSpec, IssuedMaterial, MaterialSet, Owner, RoleSpec, Tree, WriteReport,
    upsert_role,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vault_client::IssueRequest;

use crate::change::{Change, ChangeKind};
use crate::checks::VerifyReport;
use crate::config::{AppConfig, Config};
use crate::deps::Vault;
use crate::engine::context::Deps;
use crate::engine::{DynStep, Step, TargetPlan, Tx};
use crate::error::StepError;
use crate::host::owner_of;
use crate::state::journal::{RunRequest, StepId};
use crate::state::undo::UndoAction;
use crate::steps::common::{issue_mode, key_algorithm, policy_change, role_drift};
use crate::steps::def::{AppView, Ctx, Needs, Seen, StepDef};
use crate::topology::{Names, rel};

/// Step 3 over the apps of one invocation.
pub struct AgentsStep<'a> {
    cfg: &'a Config,
    deps: Deps<'a>,
    chain: String,
    /// Apps run concurrently: one of them enables cert auth, the others see it enabled.
    enabling: tokio::sync::Mutex<()>,
    /// What this step already found in place and, as it never removes them, need not
    /// ask again for the next app: cert auth enabled at the mount, the marker policy.
    auth_seen: std::sync::atomic::AtomicBool,
    marker_seen: std::sync::OnceLock<String>,
}

/// What the plan hands to apply.
pub struct AgentPlan {
    names: Names,
    owner: Owner,
    enable_auth: bool,
    role: Option<Option<Map<String, Value>>>,
    policies: Vec<(String, String, Option<String>)>,
    mapping: MappingSpec,
    mapping_previous: Option<vault_client::CertRole>,
    mapping_changes: bool,
}

/// What apply produced: the new certificate and where it went (journaled for re-gating).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentApplied {
    /// CN.
    pub cn: String,
    /// Serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Serial, decimal (as cert auth token metadata has it).
    pub serial_decimal: String,
    /// Not after, human.
    pub not_after: String,
    /// The files written.
    pub files: Vec<String>,
    /// The policies the token must carry, exactly.
    pub policies: Vec<String>,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct AgentProof {
    /// The login.
    pub login: LoginProof,
}

impl<'a> AgentsStep<'a> {
    /// Step 3 with the verified CA chain of the PKI mount.
    pub fn new(cfg: &'a Config, deps: Deps<'a>, chain: String) -> Self {
        AgentsStep {
            cfg,
            deps,
            chain,
            enabling: tokio::sync::Mutex::new(()),
            auth_seen: std::sync::atomic::AtomicBool::new(false),
            marker_seen: std::sync::OnceLock::new(),
        }
    }

    fn vault(&self) -> Vault<'a> {
        self.deps.vault
    }

    /// Plans cert auth at `[agents] cert_auth_mount`: whether apply must enable it.
    async fn plan_cert_auth(&self, changes: &mut Vec<Change>) -> Result<bool, StepError> {
        let v = self.vault();
        let mount = &self.cfg.agents.cert_auth_mount;
        if self.auth_seen.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let auths = v
            .sys
            .list_auth()
            .await
            .map_err(|e| StepError::vault("list auth methods (sys/auth)", e))?;
        let enable_auth = match auths.get(&format!("{mount}/")) {
            Some(m) if m.mount_type == "cert" => {
                self.auth_seen
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Some(m) => {
                return Err(StepError::Invalid {
                    what: format!("auth/{mount}"),
                    reason: format!("is a {} auth method, not cert", m.mount_type),
                });
            }
            None => {
                changes.push(Change::new(
                    ChangeKind::Create,
                    format!("auth/{mount} (cert)"),
                ));
                true
            }
        };
        Ok(enable_auth)
    }

    /// Plans the issue and marker policies: those apply must write, with their current text.
    async fn plan_policies(
        &self,
        app: &AppConfig,
        n: &Names,
        changes: &mut Vec<Change>,
    ) -> Result<Vec<(String, String, Option<String>)>, StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        let wanted = [
            (
                n.issue_policy.clone(),
                crate::topology::issue_policy_text(cfg, app),
                false,
            ),
            (
                cfg.agents.marker_policy.clone(),
                crate::topology::marker_policy_text(),
                true,
            ),
        ];
        // Both read at once (the marker once it was seen: it is created, never changed).
        let read = |name: String| async move {
            v.sys
                .read_policy(&name)
                .await
                .map_err(|e| StepError::vault(format!("read policy {name}"), e))
        };
        let marker = async {
            match self.marker_seen.get() {
                Some(text) => Ok(Some(text.clone())),
                None => read(wanted[1].0.clone()).await,
            }
        };
        let (issue, marker) = tokio::try_join!(read(wanted[0].0.clone()), marker)?;
        if let Some(text) = &marker {
            let _ = self.marker_seen.set(text.clone());
        }
        let mut policies = Vec::new();
        for ((name, text, create_only), previous) in wanted.into_iter().zip([issue, marker]) {
            let change = policy_change(&name, previous.as_deref(), &text, create_only);
            if change.kind == ChangeKind::Create {
                policies.push((name, text, previous));
            }
            changes.push(change);
        }
        Ok(policies)
    }

    /// Plans mapping `agent-<app>`: its spec, its current state, whether apply writes it.
    async fn plan_mapping(
        &self,
        app: &AppConfig,
        n: &Names,
        changes: &mut Vec<Change>,
    ) -> Result<(MappingSpec, Option<vault_client::CertRole>, bool), StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        let mount = &cfg.agents.cert_auth_mount;
        let mapping = mapping_spec(cfg, app, &self.chain);
        let mapping_previous = v
            .cert
            .read_cert_role(mount, &n.mapping)
            .await
            .map_err(|e| StepError::vault(format!("read auth/{mount}/certs/{}", n.mapping), e))?;
        let outcome = cert_auth::plan_mapping(mount, &mapping, mapping_previous.clone())?;
        let mapping_changes = outcome.action != cert_auth::MappingAction::Unchanged;
        changes.push(
            Change::new(
                match outcome.action {
                    cert_auth::MappingAction::Unchanged => ChangeKind::Unchanged,
                    cert_auth::MappingAction::Created | cert_auth::MappingAction::WouldCreate => {
                        ChangeKind::Create
                    }
                    _ => ChangeKind::Update,
                },
                &outcome.path,
            )
            .fields(crate::steps::common::drift_fields(&outcome.drift)),
        );
        Ok((mapping, mapping_previous, mapping_changes))
    }

    /// Plans the new certificate and the files it goes to in the app's tree.
    fn plan_files(
        &self,
        app: &AppConfig,
        n: &Names,
        tree: &Tree,
        changes: &mut Vec<Change>,
    ) -> Result<(), StepError> {
        let current_cert = tree.read(&rel::agent_cert())?.and_then(|pem| {
            pki_ops::CertInfo::from_pem_labeled(&String::from_utf8_lossy(&pem), "agent.crt").ok()
        });
        changes.push(crate::steps::common::new_cert_change(
            format!("certificate {} ({})", n.agent_cn, self.cfg.agents.ttl),
            current_cert.as_ref(),
            false,
        ));
        for f in [rel::agent_key(), rel::agent_cert(), rel::ca_file()] {
            tree.check_dir(&rel::parent(&f))?;
            let kind = match tree.stat(&f)? {
                Some(_) => ChangeKind::Update,
                None => ChangeKind::Create,
            };
            changes.push(Change::new(kind, app.home.join(f).display().to_string()));
        }
        Ok(())
    }

    /// Enables cert auth unless another app's apply just did, its disabling journaled first.
    async fn enable_cert_auth(&self, tx: &Tx<'_>) -> Result<(), StepError> {
        let v = self.vault();
        let mount = &self.cfg.agents.cert_auth_mount;
        let _one_at_a_time = self.enabling.lock().await;
        let auths = v
            .sys
            .list_auth()
            .await
            .map_err(|e| StepError::vault("list auth methods (sys/auth)", e))?;
        if !auths.contains_key(&format!("{mount}/")) {
            let description = format!(
                "cert auth for Vault Agents, enabled by rotate run {}",
                tx.run_id()
            );
            tx.record(UndoAction::DisableAuth {
                mount: mount.clone(),
                description: description.clone(),
            })?;
            cert_auth::ensure_enabled(v.sys, mount, &description, false).await?;
        }
        Ok(())
    }

    /// Writes role `agent-mtls-<app>`, its previous state journaled first.
    async fn write_role(
        &self,
        n: &Names,
        previous: Option<Map<String, Value>>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        tx.record(UndoAction::Role {
            mount: cfg.pki.mount.clone(),
            name: n.agent_role.clone(),
            previous,
        })?;
        upsert_role(
            v.pki,
            &cfg.pki.mount,
            &n.agent_role,
            &role_spec(cfg, n),
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await?;
        Ok(())
    }

    /// Writes the policies the plan found missing, each one's previous text journaled first.
    async fn write_policies(
        &self,
        policies: Vec<(String, String, Option<String>)>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let v = self.vault();
        for (name, text, previous) in policies {
            tx.record(UndoAction::Policy {
                name: name.clone(),
                previous,
            })?;
            v.sys
                .write_policy(&name, &text)
                .await
                .map_err(|e| StepError::vault(format!("write policy {name}"), e))?;
        }
        Ok(())
    }

    /// Issues the agent certificate (revoked on undo) and checks it, in memory.
    async fn issue(&self, n: &Names, tx: &Tx<'_>) -> Result<IssuedMaterial, StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        // Issue and check in memory before any file is written: a bad certificate never
        // reaches the agent's files (what was written to Vault before is undone with the
        // target).
        let req = IssueRequest {
            common_name: n.agent_cn.clone(),
            ttl: Some(cfg.agents.ttl.clone()),
            exclude_cn_from_sans: false,
            ..Default::default()
        };
        let issued = crate::steps::common::issue_client(
            v,
            tx,
            &cfg.pki.mount,
            &n.agent_role,
            &req,
            issue_mode(cfg.agents.key_mode),
            &self.chain,
            self.deps.clock,
            std::time::Duration::from_secs(3600),
        )
        .await?;
        issued.info.expect_issuer_cn(&cfg.pki.issuer_name)?;
        Ok(issued)
    }

    /// Stages `agent.key`, `agent.crt`, `ca.pem` (undo journaled), then replaces them.
    fn write_files(
        &self,
        app: &AppConfig,
        owner: Owner,
        issued: &IssuedMaterial,
        tx: &Tx<'_>,
    ) -> Result<WriteReport, StepError> {
        // Stage the whole set, then replace: a full disk fails before any rename.
        let tree = Tree::open(&app.home, Some(owner))?;
        let mut created = tree.ensure_dir(&rel::parent(&rel::agent_key()), 0o700)?;
        created.extend(tree.ensure_dir(&rel::parent(&rel::ca_file()), 0o755)?);
        if !created.is_empty() {
            tx.record(UndoAction::Dirs {
                root: app.home.clone(),
                dirs: created,
                owner: Some(owner),
            })?;
        }
        let set = MaterialSet::new()
            .with(
                FileSpec::private_key(rel::agent_key()),
                issued.key_pem.as_bytes().to_vec(),
            )
            .with(
                FileSpec::public(rel::agent_cert()),
                issued.fullchain_pem().into_bytes(),
            )
            .with(
                FileSpec::public(rel::ca_file()),
                self.chain.as_bytes().to_vec(),
            );
        let staged = set.stage(&tree, &tx.run_id())?;
        for u in staged.undo_records() {
            tx.record(UndoAction::File {
                undo: u,
                owner: Some(owner),
            })?;
        }
        Ok(staged.commit()?)
    }
}

/// The desired mapping `agent-<app>`: the PKI chain as CA, the agent CN, exactly the
/// agent policies (plus the KV policy when `[leaf] kv_access` is set; kept when an
/// earlier `--with-kv-access` run granted it).
pub(crate) fn mapping_spec(cfg: &Config, app: &AppConfig, chain: &str) -> MappingSpec {
    let n = Names::new(cfg, app);
    let mut token_policies = vec![n.issue_policy, cfg.agents.marker_policy.clone()];
    if cfg.leaf.kv_access {
        token_policies.push(n.kv_policy.clone());
    }
    MappingSpec {
        name: n.mapping,
        ca_pem: issuing_ca(chain),
        allowed_common_names: vec![n.agent_cn],
        token_policies,
        token_ttl: cfg.agents.token_ttl,
        token_max_ttl: None,
        keep_if_present: vec![n.kv_policy],
        unmanaged: if cfg.agents.converge_unmanaged {
            Unmanaged::Converge
        } else {
            Unmanaged::Refuse
        },
    }
}

/// The issuing CA alone (the chain's first certificate), what an agent mapping trusts: a
/// mapping trusting the root would let any other intermediate under it mint a login for
/// this agent. A CA change shows as mapping drift, and step 3 converges it.
pub(crate) fn issuing_ca(chain: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let first = chain.find("-----BEGIN CERTIFICATE-----").and_then(|start| {
        let end = chain[start..].find(END)? + start + END.len();
        Some(format!("{}\n", &chain[start..end]))
    });
    first.unwrap_or_else(|| chain.to_owned())
}

/// The desired role `agent-mtls-<app>`.
pub(crate) fn role_spec(cfg: &Config, n: &Names) -> RoleSpec {
    RoleSpec::agent_client(&n.agent_cn, &cfg.agents.ttl, &cfg.agents.max_ttl)
        .with_key(key_algorithm(cfg.agents.key_mode))
}

#[async_trait]
impl Step for AgentsStep<'_> {
    type Target = AppConfig;
    type Plan = AgentPlan;
    type Applied = AgentApplied;
    type Proof = AgentProof;

    fn id(&self) -> StepId {
        StepId::Agents
    }

    fn summary(&self, a: &AgentApplied, proof: Option<&AgentProof>) -> Vec<String> {
        let mut lines = vec![
            format!("serial_hex: {}", a.serial_hex),
            format!("not_after: {}", a.not_after),
        ];
        if let Some(p) = proof {
            lines.push(format!(
                "gate: cert login OK, policies {}",
                p.login.token_policies.join(",")
            ));
        }
        lines
    }

    fn targets<'t>(&'t self, apps: &[&'t AppConfig]) -> Vec<&'t AppConfig> {
        apps.to_vec()
    }

    async fn plan(&self, app: &AppConfig) -> Result<TargetPlan<AgentPlan>, StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        let n = Names::new(cfg, app);
        let owner = owner_of(app)?;
        let tree = Tree::open(&app.home, Some(owner))?;
        let mut changes = Vec::new();

        // Every read at once (each is a round trip; none depends on another), the
        // changes reported in this order.
        let (mut auth_changes, mut policy_changes, mut mapping_changes_list) =
            (Vec::new(), Vec::new(), Vec::new());
        let spec = role_spec(cfg, &n);
        let (enable_auth, (change, role), policies, (mapping, mapping_previous, mapping_changes)) =
            tokio::try_join!(
                self.plan_cert_auth(&mut auth_changes),
                crate::steps::common::plan_role(
                    v,
                    &cfg.pki.mount,
                    &n.agent_role,
                    &spec,
                    cfg.agents.create_roles,
                    "[agents] create_roles",
                ),
                self.plan_policies(app, &n, &mut policy_changes),
                self.plan_mapping(app, &n, &mut mapping_changes_list),
            )?;
        changes.append(&mut auth_changes);
        changes.push(change);
        changes.append(&mut policy_changes);
        changes.append(&mut mapping_changes_list);

        self.plan_files(app, &n, &tree, &mut changes)?;
        Ok(TargetPlan {
            changes,
            data: AgentPlan {
                names: n,
                owner,
                enable_auth,
                role,
                policies,
                mapping,
                mapping_previous,
                mapping_changes,
            },
        })
    }

    async fn apply(
        &self,
        app: &AppConfig,
        plan: TargetPlan<AgentPlan>,
        tx: &Tx<'_>,
    ) -> Result<AgentApplied, StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        let p = plan.data;
        let n = &p.names;
        let mount = &cfg.agents.cert_auth_mount;

        if p.enable_auth {
            self.enable_cert_auth(tx).await?;
        }
        if let Some(previous) = p.role {
            self.write_role(n, previous, tx).await?;
        }
        self.write_policies(p.policies, tx).await?;

        let issued = self.issue(n, tx).await?;

        let written = self.write_files(app, p.owner, &issued, tx)?;

        if p.mapping_changes {
            tx.record(UndoAction::Mapping {
                mount: mount.clone(),
                name: n.mapping.clone(),
                previous: p.mapping_previous,
            })?;
        }
        let outcome = upsert_mapping(v.cert, mount, &p.mapping, false).await?;
        Ok(AgentApplied {
            cn: n.agent_cn.clone(),
            serial_hex: issued.info.serial_hex.clone(),
            serial_decimal: issued.info.serial_decimal.clone(),
            not_after: issued.info.not_after_human.clone(),
            files: written
                .files
                .iter()
                .map(|f| app.home.join(&f.path).display().to_string())
                .collect(),
            policies: outcome.token_policies,
        })
    }

    async fn gate(&self, app: &AppConfig, a: &AgentApplied) -> Result<AgentProof, StepError> {
        let (cfg, v) = (self.cfg, self.vault());
        let n = Names::new(cfg, app);
        let mount = &cfg.agents.cert_auth_mount;
        let gate = v.active_gate(cfg.is_cluster(), cfg.failover_window()).await;
        let fresh = gate
            .get()
            .connect(&crate::host::agent_identity(app)?)
            .map_err(|e| StepError::vault("build the gate client from the new files", e))?;
        let login = login_gate(
            fresh.as_ref(),
            Some(v.token),
            mount,
            &n.mapping,
            &a.policies,
            Some(&a.serial_decimal),
        )
        .await?;
        Ok(AgentProof { login })
    }

    async fn not_due(&self, app: &AppConfig) -> Result<Option<String>, StepError> {
        let tree = Tree::open(&app.home, Some(owner_of(app)?))?;
        let what = format!("agent certificate of {}", app.name);
        let cert = tree
            .read(&rel::agent_cert())?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let key = tree.read(&rel::agent_key())?;
        let key = key.as_deref().map(|k| k.as_slice());
        if crate::steps::common::pair_broken(&what, key, cert.as_deref()).is_some() {
            return Ok(None);
        }
        // A drifted mapping (e.g. debug-policy re-attached) is converged, not left alone.
        let spec = mapping_spec(self.cfg, app, &self.chain);
        let drift = upsert_mapping(
            self.deps.vault.cert,
            &self.cfg.agents.cert_auth_mount,
            &spec,
            true,
        )
        .await?;
        if !drift.drift.is_empty() || drift.action != cert_auth::MappingAction::Unchanged {
            tracing::info!(app = %app.name, "due: mapping missing or drifted");
            return Ok(None);
        }
        let now = (self.deps.clock)();
        Ok(crate::steps::common::pair_not_due(
            self.cfg,
            now,
            &what,
            key,
            cert.as_deref(),
            &self.chain,
        ))
    }

    fn pending(&self, app: &AppConfig) -> Option<String> {
        Some(format!(
            "live once step 4 restarts {} (a running agent keeps the old certificate on open connections)",
            app.unit()
        ))
    }
}

/// Step 3 in the list.
pub(crate) struct Def;

#[async_trait]
impl StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Agents
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        _request: &RunRequest,
    ) -> Box<dyn DynStep + 'a> {
        Box::new(AgentsStep::new(cfg, deps, chain.to_owned()))
    }

    fn needs(&self, ctx: &Ctx<'_>, needs: &mut Needs) {
        let (cfg, pki) = (ctx.cfg, &ctx.cfg.pki.mount);
        for app in ctx.apps {
            let n = Names::new(cfg, app);
            needs.cap(format!("{pki}/roles/{}", n.agent_role), "update");
            needs.cap(format!("{pki}/sign/{}", n.agent_role), "update");
            needs.cap(format!("sys/policies/acl/{}", n.issue_policy), "update");
            needs.cap(
                format!("auth/{}/certs/{}", cfg.agents.cert_auth_mount, n.mapping),
                "update",
            );
            needs.roles.push((pki.clone(), n.agent_role));
        }
    }

    /// The agent's login pair, its mapping (drift, and no `[leaf] remove_policies`), its
    /// role, and a cert login with its files giving the mapping's policies.
    async fn verify_app(
        &self,
        ctx: &Ctx<'_>,
        view: &AppView<'_>,
        seen: &Seen,
        r: &mut VerifyReport,
    ) {
        let (cfg, app, n, now) = (ctx.cfg, view.app, &view.names, ctx.now());
        let a = &app.name;
        let agent = (|| {
            let crt = view.read(&rel::agent_cert())?;
            let key = view.read(&rel::agent_key())?;
            let e = |x: &dyn std::fmt::Display| format!("{x:#}");
            pki_ops::key_matches_cert(&key, &crt).map_err(|x| e(&x))?;
            let info = pki_ops::CertInfo::from_pem_labeled(&crt, "agent.crt").map_err(|x| e(&x))?;
            info.expect_cn(&n.agent_cn).map_err(|x| e(&x))?;
            info.expect_validity(now, std::time::Duration::from_secs(3600), None)
                .map_err(|x| e(&x))?;
            Ok(info)
        })();
        match agent {
            Ok(info) => {
                r.check(
                    format!("agent certificate of {a}"),
                    Ok(format!(
                        "serial {}, key matches, not after {}",
                        info.serial_hex, info.not_after_human
                    )),
                );
                let location = app.home.join(rel::agent_cert()).display().to_string();
                r.material(
                    crate::checks::Labels::app(crate::checks::MaterialKind::Agent, a),
                    format!("agent certificate of {a}"),
                    location,
                    &info,
                    now,
                );
            }
            Err(why) => r.check(format!("agent certificate of {a}"), Err(why)),
        }
        let expected = match &seen.chain {
            Some(chain) => verify_mapping(ctx, app, chain, r).await,
            None => None,
        };
        let role = format!("{}/roles/{}", cfg.pki.mount, n.agent_role);
        let drift = role_drift(
            ctx.deps.vault,
            &cfg.pki.mount,
            &n.agent_role,
            &role_spec(cfg, n),
        )
        .await;
        r.check(format!("role {role}"), drift);
        if let Some(expected) = expected {
            r.check(
                format!("cert login of {a}"),
                cert_login(ctx, app, n, &expected).await,
            );
        }
    }
}

/// The mapping of `app` has not drifted and carries none of `[leaf] remove_policies`;
/// its policies, when it is as rotate manages it.
async fn verify_mapping(
    ctx: &Ctx<'_>,
    app: &AppConfig,
    chain: &str,
    r: &mut VerifyReport,
) -> Option<Vec<String>> {
    let (cfg, a) = (ctx.cfg, &app.name);
    let spec = mapping_spec(cfg, app, chain);
    let outcome = upsert_mapping(
        ctx.deps.vault.cert,
        &cfg.agents.cert_auth_mount,
        &spec,
        true,
    )
    .await;
    if let Ok(o) = &outcome {
        let dangerous: Vec<&str> = o
            .previous
            .iter()
            .flat_map(|m| &m.token_policies)
            .filter(|p| cfg.leaf.remove_policies.contains(p))
            .map(String::as_str)
            .collect();
        if !dangerous.is_empty() {
            r.check(
                format!("mapping {} of {a} carries no [leaf] remove_policies", o.path),
                Err(format!(
                    "it carries {}: every token of this agent has it; `rotate run --app {a}` removes it",
                    dangerous.join(", ")
                )),
            );
        }
    }
    match outcome {
        Ok(o) if o.drift.is_empty() => {
            r.check(
                format!("mapping {} of {a}", o.path),
                Ok(format!("policies {:?}", o.token_policies)),
            );
            Some(o.token_policies)
        }
        Ok(o) => {
            r.check(
                format!("mapping {} of {a}", o.path),
                Err(format!(
                    "drifted: {}; `rotate run --step agents --app {a}` converges it",
                    o.drift
                        .iter()
                        .map(|d| format!("{} is {} (want {})", d.field, d.actual, d.desired))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            );
            None
        }
        Err(x) => {
            r.check(format!("mapping agent-{a}"), Err(format!("{x:#}")));
            None
        }
    }
}

/// A cert login as the agent would make it, with its files: exactly `expected`.
async fn cert_login(
    ctx: &Ctx<'_>,
    app: &AppConfig,
    n: &Names,
    expected: &[String],
) -> Result<String, String> {
    let v = ctx.deps.vault;
    let e = |x: &dyn std::fmt::Display| format!("{x:#}");
    let id = crate::host::agent_identity(app).map_err(|x| e(&x))?;
    let gate = v
        .active_gate(ctx.cfg.is_cluster(), ctx.cfg.failover_window())
        .await;
    let c = gate.get().connect(&id).map_err(|x| e(&x))?;
    login_gate(
        c.as_ref(),
        Some(v.token),
        &ctx.cfg.agents.cert_auth_mount,
        &n.mapping,
        expected,
        None,
    )
    .await
    .map(|p| format!("policies {:?}", p.token_policies))
    .map_err(|x| e(&x))
}
