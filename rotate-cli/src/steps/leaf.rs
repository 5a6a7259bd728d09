//! Step 4: app leaf certificates through the app's agent, with post-hook reloads.
//!
//! Plan (reads only): mapping from step 3 present, role `nginx-<app>` (exactly the app's
//! own name unless `[leaf] allow_subdomains`), mapping policies (`remove_policies`
//! removed, an unknown extra refused), KV policy and seed, the agent config and post-hook
//! texts. Apply (each write preceded by its undo record): role, KV policy, KV seed
//! (check-and-set 0, never an overwrite), mapping, agent config + post-hook staged and
//! replaced as one set, restart of `vault-agent-<app>.service` (which also makes step 3
//! live). Gate: the agent renders a *new* leaf (CN, SAN, issuer, validity window, key
//! match, chain, key `0600` owned by the app), the unit is still active, a cert login with the
//! agent's files gives exactly the expected policies, and the agent's own token was
//! issued for the step-3 certificate and may issue the leaf.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cert_auth::{LoginProof, login_gate, upsert_mapping};
use hooks::{AgentConfigSpec, PostHookSpec, Reloader};
use pki_ops::{CertInfo, CreatePolicy, FileSpec, MaterialSet, Owner, RoleSpec, Tree, upsert_role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::change::{Change, ChangeKind};
use crate::checks::{PreflightReport, VerifyReport};
use crate::config::{AppConfig, Config};
use crate::deps::Vault;
use crate::engine::context::Deps;
use crate::engine::{DynStep, Step, TargetPlan, Tx};
use crate::error::StepError;
use crate::exit::Exit;
use crate::host::owner_of;
use crate::state::journal::{RunRequest, StepId};
use crate::state::undo::UndoAction;
use crate::steps::agents::mapping_spec;
use crate::steps::common::policy_change;
use crate::steps::common::{key_algorithm, role_drift};
use crate::steps::def::{AppView, Ctx, Needs, Seen, StepDef};
use crate::topology::{Names, home_path, rel};

/// Step 4 over the apps of one invocation.
pub struct LeafStep<'a> {
    cfg: &'a Config,
    deps: Deps<'a>,
    chain: String,
    kv_access: bool,
    kv_seed: bool,
}

/// What a rendered leaf must be.
#[derive(Debug, Clone, Copy)]
pub struct LeafExpectation<'a> {
    /// Subject CN (also the one DNS SAN), e.g. `ncprd1.int.privsec.ch`.
    pub cn: &'a str,
    /// Issuer CN, e.g. `PrivSec Intermediate CA (prod)`.
    pub issuer: &'a str,
    /// At least this much validity left.
    pub min_remaining: Duration,
    /// At most this total lifetime.
    pub max_lifetime: Duration,
}

/// The leaf gate on PEM text alone: `fullchain` holds a server leaf as `want` says, valid
/// at `now`, chaining to `ca`; `key` matches it.
pub fn verify_leaf(
    fullchain: &str,
    key: &str,
    ca: &str,
    want: &LeafExpectation<'_>,
    now: i64,
) -> Result<CertInfo, StepError> {
    let info = CertInfo::from_pem_labeled(fullchain, "fullchain")?;
    info.expect_cn(want.cn)?;
    if !info.dns_sans.iter().any(|s| s == want.cn) {
        return Err(StepError::Invalid {
            what: "leaf SAN".into(),
            reason: format!("DNS SANs {:?} do not include {}", info.dns_sans, want.cn),
        });
    }
    info.expect_issuer_cn(want.issuer)?;
    info.expect_server_auth()?;
    info.expect_validity(now, want.min_remaining, Some(want.max_lifetime))?;
    pki_ops::key_matches_cert(key, fullchain)?;
    pki_ops::verify_chain(fullchain, fullchain, ca, now)?;
    Ok(info)
}

/// What the plan hands to apply.
pub struct LeafPlan {
    names: Names,
    owner: Owner,
    role: Option<Option<Map<String, Value>>>,
    kv_policy: Option<Option<String>>,
    seed: bool,
    mapping: cert_auth::MappingSpec,
    hook: String,
    agent: String,
}

/// What apply produced (journaled, for re-gating on resume).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafApplied {
    /// Serial of the leaf before the restart (a render must replace it).
    pub previous_serial: Option<String>,
    /// The post-hook's status line before the restart: a different `failed` line after it
    /// is this render's failure (e.g. it could not install the pair: nothing replaced).
    #[serde(default)]
    pub previous_hook_status: Option<String>,
    /// The policies a cert login must give, exactly.
    pub policies: Vec<String>,
    /// Policies removed from the mapping.
    pub removed_policies: Vec<String>,
    /// The KV seed: created by this run?
    pub seeded: bool,
    /// The agent login certificate's serial (decimal), from step 3.
    pub agent_serial: String,
}

/// What the gate proved.
#[derive(Debug, Serialize)]
pub struct LeafProof {
    /// The new leaf.
    pub leaf: CertInfo,
    /// Cert login with the agent's files.
    pub login: LoginProof,
    /// The restarted agent's own token was issued for this serial: step 3 is live.
    pub agent_login_serial: String,
}

impl<'a> LeafStep<'a> {
    /// Step 4 with the verified CA chain and the KV switches.
    pub fn new(
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: String,
        kv_access: bool,
        kv_seed: bool,
    ) -> Self {
        LeafStep {
            cfg,
            deps,
            chain,
            kv_access: kv_access || cfg.leaf.kv_access,
            kv_seed: kv_seed || cfg.leaf.kv_seed,
        }
    }

    fn vault(&self) -> Vault<'a> {
        self.deps.vault
    }

    fn kv_mount(&self) -> &str {
        self.cfg.leaf.kv_mount.trim_matches('/')
    }

    fn role_spec(&self, n: &Names) -> RoleSpec {
        leaf_role_spec(self.cfg, n)
    }
}

/// The desired role `nginx-<app>`.
pub(crate) fn leaf_role_spec(cfg: &Config, n: &Names) -> RoleSpec {
    let c = &cfg.leaf;
    let spec = if c.allow_subdomains {
        RoleSpec::server_leaf_subdomains(c.allowed_domains.clone(), &c.ttl, &c.max_ttl)
    } else {
        RoleSpec::server_leaf(vec![n.leaf_cn.clone()], &c.ttl, &c.max_ttl)
    };
    spec.with_key(key_algorithm(cfg.agents.key_mode))
}

fn agent_spec(cfg: &Config, app: &AppConfig, n: &Names) -> AgentConfigSpec {
    let mut s = AgentConfigSpec::new(
        &app.name,
        &cfg.vault_addr(),
        &cfg.pki.mount,
        &n.leaf_cn,
        crate::topology::agent_files(app),
    );
    s.tls_server_name = cfg.vault_server_name();
    s.mount = format!("auth/{}", cfg.agents.cert_auth_mount);
    s.leaf_ttl = cfg.leaf.ttl.clone();
    s
}

fn post_hook_spec(cfg: &Config, app: &AppConfig) -> PostHookSpec {
    let mut s = PostHookSpec::new(
        &app.name,
        home_path(app, rel::fullchain(app)),
        home_path(app, rel::leaf_key(app)),
    );
    // The agent renders both into one file; the hook installs them as a matched pair.
    s.rendered_path = Some(app.home.join(rel::leaf_render(app)));
    if !cfg.leaf.reload_tls_label.is_empty() {
        s = s.reload_tls_label(&cfg.leaf.reload_tls_label);
    }
    if !cfg.leaf.proxy_reload.is_empty() {
        s = s.proxy_reload(&cfg.leaf.proxy_reload);
    }
    s.status_path(app.home.join(rel::post_hook_status(app)))
}

fn restart_reloader(app: &AppConfig) -> Reloader {
    Reloader::SystemdUser {
        unit: app.unit(),
        user: Some(app.user().to_owned()),
        xdg_runtime_dir: None,
    }
}

fn gate_err(app: &AppConfig, reason: String) -> StepError {
    StepError::Gate {
        step: "leaf",
        app: app.name.clone(),
        reason,
    }
}

fn read_text(tree: &Tree, rel: &Path) -> Result<Option<String>, StepError> {
    Ok(tree
        .read(rel)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn text_change(object: &Path, current: Option<&str>, desired: &str) -> Change {
    let kind = match current {
        None => ChangeKind::Create,
        Some(c) if c == desired => ChangeKind::Unchanged,
        Some(_) => ChangeKind::Update,
    };
    Change::new(kind, object.display().to_string())
}

#[async_trait]
impl Step for LeafStep<'_> {
    type Target = AppConfig;
    type Plan = LeafPlan;
    type Applied = LeafApplied;
    type Proof = LeafProof;

    fn id(&self) -> StepId {
        StepId::Leaf
    }

    fn concurrency(&self, _configured: usize) -> usize {
        self.cfg.run.agent_concurrency
    }

    fn summary(&self, a: &LeafApplied, proof: Option<&LeafProof>) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(s) = &a.previous_serial {
            lines.push(format!("previous_serial: {s}"));
        }
        if !a.removed_policies.is_empty() {
            lines.push(format!(
                "removed_policies: {}",
                a.removed_policies.join(",")
            ));
        }
        if let Some(p) = proof {
            lines.push(format!(
                "leaf: CN {}  serial {}  notAfter {}",
                p.leaf.subject_cn.as_deref().unwrap_or("<none>"),
                p.leaf.serial_hex,
                p.leaf.not_after_human
            ));
            lines.push(format!(
                "agent logged in with certificate serial {} (step 3 live)",
                p.agent_login_serial
            ));
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

    fn facts(&self, proof: &LeafProof) -> Vec<crate::engine::Fact> {
        vec![crate::engine::Fact::AgentLoggedIn {
            serial: proof.agent_login_serial.clone(),
        }]
    }

    async fn not_due(&self, app: &AppConfig) -> Result<Option<String>, StepError> {
        let tree = Tree::open(&app.home, Some(owner_of(app)?))?;
        let what = format!("leaf of {}", app.name);
        crate::steps::common::pair_in_tree_not_due(
            self.cfg,
            (self.deps.clock)(),
            &what,
            &tree,
            (&rel::fullchain(app), &rel::leaf_key(app)),
            &self.chain,
        )
    }

    async fn plan(&self, app: &AppConfig) -> Result<TargetPlan<LeafPlan>, StepError> {
        let cfg = self.cfg;
        let n = Names::new(cfg, app);
        let owner = owner_of(app)?;
        let tree = Tree::open(&app.home, Some(owner))?;
        let mut changes = Vec::new();

        let current = self.step3_mapping(&n).await?;
        if tree.read(&rel::agent_cert())?.is_none() {
            return Err(StepError::NeedsEarlier {
                what: format!("{}", app.home.join(rel::agent_cert()).display()),
                step: StepId::Agents,
            });
        }
        let (hook, agent) = plan_agent_files(cfg, app, &n, &tree, &mut changes)?;
        let role = self.plan_role(&n, &mut changes).await?;
        let kv_policy = if self.kv_access {
            self.plan_kv_policy(app, &n, &mut changes).await?
        } else {
            None
        };
        let seed = if self.kv_access || self.kv_seed {
            self.plan_seed(app, &mut changes).await?
        } else {
            false
        };
        let spec = self.plan_mapping(app, &n, &current, &mut changes).await?;
        changes.push(
            Change::new(ChangeKind::Update, format!("unit {}", app.unit())).note(
                "restart: the agent renders a new leaf and logs in with the step-3 certificate",
            ),
        );

        Ok(TargetPlan {
            changes,
            data: LeafPlan {
                names: n,
                owner,
                role,
                kv_policy,
                seed,
                mapping: spec,
                hook,
                agent,
            },
        })
    }

    async fn apply(
        &self,
        app: &AppConfig,
        plan: TargetPlan<LeafPlan>,
        tx: &Tx<'_>,
    ) -> Result<LeafApplied, StepError> {
        let p = plan.data;
        let n = &p.names;
        let tree = Tree::open(&app.home, Some(p.owner))?;
        // Whether the agent runs now decides what undo does with it: a state that cannot
        // be read is unknown, never a guess, and stops here, before any write.
        let unit = app.unit();
        let was_active = self.agent_was_active(app, &unit).await?;

        if let Some(previous) = p.role {
            self.write_role(n, previous, tx).await?;
        }
        if let Some(previous) = p.kv_policy {
            self.write_kv_policy(app, n, previous, tx).await?;
        }
        let seeded = if p.seed {
            self.seed_kv(app, tx).await?
        } else {
            false
        };
        let (outcome, mapping_before) = self.write_mapping(n, &p.mapping, tx).await?;

        // Agent files: directories, then hook + config staged together, then replaced.
        write_agent_files(app, &tree, p.owner, p.hook, p.agent, tx)?;

        let previous_hook_status = tree
            .read(&rel::post_hook_status(app))?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
        let previous_serial = tree
            .read(&rel::fullchain(app))?
            .and_then(|b| {
                CertInfo::from_pem_labeled(&String::from_utf8_lossy(&b), "fullchain").ok()
            })
            .map(|c| c.serial_hex);
        let agent_serial = agent_cert_serial(app, &tree)?;
        keep_agent_outputs(app, &tree, p.owner, tx)?;
        self.restart_agent(app, n, unit, was_active, tx).await?;
        Ok(LeafApplied {
            previous_serial,
            previous_hook_status,
            removed_policies: mapping_before
                .map(|m| m.token_policies)
                .unwrap_or_default()
                .into_iter()
                .filter(|x| !outcome.token_policies.contains(x))
                .collect(),
            policies: outcome.token_policies,
            seeded,
            agent_serial,
        })
    }

    async fn gate(&self, app: &AppConfig, a: &LeafApplied) -> Result<LeafProof, StepError> {
        let cfg = self.cfg;
        let n = Names::new(cfg, app);
        let owner = owner_of(app)?;
        let tree = Tree::open(&app.home, Some(owner))?;
        let deadline = Instant::now() + cfg.duration(&cfg.leaf.render_timeout);
        let want = LeafExpectation {
            cn: &n.leaf_cn,
            issuer: &cfg.pki.issuer_name,
            min_remaining: cfg.duration(&cfg.leaf.min_remaining),
            max_lifetime: cfg.duration(&cfg.leaf.max_lifetime),
        };
        let ca = read_text(&tree, &rel::ca_file())?.unwrap_or_default();

        // Three proofs, awaited together (none waits on another; the first failure ends
        // the gate): a new leaf whose post-hook reported success for exactly these bytes,
        // from an agent still running; a cert login with the agent's own files; the
        // restarted agent's own login with the step-3 certificate.
        let rendered = async {
            let leaf = self
                .await_new_leaf(app, a, &tree, &ca, &want, deadline, &mut VaultWatch::new())
                .await?;
            check_leaf_key(app, &tree, owner)?;
            self.agent_still_active(app).await?;
            Ok::<_, StepError>(leaf)
        };
        let mut watch = VaultWatch::new();
        let agent_login = self.await_agent_login(app, a, &n, &tree, deadline, &mut watch);
        let (leaf, login, agent_login_serial) =
            tokio::try_join!(rendered, self.cert_login(app, &n, a), agent_login)?;
        Ok(LeafProof {
            leaf,
            login,
            agent_login_serial,
        })
    }
}

/// Plan's and apply's phases, one per helper.
impl LeafStep<'_> {
    /// Step 3's mapping, which step 4 amends: its absence means step 3 has not run.
    async fn step3_mapping(&self, n: &Names) -> Result<vault_client::CertRole, StepError> {
        let mount = &self.cfg.agents.cert_auth_mount;
        self.vault()
            .cert
            .read_cert_role(mount, &n.mapping)
            .await
            .map_err(|e| StepError::vault(format!("read auth/{mount}/certs/{}", n.mapping), e))?
            .ok_or_else(|| StepError::NeedsEarlier {
                what: format!("mapping auth/{mount}/certs/{}", n.mapping),
                step: StepId::Agents,
            })
    }

    /// Plans the role `nginx-<app>`: the previous role when it must be written (the undo).
    async fn plan_role(
        &self,
        n: &Names,
        changes: &mut Vec<Change>,
    ) -> Result<Option<Option<Map<String, Value>>>, StepError> {
        let cfg = self.cfg;
        let path = format!("{}/roles/{}", cfg.pki.mount, n.leaf_role);
        let previous = self
            .vault()
            .pki
            .read_role(&cfg.pki.mount, &n.leaf_role)
            .await
            .map_err(|e| StepError::vault(format!("read {path}"), e))?;
        let diff = previous
            .as_ref()
            .map(|p| pki_ops::diff_role(&self.role_spec(n), p));
        let mut role_change = match &diff {
            None => Change::new(ChangeKind::Create, &path),
            Some(d) if d.is_empty() => Change::new(ChangeKind::Unchanged, &path),
            Some(d) => {
                Change::new(ChangeKind::Update, &path).fields(crate::steps::common::role_fields(d))
            }
        };
        if cfg.leaf.allow_subdomains {
            role_change = role_change.needs_attention().note(format!(
                "WARNING: [leaf] allow_subdomains: this agent may issue for any name under {}, including other apps and Vault's own name",
                cfg.leaf.allowed_domains.join(", ")
            ));
        }
        let role = (role_change.kind != ChangeKind::Unchanged).then(|| previous.clone());
        changes.push(role_change);
        Ok(role)
    }

    /// Plans the app's KV policy: its undo if it is to be created (an existing one is kept).
    async fn plan_kv_policy(
        &self,
        app: &AppConfig,
        n: &Names,
        changes: &mut Vec<Change>,
    ) -> Result<Option<Option<String>>, StepError> {
        let prev = self
            .vault()
            .sys
            .read_policy(&n.kv_policy)
            .await
            .map_err(|e| StepError::vault(format!("read policy {}", n.kv_policy), e))?;
        let c = policy_change(
            &n.kv_policy,
            prev.as_deref(),
            &crate::topology::kv_policy_text(self.kv_mount(), &app.name),
            false,
        );
        let create = c.kind == ChangeKind::Create;
        changes.push(c);
        Ok(create.then_some(prev))
    }

    /// Plans the KV seed: whether this run creates it (an existing secret is never touched).
    async fn plan_seed(
        &self,
        app: &AppConfig,
        changes: &mut Vec<Change>,
    ) -> Result<bool, StepError> {
        let exists = self
            .vault()
            .kv
            .kv2_read_metadata(self.kv_mount(), &app.name)
            .await
            .map_err(|e| {
                StepError::vault(format!("read {}/metadata/{}", self.kv_mount(), app.name), e)
            })?
            .is_some();
        let object = format!("{}/{}", self.kv_mount(), app.name);
        changes.push(match (exists, self.kv_seed) {
            (true, _) => {
                Change::new(ChangeKind::Unchanged, object).note("exists, never overwritten")
            }
            (false, true) => Change::new(ChangeKind::Create, object).note("seed (check-and-set 0)"),
            (false, false) => Change::new(ChangeKind::Unchanged, object)
                .note("missing; no seed (--with-kv-seed not set)"),
        });
        Ok(!exists && self.kv_seed)
    }

    /// Plans the mapping with exactly step 4's policies: the spec, and whether it changes.
    async fn plan_mapping(
        &self,
        app: &AppConfig,
        n: &Names,
        current: &vault_client::CertRole,
        changes: &mut Vec<Change>,
    ) -> Result<cert_auth::MappingSpec, StepError> {
        let cfg = self.cfg;
        let mount = &cfg.agents.cert_auth_mount;
        // Mapping: exactly the agent policies; `remove_policies` removed; anything else
        // unexpected is refused rather than silently dropped.
        let mut spec = mapping_spec(cfg, app, &self.chain);
        if self.kv_access && !spec.token_policies.contains(&n.kv_policy) {
            spec.token_policies.push(n.kv_policy.clone());
        }
        refuse_unmanaged_policies(cfg, n, &spec, current)?;
        let outcome = upsert_mapping(self.vault().cert, mount, &spec, true).await?;
        let mapping_changes = outcome.action != cert_auth::MappingAction::Unchanged;
        let removed: Vec<String> = current
            .token_policies
            .iter()
            .filter(|p| !outcome.token_policies.contains(p))
            .cloned()
            .collect();
        let mut mc = Change::new(
            if mapping_changes {
                ChangeKind::Update
            } else {
                ChangeKind::Unchanged
            },
            &outcome.path,
        )
        .fields(crate::steps::common::drift_fields(&outcome.drift));
        if !removed.is_empty() {
            mc = mc.note(format!("removes {}", removed.join(", ")));
        }
        changes.push(mc);
        Ok(spec)
    }

    /// Whether the agent runs before the restart, so undo leaves it as it found it.
    async fn agent_was_active(&self, app: &AppConfig, unit: &str) -> Result<bool, StepError> {
        let cfg = self.cfg;
        let state = hooks::unit_state(
            self.deps.runner,
            unit,
            Some(app.user()),
            cfg.duration(&cfg.leaf.command_timeout),
        )
        .await
        .map_err(|e| StepError::Invalid {
            what: format!("state of {unit} (user {})", app.user()),
            reason: format!("cannot tell whether it runs ({e}); nothing was written"),
        })?;
        Ok(matches!(
            state.as_str(),
            "active" | "reloading" | "activating"
        ))
    }

    /// Writes the role `nginx-<app>`, its previous state journaled first.
    async fn write_role(
        &self,
        n: &Names,
        previous: Option<Map<String, Value>>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let cfg = self.cfg;
        tx.record(UndoAction::Role {
            mount: cfg.pki.mount.clone(),
            name: n.leaf_role.clone(),
            previous,
        })?;
        upsert_role(
            self.vault().pki,
            &cfg.pki.mount,
            &n.leaf_role,
            &self.role_spec(n),
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await?;
        Ok(())
    }

    /// Writes the app's KV policy, its previous text journaled first.
    async fn write_kv_policy(
        &self,
        app: &AppConfig,
        n: &Names,
        previous: Option<String>,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        tx.record(UndoAction::Policy {
            name: n.kv_policy.clone(),
            previous,
        })?;
        self.vault()
            .sys
            .write_policy(
                &n.kv_policy,
                &crate::topology::kv_policy_text(self.kv_mount(), &app.name),
            )
            .await
            .map_err(|e| StepError::vault(format!("write policy {}", n.kv_policy), e))?;
        Ok(())
    }

    /// Seeds the app's KV secret unless it exists: whether this run created it.
    async fn seed_kv(&self, app: &AppConfig, tx: &Tx<'_>) -> Result<bool, StepError> {
        let mut seeded = false;
        let run_id = tx.run_id();
        tx.record(UndoAction::DeleteKvSecret {
            mount: self.kv_mount().to_owned(),
            path: app.name.clone(),
            run_id: run_id.clone(),
        })?;
        let data = json!({"app": app.name, "seeded_by": "rotate", "rotate_run": run_id});
        let data = data.as_object().cloned().unwrap_or_default();
        match self
            .vault()
            .kv
            .kv2_write(self.kv_mount(), &app.name, data, Some(0))
            .await
        {
            Ok(_) => seeded = true,
            // Someone created it meanwhile: never an overwrite (the undo leaves it,
            // as it is not ours).
            Err(vault_client::Error::Api {
                status: 400,
                errors,
                ..
            }) if errors.iter().any(|m| m.contains("check-and-set")) => {}
            Err(e) => {
                return Err(StepError::vault(
                    format!("seed {}/data/{}", self.kv_mount(), app.name),
                    e,
                ));
            }
        }
        Ok(seeded)
    }

    /// Writes the mapping when it differs *now* (read again at apply: it may have changed
    /// since the plan), its state just before journaled first; what it is now and what it
    /// was.
    async fn write_mapping(
        &self,
        n: &Names,
        spec: &cert_auth::MappingSpec,
        tx: &Tx<'_>,
    ) -> Result<(cert_auth::MappingOutcome, Option<vault_client::CertRole>), StepError> {
        let (cert, mount) = (self.vault().cert, &self.cfg.agents.cert_auth_mount);
        let before = upsert_mapping(cert, mount, spec, true).await?;
        if before.action == cert_auth::MappingAction::Unchanged {
            return Ok((before.clone(), before.previous));
        }
        tx.record(UndoAction::Mapping {
            mount: mount.clone(),
            name: n.mapping.clone(),
            previous: before.previous.clone(),
        })?;
        let written = upsert_mapping(cert, mount, spec, false).await?;
        Ok((written, before.previous))
    }

    /// Restarts the agent so it renders a new leaf and logs in with the step-3 certificate.
    async fn restart_agent(
        &self,
        app: &AppConfig,
        n: &Names,
        unit: String,
        was_active: bool,
        tx: &Tx<'_>,
    ) -> Result<(), StepError> {
        let cfg = self.cfg;
        // Every leaf the agent issues from now on is revoked by undo (rotate never sees
        // their serials; the mount's certificates are scanned for the CN).
        let now = (self.deps.clock)();
        let wait =
            cfg.duration(&cfg.leaf.render_timeout) + 2 * cfg.duration(&cfg.leaf.command_timeout);
        tx.record(UndoAction::RevokeIssued {
            mount: cfg.pki.mount.clone(),
            cn: n.leaf_cn.clone(),
            after: now,
            // What the agent issues while this step waits on it; its later renewals
            // (after a commit) are its own.
            until: now + wait.as_secs() as i64 + 120,
        })?;
        tx.record(UndoAction::StopUnit {
            unit: unit.clone(),
            user: Some(app.user().to_owned()),
        })?;
        tx.record(UndoAction::RestartUnit {
            unit,
            user: Some(app.user().to_owned()),
            was_active,
        })?;
        hooks::reload(
            self.deps.runner,
            &restart_reloader(app),
            cfg.duration(&cfg.leaf.command_timeout),
        )
        .await
        .map_err(|e| gate_err(app, format!("restart of {} failed: {e}", app.unit())))?;
        Ok(())
    }
}

/// The gate's phases, one per helper.
impl LeafStep<'_> {
    /// Waits for the new, valid leaf the post-hook installed: the render's proof.
    #[allow(clippy::too_many_arguments)]
    async fn await_new_leaf(
        &self,
        app: &AppConfig,
        a: &LeafApplied,
        tree: &Tree,
        ca: &str,
        want: &LeafExpectation<'_>,
        deadline: Instant,
        watch: &mut VaultWatch,
    ) -> Result<CertInfo, StepError> {
        let cfg = self.cfg;
        let mut pause = crate::pause::Pause::new();
        let mut last;
        loop {
            match self.check_render(app, a, tree, ca, want) {
                Ok(x) => return Ok(x),
                Err(GateWait::Fatal(e)) => return Err(gate_err(app, e)),
                Err(GateWait::Retry(e)) => last = e,
            }
            watch
                .check(self.vault().sys, &self.cfg.vault_addr())
                .await?;
            if Instant::now() > deadline {
                return Err(gate_err(
                    app,
                    format!(
                        "no new, valid leaf at {} within {} of restarting {}: {last}; check the agent's log",
                        home_path(app, rel::fullchain(app)).display(),
                        cfg.leaf.render_timeout,
                        app.unit()
                    ),
                ));
            }
            tokio::time::sleep(pause.next()).await;
        }
    }

    /// One look at the render: the new leaf once installed, else why not (yet).
    fn check_render(
        &self,
        app: &AppConfig,
        a: &LeafApplied,
        tree: &Tree,
        ca: &str,
        want: &LeafExpectation<'_>,
    ) -> Result<CertInfo, GateWait> {
        let fc = tree.read(&rel::fullchain(app))?.ok_or("no fullchain yet")?;
        let fc_text = String::from_utf8_lossy(&fc).into_owned();
        let key = tree.read(&rel::leaf_key(app))?.ok_or("no key yet")?;
        let info = match verify_leaf(
            &fc_text,
            &String::from_utf8_lossy(&key),
            ca,
            want,
            (self.deps.clock)(),
        ) {
            Ok(info) => info,
            Err(e) => {
                if let Some(reason) = new_hook_failure(tree, app, a)? {
                    return Err(GateWait::Fatal(format!("the post-hook failed: {reason}")));
                }
                return Err(e.to_string().into());
            }
        };
        if a.previous_serial.as_deref() == Some(info.serial_hex.as_str()) {
            if let Some(reason) = new_hook_failure(tree, app, a)? {
                return Err(GateWait::Fatal(format!(
                    "the post-hook could not install the new leaf: {reason}"
                )));
            }
            return Err::<_, GateWait>("the leaf is still the previous one".into());
        }
        // The post-hook checked these exact bytes and reloaded.
        let sum = pki_ops::sha256_hex(&fc);
        let status = tree
            .read(&rel::post_hook_status(app))?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        match status.as_deref().and_then(hooks::parse_status) {
            Some(hooks::HookStatus::Ok { fullchain_sha256 }) if fullchain_sha256 == sum => Ok(info),
            Some(hooks::HookStatus::Failed {
                fullchain_sha256: Some(s),
                reason,
            }) if s == sum => Err(GateWait::Fatal(format!(
                "the post-hook failed for the new leaf (serial {}): {reason}",
                info.serial_hex
            ))),
            _ => Err(format!(
                "the post-hook has not reported success for the new leaf (serial {}) yet",
                info.serial_hex
            )
            .into()),
        }
    }

    /// Fails the gate unless the agent is still running after rendering.
    async fn agent_still_active(&self, app: &AppConfig) -> Result<(), StepError> {
        let cfg = self.cfg;
        // The agent is still running after rendering.
        match hooks::unit_state(
            self.deps.runner,
            &app.unit(),
            Some(app.user()),
            cfg.duration(&cfg.leaf.command_timeout),
        )
        .await
        {
            Ok(state) if state == "active" => {}
            Ok(state) => {
                return Err(gate_err(
                    app,
                    format!("{} is {state} after rendering", app.unit()),
                ));
            }
            Err(e) => return Err(gate_err(app, format!("{} state unknown: {e}", app.unit()))),
        }
        Ok(())
    }

    /// Proves a cert login with the agent's own files gives exactly the expected policies.
    async fn cert_login(
        &self,
        app: &AppConfig,
        n: &Names,
        a: &LeafApplied,
    ) -> Result<LoginProof, StepError> {
        let v = self.vault();
        let gate = v
            .active_gate(self.cfg.is_cluster(), self.cfg.failover_window())
            .await;
        let fresh = gate
            .get()
            .connect(&crate::host::agent_identity(app)?)
            .map_err(|e| StepError::vault("build the gate client from the agent's files", e))?;
        login_gate(
            fresh.as_ref(),
            Some(v.token),
            &self.cfg.agents.cert_auth_mount,
            &n.mapping,
            &a.policies,
            Some(&a.agent_serial),
        )
        .await
        .map_err(|e| gate_err(app, format!("cert login with the agent's files: {e}")))
    }

    /// Waits for the agent's sink token to prove step 3 live: the serial it logged in with.
    async fn await_agent_login(
        &self,
        app: &AppConfig,
        a: &LeafApplied,
        n: &Names,
        tree: &Tree,
        deadline: Instant,
        watch: &mut VaultWatch,
    ) -> Result<String, StepError> {
        let cfg = self.cfg;
        // Step 3 is live only when the restarted agent logged in with the new certificate:
        // its sink token's metadata names the serial it presented; and that token may
        // issue the leaf (an operator-edited policy is kept, so prove it still grants).
        let issue_path = format!("{}/issue/{}", cfg.pki.mount, n.leaf_role);
        let sink_rel = rel::sink(app);
        let mut last = String::from("no token in the sink yet");
        let mut pause = crate::pause::Pause::new();
        // The token last found wanting, and when: the previous agent's token stays in the
        // sink until the restarted one writes its own, and is asked about again only
        // every second (each question is a new connection), not at every poll.
        let mut wanting: Option<(zeroize::Zeroizing<String>, Instant)> = None;
        loop {
            if let Some(token) = tree.read(&sink_rel)? {
                let token =
                    zeroize::Zeroizing::new(String::from_utf8_lossy(&token).trim().to_owned());
                let asked_lately = wanting
                    .as_ref()
                    .is_some_and(|(t, at)| *t == token && at.elapsed() < Duration::from_secs(1));
                if !asked_lately {
                    match self.check_sink_token(app, a, &issue_path, &token).await? {
                        Ok(serial) => return Ok(serial),
                        Err(why) => {
                            last = why;
                            wanting = Some((token, Instant::now()));
                        }
                    }
                }
            }
            watch
                .check(self.vault().sys, &self.cfg.vault_addr())
                .await?;
            if Instant::now() > deadline {
                return Err(gate_err(
                    app,
                    format!("{last} (sink {})", home_path(app, rel::sink(app)).display()),
                ));
            }
            tokio::time::sleep(pause.next()).await;
        }
    }

    /// One look at the sink token: `Ok(serial)` once it proves step 3 live, else why not.
    async fn check_sink_token(
        &self,
        app: &AppConfig,
        a: &LeafApplied,
        issue_path: &str,
        token: &str,
    ) -> Result<Result<String, String>, StepError> {
        match self.vault().gate.token_client(token) {
            Ok(c) => match c.lookup_self().await {
                Ok(info) => {
                    let serial = info
                        .meta
                        .as_ref()
                        .and_then(|m| m.get("serial_number").cloned())
                        .unwrap_or_default();
                    if serial == a.agent_serial {
                        cert_auth::require_capabilities(
                            c.as_ref(),
                            &[(issue_path.to_owned(), vec!["update".into()])],
                        )
                        .await
                        .map_err(|e| gate_err(app, format!("the agent's token: {e}")))?;
                        return Ok(Ok(serial));
                    }
                    Ok(Err(format!(
                        "the agent's token was issued for certificate serial {serial}, not the new {}",
                        a.agent_serial
                    )))
                }
                Err(e) => Ok(Err(format!("look up the agent's token: {e}"))),
            },
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}

/// Plans the post-hook and agent config: their texts, refused specs stopping the plan.
fn plan_agent_files(
    cfg: &Config,
    app: &AppConfig,
    n: &Names,
    tree: &Tree,
    changes: &mut Vec<Change>,
) -> Result<(String, String), StepError> {
    for (dir, _) in rel::leaf_dirs(app) {
        tree.check_dir(&dir)?;
    }
    // Render first: a spec the renderers refuse stops us before any write.
    let hook = hooks::render_post_hook(&post_hook_spec(cfg, app))?;
    let agent = hooks::render_agent_config(&agent_spec(cfg, app, n))?;
    changes.push(text_change(
        &app.home.join(rel::post_hook(app)),
        read_text(tree, &rel::post_hook(app))?.as_deref(),
        &hook,
    ));
    changes.push(text_change(
        &app.home.join(rel::agent_config(app)),
        read_text(tree, &rel::agent_config(app))?.as_deref(),
        &agent,
    ));
    Ok((hook, agent))
}

/// Refuses a mapping's unmanaged policies rather than silently dropping them.
fn refuse_unmanaged_policies(
    cfg: &Config,
    n: &Names,
    spec: &cert_auth::MappingSpec,
    current: &vault_client::CertRole,
) -> Result<(), StepError> {
    let mount = &cfg.agents.cert_auth_mount;
    let unknown: Vec<&String> = current
        .token_policies
        .iter()
        .filter(|p| !spec.token_policies.contains(p) && !spec.keep_if_present.contains(p))
        .filter(|p| !cfg.leaf.remove_policies.contains(p))
        .collect();
    if !unknown.is_empty() {
        return Err(StepError::Invalid {
            what: format!("mapping auth/{mount}/certs/{}", n.mapping),
            reason: format!(
                "carries policies rotate does not manage: {}; add them to [leaf] remove_policies to have them removed, or remove them by hand",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}

/// Installs the agent config and post-hook as one set, so undo restores both together.
fn write_agent_files(
    app: &AppConfig,
    tree: &Tree,
    owner: Owner,
    hook: String,
    agent: String,
    tx: &Tx<'_>,
) -> Result<(), StepError> {
    let mut created = Vec::new();
    for (dir, mode) in rel::leaf_dirs(app) {
        created.extend(tree.ensure_dir(&dir, mode)?);
    }
    if !created.is_empty() {
        tx.record(UndoAction::Dirs {
            root: app.home.clone(),
            dirs: created,
            owner: Some(owner),
        })?;
    }
    tree.sweep_temps(&rel::parent(&rel::post_hook(app)))?;
    let set = MaterialSet::new()
        .with(FileSpec::new(rel::post_hook(app), 0o755), hook.into_bytes())
        .with(FileSpec::public(rel::agent_config(app)), agent.into_bytes());
    let staged = set.stage(tree, &tx.run_id())?;
    for u in staged.undo_records() {
        tx.record(UndoAction::File {
            undo: u,
            owner: Some(owner),
        })?;
    }
    staged.commit()?;
    Ok(())
}

/// The serial of step 3's agent certificate, which the agent's token must name.
fn agent_cert_serial(app: &AppConfig, tree: &Tree) -> Result<String, StepError> {
    tree.read(&rel::agent_cert())?
        .map(|b| CertInfo::from_pem_labeled(&String::from_utf8_lossy(&b), "agent.crt"))
        .transpose()?
        .map(|c| c.serial_decimal)
        .ok_or_else(|| StepError::Invalid {
            what: format!("{}", app.home.join(rel::agent_cert()).display()),
            reason: "missing: run step 3 first".into(),
        })
}

/// Keeps what the restarted agent and its post-hook will replace, for undo to put back.
fn keep_agent_outputs(
    app: &AppConfig,
    tree: &Tree,
    owner: Owner,
    tx: &Tx<'_>,
) -> Result<(), StepError> {
    // What the agent and its post-hook replace (each by a rename) or create from here:
    // the leaf pair, the render, the token, the hook's status. Kept, so undo puts back
    // exactly what was there and removes what was not. (The pid file is the agent's
    // runtime state: the restart on undo rewrites it.)
    for rel in [
        rel::leaf_key(app),
        rel::fullchain(app),
        rel::leaf_render(app),
        rel::sink(app),
        rel::post_hook_status(app),
    ] {
        let u = pki_ops::plan_keep(tree, &rel, &tx.run_id())?;
        tx.record(UndoAction::File {
            undo: u.clone(),
            owner: Some(owner),
        })?;
        pki_ops::keep_previous(tree, &u)?;
    }
    Ok(())
}

/// A post-hook failure reported since the restart: this render's own, so fatal at once.
fn new_hook_failure(
    tree: &Tree,
    app: &AppConfig,
    a: &LeafApplied,
) -> Result<Option<String>, StepError> {
    // A failure report of the post-hook written since the restart is this render's
    // failure (it could not install the pair, it found them mismatched): at once.
    let line = tree
        .read(&rel::post_hook_status(app))?
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    Ok(line
        .filter(|l| Some(l) != a.previous_hook_status.as_ref())
        .and_then(|l| match hooks::parse_status(&l) {
            Some(hooks::HookStatus::Failed { reason, .. }) => Some(reason),
            _ => None,
        }))
}

/// Fails the gate unless the leaf key is `0600` and owned by the app.
fn check_leaf_key(app: &AppConfig, tree: &Tree, owner: Owner) -> Result<(), StepError> {
    // The leaf key: 0600, owned by the app (lstat: never through a link).
    let meta = tree
        .stat(&rel::leaf_key(app))
        .map_err(|e| {
            gate_err(
                app,
                format!("stat {}: {e}", home_path(app, rel::leaf_key(app)).display()),
            )
        })?
        .ok_or_else(|| {
            gate_err(
                app,
                format!(
                    "{} is missing",
                    home_path(app, rel::leaf_key(app)).display()
                ),
            )
        })?;
    if meta.mode != 0o600 || meta.owner.uid != owner.uid {
        return Err(gate_err(
            app,
            format!(
                "{} must be mode 0600, owned by {} (uid {}); it is mode {:04o}, uid {}",
                home_path(app, rel::leaf_key(app)).display(),
                app.user(),
                owner.uid,
                meta.mode,
                meta.owner.uid
            ),
        ));
    }
    Ok(())
}

/// While a gate waits on the agent: whether Vault is still there to be waited for, asked
/// at most every two seconds. A sealed or unreachable Vault ends the wait at once (the
/// agent is not to blame), keeping the step applied for `--resume`.
struct VaultWatch {
    next: Instant,
}

impl VaultWatch {
    fn new() -> Self {
        VaultWatch {
            next: Instant::now() + Duration::from_secs(2),
        }
    }

    async fn check(&mut self, sys: &dyn vault_client::SysApi, addr: &str) -> Result<(), StepError> {
        if Instant::now() < self.next {
            return Ok(());
        }
        self.next = Instant::now() + Duration::from_secs(2);
        match sys.seal_status().await {
            Ok(s) if s.sealed => Err(StepError::Sealed {
                reason: "while waiting for the agent: unseal it, then `rotate run --resume` re-gates this step".into(),
            }),
            Err(
                e @ vault_client::Error::Transport {
                    kind:
                        vault_client::TransportKind::ConnectionRefused
                        | vault_client::TransportKind::ConnectionReset
                        | vault_client::TransportKind::Timeout,
                    ..
                },
            ) => Err(StepError::VaultGone {
                reason: format!(
                    "Vault at {addr} is unreachable while the agent waits on it, not the agent's fault ({e}): once it is back, `rotate run --resume` re-gates this step"
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// A gate condition not met yet (retry until the deadline) or one that will not change.
enum GateWait {
    Retry(String),
    Fatal(String),
}

impl From<&str> for GateWait {
    fn from(s: &str) -> Self {
        GateWait::Retry(s.to_owned())
    }
}

impl From<String> for GateWait {
    fn from(s: String) -> Self {
        GateWait::Retry(s)
    }
}

impl From<pki_ops::Error> for GateWait {
    fn from(e: pki_ops::Error) -> Self {
        GateWait::Fatal(e.to_string())
    }
}

impl From<StepError> for GateWait {
    fn from(e: StepError) -> Self {
        GateWait::Fatal(e.to_string())
    }
}

/// Step 4 in the list.
pub(crate) struct Def;

#[async_trait]
impl StepDef for Def {
    fn id(&self) -> StepId {
        StepId::Leaf
    }

    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        request: &RunRequest,
    ) -> Box<dyn DynStep + 'a> {
        Box::new(LeafStep::new(
            cfg,
            deps,
            chain.to_owned(),
            request.kv_access,
            request.kv_seed,
        ))
    }

    fn needs(&self, ctx: &Ctx<'_>, needs: &mut Needs) {
        let (cfg, pki) = (ctx.cfg, &ctx.cfg.pki.mount);
        let (kv_access, kv_seed) = kv_switches(ctx);
        let kv = cfg.leaf.kv_mount.trim_matches('/');
        for app in ctx.apps {
            let n = Names::new(cfg, app);
            needs.cap(format!("{pki}/roles/{}", n.leaf_role), "update");
            needs.cap(
                format!("auth/{}/certs/{}", cfg.agents.cert_auth_mount, n.mapping),
                "update",
            );
            if kv_access {
                needs.cap(format!("sys/policies/acl/{}", n.kv_policy), "update");
            }
            if kv_seed {
                needs.cap(format!("{kv}/data/{}", app.name), "create");
            }
            needs.roles.push((pki.clone(), n.leaf_role));
        }
        needs.program(cfg, "systemctl (agent units)".into(), "systemctl");
        needs.program(
            cfg,
            "runuser (agent units, as the app user)".into(),
            "runuser",
        );
    }

    /// The agent binary exists; with KV access or seeding, the KV mount is v2.
    async fn preflight(&self, ctx: &Ctx<'_>, r: &mut PreflightReport) {
        let cfg = ctx.cfg;
        r.push(
            "agent binary",
            match hooks::resolve_program(&cfg.commands.agent) {
                Ok(p) if p.is_file() => Ok(p.display().to_string()),
                Ok(p) => Err((
                    Exit::Config,
                    format!("{} does not exist; set [commands] agent", p.display()),
                )),
                Err(e) => Err((Exit::Config, format!("{e}; set [commands] agent"))),
            },
        );
        let (kv_access, kv_seed) = kv_switches(ctx);
        if !(kv_access || kv_seed) {
            return;
        }
        let kv = cfg.leaf.kv_mount.trim_matches('/').to_owned();
        let res = match ctx.deps.vault.sys.list_mounts().await {
            Ok(m) => match m.get(&format!("{kv}/")).map(|m| (m.kv_version(), m)) {
                Some((Some(2), _)) => Ok("KV v2".into()),
                Some((Some(ver), _)) => Err((
                    Exit::Config,
                    format!("KV v{ver}; v2 is required: `bao kv enable-versioning {kv}`"),
                )),
                Some((None, m)) => {
                    Err((Exit::Config, format!("a {} engine, not KV", m.mount_type)))
                }
                None => Err((Exit::Config, "no such secrets engine".into())),
            },
            Err(e) => Err((e.class().into(), e.to_string())),
        };
        r.push(format!("KV mount {kv}"), res);
    }

    /// The write-up's checklist for the leaf (CN, issuer, expiry, key), its role, and
    /// the agent unit active.
    async fn verify_app(
        &self,
        ctx: &Ctx<'_>,
        view: &AppView<'_>,
        seen: &Seen,
        r: &mut VerifyReport,
    ) {
        let (cfg, app, n, now) = (ctx.cfg, view.app, &view.names, ctx.now());
        let a = &app.name;
        let location = app.home.join(rel::fullchain(app)).display().to_string();
        let leaf = (|| {
            let full = view.read(&rel::fullchain(app))?;
            let key = view.read(&rel::leaf_key(app))?;
            let chain = seen
                .chain
                .as_deref()
                .ok_or("no PKI chain to verify against")?;
            let want = LeafExpectation {
                cn: &n.leaf_cn,
                issuer: &cfg.pki.issuer_name,
                min_remaining: cfg.duration(&cfg.leaf.min_remaining),
                max_lifetime: cfg.duration(&cfg.leaf.max_lifetime),
            };
            verify_leaf(&full, &key, chain, &want, now).map_err(|x| format!("{x:#}"))
        })();
        match leaf {
            Ok(info) => {
                r.check(
                    format!("leaf of {a}"),
                    Ok(format!(
                        "{location}: CN {}, issuer {:?}, not after {}, key matches",
                        n.leaf_cn,
                        info.issuer_cn.clone().unwrap_or_default(),
                        info.not_after_human
                    )),
                );
                r.material(
                    crate::checks::Labels::app(crate::checks::MaterialKind::Leaf, a),
                    format!("leaf of {a}"),
                    location,
                    &info,
                    now,
                );
            }
            Err(why) => r.check(format!("leaf of {a}"), Err(why)),
        }
        let role = format!("{}/roles/{}", cfg.pki.mount, n.leaf_role);
        let drift = role_drift(
            ctx.deps.vault,
            &cfg.pki.mount,
            &n.leaf_role,
            &leaf_role_spec(cfg, n),
        )
        .await;
        r.check(format!("role {role}"), drift);
        let unit = app.unit();
        let timeout = cfg.duration(&cfg.leaf.command_timeout);
        r.check(
            format!("agent unit {unit}"),
            match hooks::unit_state(ctx.deps.runner, &unit, Some(app.user()), timeout).await {
                Ok(s) if s == "active" => Ok("active".into()),
                Ok(s) => Err(format!(
                    "{s}: `systemctl --user status {unit}` as {}",
                    app.user()
                )),
                Err(x) => Err(format!("{x:#}")),
            },
        );
    }
}

/// Whether this run grants KV access and seeds KV (the command line or the config).
fn kv_switches(ctx: &Ctx<'_>) -> (bool, bool) {
    let (cfg, request) = (ctx.cfg, ctx.request);
    (
        request.kv_access || cfg.leaf.kv_access,
        request.kv_seed || cfg.leaf.kv_seed,
    )
}
