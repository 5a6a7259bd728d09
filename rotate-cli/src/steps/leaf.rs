//! Step 4: app leaf certificates through the app's agent, with post-hook reloads.
//!
//! Per app: checks first (mapping from step 3 present, KV mount is v2 when KV is wanted,
//! post-hook directory owned by the app), then PKI role `nginx-<app>`, mapping policies
//! (stray `debug-policy` removed, `secret-agent-<app>-policy` attached with KV access),
//! KV seed (create only if missing), the agent config (cert auth only) and post-hook, and
//! a restart of `vault-agent-<app>.service`, which is also what makes step 3 live. Gate:
//! the agent renders a *new* `<app>.fullchain.pem` (CN, issuer, validity window, key
//! match, chain), the unit is active, and a cert login with the agent's files works.

use std::path::Path;
use std::time::{Duration, Instant};

use cert_auth::{
    LoginProof, MappingOutcome, PolicyMode, PolicyOutcome, ensure_policy, login_gate,
    upsert_mapping,
};
use hooks::{
    AgentConfigSpec, CommandRunner, InstallReport, PostHookSpec, ReloadReport, Reloader,
    VersionCheck,
};
use pki_ops::{
    CertInfo, CreatePolicy, FileOutcome, FileSpec, MaterialSet, RoleOutcome, RoleSpec, upsert_role,
};
use serde::Serialize;
use serde_json::json;

use crate::config::{AppConfig, Config};
use crate::deps::Vault;
use crate::steps::agents::{AppStatus, ca_chain, mapping_spec};
use crate::steps::{StepError, ensure_dir};

/// Switches from the command line (the seed's `--with-kv-access`, `--with-kv-seed`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeafOptions {
    /// Attach `secret-agent-<app>-policy`.
    pub kv_access: bool,
    /// Create `kv/<app>` when missing.
    pub kv_seed: bool,
}

/// KV findings and actions for one app.
#[derive(Debug, Serialize)]
pub struct KvReport {
    /// The mount.
    pub mount: String,
    /// Its KV version (2 required).
    pub version: u32,
    /// `secret-agent-<app>-policy`.
    pub policy: Option<PolicyOutcome>,
    /// `kv/<app>`: `exists, not overwritten`, `created`, `would create`, or `missing (...)`.
    pub seed: String,
}

/// What step 4 did (or would do) for one app.
#[derive(Debug, Serialize)]
pub struct LeafReport {
    /// App.
    pub app: String,
    /// Leaf CN.
    pub cn: String,
    /// Outcome.
    pub status: AppStatus,
    /// `nginx-<app>`.
    pub role: Option<RoleOutcome>,
    /// The agent mapping (policy changes show as drift).
    pub mapping: Option<MappingOutcome>,
    /// Policies removed from the mapping (e.g. `debug-policy`).
    pub removed_policies: Vec<String>,
    /// KV access / seed.
    pub kv: Option<KvReport>,
    /// Strict auth: how the agent authenticates.
    pub auth: String,
    /// The post-hook.
    pub post_hook: Option<InstallReport>,
    /// The agent config file.
    pub agent_config: Option<FileOutcome>,
    /// The agent restart.
    pub restart: Option<ReloadReport>,
    /// Serial of the leaf before the run.
    pub previous_serial: Option<String>,
    /// The leaf the agent rendered (for a plan: the current one).
    pub leaf: Option<CertInfo>,
    /// Cert login with the agent's files.
    pub login: Option<LoginProof>,
    /// The serial (decimal) the restarted agent's own token was issued for: proof that
    /// the agent presents the new login certificate (step 3 live).
    pub agent_login_serial: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Exit code of the failure.
    pub exit_code: Option<u8>,
}

/// The whole step's report.
#[derive(Debug, Serialize)]
pub struct LeafStepReport {
    /// Environment.
    pub env: String,
    /// Always `leaf`.
    pub step: &'static str,
    /// Dry run?
    pub dry_run: bool,
    /// Agent vs server version (the seed's watch item; a mismatch is reported, not fatal).
    pub versions: Option<VersionCheck>,
    /// Why the versions could not be compared.
    pub versions_note: Option<String>,
    /// Per app.
    pub apps: Vec<LeafReport>,
}

impl LeafStepReport {
    /// Exit code: the first failed app's, else 0, or for a plan 10 when a role, policy,
    /// mapping, post-hook or agent config would change.
    pub fn exit(&self) -> crate::Exit {
        let failed = crate::steps::exit_of(self.apps.iter().map(|a| a.exit_code));
        if failed != crate::Exit::Ok || !self.dry_run {
            return failed;
        }
        let changes = self.apps.iter().any(|a| {
            a.role
                .as_ref()
                .is_some_and(|r| r.action != pki_ops::RoleAction::Unchanged)
                || a.mapping
                    .as_ref()
                    .is_some_and(|m| m.action != cert_auth::MappingAction::Unchanged)
                || a.kv
                    .as_ref()
                    .and_then(|k| k.policy.as_ref())
                    .is_some_and(|p| p.action != cert_auth::PolicyAction::Unchanged)
                || a.post_hook.as_ref().is_some_and(|h| h.changed)
                || a.agent_config.as_ref().is_some_and(|c| c.changed)
        });
        if changes {
            crate::Exit::Changes
        } else {
            crate::Exit::Ok
        }
    }
}

/// What a rendered leaf must be.
#[derive(Debug, Clone, Copy)]
pub struct LeafExpectation<'a> {
    /// Subject CN, e.g. `ncprd1.int.privsec.ch`.
    pub cn: &'a str,
    /// Issuer CN, e.g. `PrivSec Intermediate CA (prod)`.
    pub issuer: &'a str,
    /// At least this much validity left.
    pub min_remaining: Duration,
    /// At most this total lifetime.
    pub max_lifetime: Duration,
}

/// The leaf gate on files alone: `fullchain` holds a server leaf as `want` says, valid at
/// `now`, chaining to `ca`; `key` matches it.
pub fn verify_leaf(
    fullchain: &Path,
    key: &Path,
    ca: &Path,
    want: &LeafExpectation<'_>,
    now: i64,
) -> Result<CertInfo, StepError> {
    let info = CertInfo::from_pem_file(fullchain)?;
    info.expect_cn(want.cn)?;
    info.expect_issuer_cn(want.issuer)?;
    info.expect_server_auth()?;
    info.expect_validity(now, want.min_remaining, Some(want.max_lifetime))?;
    pki_ops::key_matches_cert_files(key, fullchain)?;
    pki_ops::verify_chain_files(fullchain, Some(fullchain), ca, now)?;
    Ok(info)
}

fn kv_policy_text(mount: &str, app: &str) -> String {
    format!(
        "# Managed by rotate: the {app} agent reads its secret.\n\
         path \"{mount}/data/{app}\" {{\n  capabilities = [\"read\"]\n}}\n\
         path \"{mount}/metadata/{app}\" {{\n  capabilities = [\"read\"]\n}}\n"
    )
}

/// The name of an app's KV policy.
pub fn kv_policy_name(app: &str) -> String {
    format!("secret-agent-{app}-policy")
}

fn agent_spec(cfg: &Config, app: &AppConfig) -> AgentConfigSpec {
    let cn = format!("{}.{}", app.name, cfg.leaf.cn_domain);
    let mut s = AgentConfigSpec::new(
        &app.name,
        cfg.vault.addr.as_deref().unwrap_or_default(),
        &cfg.pki.mount,
        &cn,
    );
    s.tls_server_name = cfg.vault.tls_server_name.clone();
    s.ca_cert = app.ca_file();
    s.client_cert = app.agent_cert();
    s.client_key = app.agent_key();
    s.mount = format!("auth/{}", cfg.agents.cert_auth_mount);
    s.leaf_ttl = cfg.leaf.ttl.clone();
    s.fullchain_path = app.fullchain();
    s.key_path = app.leaf_key();
    s.post_hook_path = app.post_hook();
    s.pid_file = app.agent_dir().join("agent.pid");
    s.token_sink = app.agent_dir().join("token");
    s
}

fn post_hook_spec(cfg: &Config, app: &AppConfig) -> PostHookSpec {
    let mut s = PostHookSpec::new(&app.name);
    s.fullchain_path = app.fullchain();
    s.key_path = app.leaf_key();
    if !cfg.leaf.reload_tls_label.is_empty() {
        s = s.reload_tls_label(&cfg.leaf.reload_tls_label);
    }
    if !cfg.leaf.proxy_reload.is_empty() {
        s = s.proxy_reload(&cfg.leaf.proxy_reload);
    }
    s
}

/// The auto_auth methods an existing agent config uses (`method "approle" {`...).
fn auth_methods_in(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("method"))
        .filter_map(|rest| rest.trim().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Strict auth: the agent authenticates by cert only. Report what the config it replaces
/// used, if anything else.
fn strict_auth(app: &AppConfig) -> String {
    let previous = std::fs::read_to_string(app.agent_config())
        .map(|c| auth_methods_in(&c))
        .unwrap_or_default();
    let other: Vec<&String> = previous.iter().filter(|m| *m != "cert").collect();
    if other.is_empty() {
        "cert (mTLS) only".to_owned()
    } else {
        let list: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
        format!(
            "cert (mTLS) only; the previous agent config also used: {}",
            list.join(", ")
        )
    }
}

fn serial_of(path: &Path) -> Option<String> {
    CertInfo::from_pem_file(path).ok().map(|c| c.serial_hex)
}

/// Refuse a post-hook directory that exists but is not owned by the app's user.
fn check_hook_dir(app: &AppConfig) -> Result<(), StepError> {
    use std::os::unix::fs::MetadataExt;
    let dir = app
        .post_hook()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (Some(user), Ok(meta)) = (&app.user, std::fs::metadata(&dir)) else {
        return Ok(());
    };
    let uid = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| StepError::Invalid {
            what: format!("app {} user", app.name),
            reason: format!("no such user {user}"),
        })?;
    if meta.uid() != uid {
        return Err(StepError::Invalid {
            what: format!("post-hook directory {}", dir.display()),
            reason: format!(
                "owned by uid {}, expected {user} (uid {uid}); refusing to install a hook there",
                meta.uid()
            ),
        });
    }
    Ok(())
}

/// The agent's files, rendered before anything is written.
struct Rendered {
    hook_spec: PostHookSpec,
    hook: String,
    agent: String,
}

/// Run (or plan) step 4 for `apps`.
pub async fn run_leaf(
    cfg: &Config,
    apps: &[&AppConfig],
    vault: Vault<'_>,
    runner: &dyn CommandRunner,
    opts: LeafOptions,
    dry_run: bool,
    now: impl Fn() -> i64,
) -> Result<LeafStepReport, StepError> {
    let chain = ca_chain(cfg, vault).await?;
    let timeout = cfg.duration(&cfg.leaf.command_timeout);
    let (versions, versions_note) = match version_check(cfg, vault, runner, timeout).await {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let mut reports = Vec::new();
    for app in apps {
        let mut r = LeafReport {
            app: app.name.clone(),
            cn: format!("{}.{}", app.name, cfg.leaf.cn_domain),
            status: if dry_run {
                AppStatus::Planned
            } else {
                AppStatus::Rotated
            },
            role: None,
            mapping: None,
            removed_policies: Vec::new(),
            kv: None,
            auth: "cert (mTLS) only".into(),
            post_hook: None,
            agent_config: None,
            restart: None,
            previous_serial: serial_of(&app.fullchain()),
            leaf: None,
            login: None,
            agent_login_serial: None,
            error: None,
            exit_code: None,
        };
        if let Err(e) = leaf(cfg, app, vault, runner, opts, &chain, dry_run, &now, &mut r).await {
            r.status = AppStatus::Failed;
            r.error = Some(format!("{e:#}"));
            r.exit_code = Some(e.exit().code());
        }
        reports.push(r);
    }
    Ok(LeafStepReport {
        env: cfg.env.clone(),
        step: "leaf",
        dry_run,
        versions,
        versions_note,
        apps: reports,
    })
}

async fn version_check(
    cfg: &Config,
    vault: Vault<'_>,
    runner: &dyn CommandRunner,
    timeout: Duration,
) -> Result<VersionCheck, String> {
    let agent = hooks::command_version(runner, &cfg.commands.agent, timeout)
        .await
        .map_err(|e| format!("agent version unknown: {e}"))?;
    let health = vault
        .sys
        .health()
        .await
        .map_err(|e| format!("server version unknown: {e}"))?;
    let server = hooks::Version::parse(&health.body.version)
        .map_err(|e| format!("server version {:?}: {e}", health.body.version))?;
    Ok(hooks::compare_versions(&agent, &server))
}

#[allow(clippy::too_many_arguments)]
async fn leaf(
    cfg: &Config,
    app: &AppConfig,
    vault: Vault<'_>,
    runner: &dyn CommandRunner,
    opts: LeafOptions,
    chain: &str,
    dry_run: bool,
    now: &impl Fn() -> i64,
    r: &mut LeafReport,
) -> Result<(), StepError> {
    let mount = cfg.agents.cert_auth_mount.as_str();
    let mapping_name = format!("agent-{}", app.name);
    let kv_access = opts.kv_access || cfg.leaf.kv_access;
    let kv_seed = opts.kv_seed || cfg.leaf.kv_seed;

    // Checks first: nothing is written unless they all pass.
    if !app.home.is_dir() {
        return Err(StepError::Invalid {
            what: format!("app {} home {}", app.name, app.home.display()),
            reason: "is not an existing directory".into(),
        });
    }
    let current = vault
        .cert
        .read_cert_role(mount, &mapping_name)
        .await
        .map_err(|e| {
            StepError::vault(format!("read mapping auth/{mount}/certs/{mapping_name}"), e)
        })?
        .ok_or_else(|| StepError::Invalid {
            what: format!("mapping auth/{mount}/certs/{mapping_name}"),
            reason: "missing: run `rotate run --step agents` first".into(),
        })?;
    let kv_version = if kv_access || kv_seed {
        let kv_mount = cfg.leaf.kv_mount.trim_matches('/');
        let mounts = vault
            .sys
            .list_mounts()
            .await
            .map_err(|e| StepError::vault("list secrets engines (sys/mounts)", e))?;
        let m = mounts
            .get(&format!("{kv_mount}/"))
            .ok_or_else(|| StepError::Invalid {
                what: format!("KV mount {kv_mount}"),
                reason: "no such secrets engine (sys/mounts)".into(),
            })?;
        match m.kv_version() {
            Some(2) => Some(2),
            Some(v) => {
                return Err(StepError::Invalid {
                    what: format!("KV mount {kv_mount}"),
                    reason: format!(
                        "is KV v{v}; v2 is required (the policy grants {kv_mount}/data/<app>); upgrade it with `bao kv enable-versioning {kv_mount}`"
                    ),
                });
            }
            None => {
                return Err(StepError::Invalid {
                    what: format!("KV mount {kv_mount}"),
                    reason: format!("is a {} engine, not KV", m.mount_type),
                });
            }
        }
    } else {
        None
    };
    check_hook_dir(app)?;
    // Render now: a spec the renderers refuse must stop us before the first write.
    let hook_spec = post_hook_spec(cfg, app);
    let rendered = Rendered {
        hook: hooks::render_post_hook(&hook_spec)?,
        agent: hooks::render_agent_config(&agent_spec(cfg, app))?,
        hook_spec,
    };
    r.auth = strict_auth(app);

    // Role.
    let role_spec = RoleSpec::server_leaf(
        cfg.leaf.allowed_domains.clone(),
        &cfg.leaf.ttl,
        &cfg.leaf.max_ttl,
    );
    r.role = Some(
        upsert_role(
            vault.pki,
            &cfg.pki.mount,
            &format!("nginx-{}", app.name),
            &role_spec,
            CreatePolicy::CreateIfMissing,
            dry_run,
        )
        .await?,
    );

    // KV policy and seed.
    if let Some(version) = kv_version {
        let kv_mount = cfg.leaf.kv_mount.trim_matches('/');
        let policy = if kv_access {
            Some(
                ensure_policy(
                    vault.sys,
                    &kv_policy_name(&app.name),
                    &kv_policy_text(kv_mount, &app.name),
                    PolicyMode::Converge,
                    dry_run,
                )
                .await?,
            )
        } else {
            None
        };
        let exists = vault
            .kv
            .kv2_read_metadata(kv_mount, &app.name)
            .await
            .map_err(|e| StepError::vault(format!("read {kv_mount}/metadata/{}", app.name), e))?
            .is_some();
        let seed = match (exists, kv_seed, dry_run) {
            (true, _, _) => "exists, not overwritten".to_owned(),
            (false, false, _) => "missing (no seed: --with-kv-seed not set)".to_owned(),
            (false, true, true) => "missing, would create".to_owned(),
            (false, true, false) => {
                let data = json!({"app": app.name, "seeded_by": "rotate"});
                let data = data.as_object().cloned().unwrap_or_default();
                // cas=0: Vault refuses if someone created it meanwhile; never an overwrite.
                match vault.kv.kv2_write(kv_mount, &app.name, data, Some(0)).await {
                    Ok(_) => "created".to_owned(),
                    // Vault's check-and-set refusal: someone created it meanwhile.
                    Err(vault_client::Error::Api {
                        status: 400,
                        errors,
                        ..
                    }) if errors.iter().any(|m| m.contains("check-and-set")) => {
                        "exists (created concurrently), not overwritten".to_owned()
                    }
                    Err(e) => {
                        return Err(StepError::vault(
                            format!("seed {kv_mount}/data/{}", app.name),
                            e,
                        ));
                    }
                }
            }
        };
        r.kv = Some(KvReport {
            mount: kv_mount.to_owned(),
            version,
            policy,
            seed,
        });
    }

    // Mapping: exactly the agent policies (+ KV, also kept when an earlier run granted
    // it), stray ones removed.
    let mut spec = mapping_spec(cfg, app, chain);
    let kv_policy = kv_policy_name(&app.name);
    if kv_access && !spec.token_policies.contains(&kv_policy) {
        spec.token_policies.push(kv_policy);
    }
    let outcome = upsert_mapping(vault.cert, mount, &spec, dry_run).await?;
    r.removed_policies = current
        .token_policies
        .iter()
        .filter(|p| !outcome.token_policies.contains(p))
        .cloned()
        .collect();
    r.mapping = Some(outcome.clone());

    if dry_run {
        r.post_hook = Some(InstallReport {
            path: app.post_hook(),
            changed: std::fs::read_to_string(app.post_hook()).ok().as_deref()
                != Some(rendered.hook.as_str()),
        });
        r.agent_config = Some(FileOutcome {
            path: app.agent_config(),
            mode: 0o644,
            bytes: rendered.agent.len(),
            changed: std::fs::read_to_string(app.agent_config()).ok().as_deref()
                != Some(rendered.agent.as_str()),
            existed: app.agent_config().exists(),
            previous: None,
        });
        r.leaf = CertInfo::from_pem_file(&app.fullchain()).ok();
        return Ok(());
    }

    // Agent config and post-hook.
    ensure_dir(&app.post_hook(), 0o755, app)?;
    ensure_dir(&app.fullchain(), 0o750, app)?;
    r.post_hook = Some(hooks::install_post_hook(
        &rendered.hook_spec,
        &app.post_hook(),
        app.user.as_deref(),
        None,
    )?);
    let file = FileSpec::public(app.agent_config());
    let file = match (&app.user, app.group()) {
        (Some(u), Some(g)) => file.owned_by(u.clone(), g.to_owned()),
        _ => file,
    };
    let written = MaterialSet::new()
        .with(file, rendered.agent.into_bytes())
        .write()?;
    r.agent_config = written.files.first().cloned();

    match restart_and_prove(cfg, app, vault, runner, &outcome.token_policies, now, r).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // Put back what this step changed for the agent, then restart it on the old
            // config so it is not left running a config that failed its gate.
            let mut undo = vec![super::agents::rollback_files(&written)];
            undo.push(super::agents::undo_mapping(vault, mount, &mapping_name, &outcome).await);
            if written.any_changed() {
                let timeout = cfg.duration(&cfg.leaf.command_timeout);
                undo.push(
                    match hooks::reload(runner, &restart_reloader(app), timeout).await {
                        Ok(_) => format!("{} restarted on the previous config", app.unit()),
                        Err(re) => format!("RESTART ON THE PREVIOUS CONFIG FAILED: {re}"),
                    },
                );
            }
            Err(StepError::RolledBack {
                source: Box::new(e),
                rollback: undo.join("; "),
            })
        }
    }
}

fn restart_reloader(app: &AppConfig) -> Reloader {
    Reloader::SystemdUser {
        unit: app.unit(),
        user: app.user.clone(),
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

/// Restart the agent, then the gate: a new leaf that passes every check, a cert login with
/// the agent's files, and the agent's own token proving it logged in with the new cert.
async fn restart_and_prove(
    cfg: &Config,
    app: &AppConfig,
    vault: Vault<'_>,
    runner: &dyn CommandRunner,
    policies: &[String],
    now: &impl Fn() -> i64,
    r: &mut LeafReport,
) -> Result<(), StepError> {
    let mount = cfg.agents.cert_auth_mount.as_str();
    // Read right before the restart: a leaf the old agent renewed meanwhile is not "new".
    r.previous_serial = serial_of(&app.fullchain());
    let sink = app.agent_dir().join("token");
    let sink_before = std::fs::metadata(&sink).and_then(|m| m.modified()).ok();
    r.restart = Some(
        hooks::reload(
            runner,
            &restart_reloader(app),
            cfg.duration(&cfg.leaf.command_timeout),
        )
        .await
        .map_err(|e| gate_err(app, format!("restart of {} failed: {e}", app.unit())))?,
    );

    let deadline = Instant::now() + cfg.duration(&cfg.leaf.render_timeout);
    let want = LeafExpectation {
        cn: &r.cn,
        issuer: &cfg.pki.issuer_name,
        min_remaining: cfg.duration(&cfg.leaf.min_remaining),
        max_lifetime: cfg.duration(&cfg.leaf.max_lifetime),
    };
    let info = loop {
        let fresh = serial_of(&app.fullchain()).filter(|s| Some(s) != r.previous_serial.as_ref());
        if fresh.is_some() {
            // The key lands right after the fullchain: give it a moment to catch up.
            match verify_leaf(
                &app.fullchain(),
                &app.leaf_key(),
                &app.ca_file(),
                &want,
                now(),
            ) {
                Ok(info) => break info,
                Err(e) if Instant::now() > deadline => return Err(gate_err(app, format!("{e:#}"))),
                Err(_) => {}
            }
        } else if Instant::now() > deadline {
            return Err(gate_err(
                app,
                format!(
                    "no new leaf at {} within {} of restarting {}; check the agent's log",
                    app.fullchain().display(),
                    cfg.leaf.render_timeout,
                    app.unit()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    r.leaf = Some(info);

    let fresh = vault
        .gate
        .connect(&app.agent_cert(), &app.agent_key(), &app.ca_file())
        .map_err(|e| StepError::vault("build the gate client from the agent's files", e))?;
    r.login = Some(
        login_gate(
            fresh.as_ref(),
            Some(vault.token),
            mount,
            &format!("agent-{}", app.name),
            policies,
            None,
        )
        .await
        .map_err(|e| gate_err(app, format!("cert login with the agent's files: {e}")))?,
    );

    // Step 3 is live only when the restarted agent logged in with the new certificate:
    // its sink token's metadata names the serial it presented.
    let expected = CertInfo::from_pem_file(&app.agent_cert())?.serial_decimal;
    loop {
        let fresh_sink = std::fs::metadata(&sink).and_then(|m| m.modified()).ok();
        if fresh_sink.is_some() && fresh_sink != sink_before {
            let token = zeroize::Zeroizing::new(std::fs::read_to_string(&sink).unwrap_or_default());
            let seen = match vault.gate.token_client(token.trim()) {
                Ok(c) => c.lookup_self().await.ok(),
                Err(_) => None,
            };
            if let Some(meta) = seen.and_then(|t| t.meta) {
                let serial = meta.get("serial_number").cloned().unwrap_or_default();
                if serial == expected {
                    r.agent_login_serial = Some(serial);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(gate_err(
                        app,
                        format!(
                            "the restarted agent logged in with certificate serial {serial}, not the new {expected}"
                        ),
                    ));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(gate_err(
                app,
                format!(
                    "the restarted agent wrote no usable token to {} within {}",
                    sink.display(),
                    cfg.leaf.render_timeout
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl std::fmt::Display for LeafStepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Step 4: app leaf certs + post-hook reloads ({}{})",
            self.env,
            if self.dry_run { ", plan" } else { "" }
        )?;
        match (&self.versions, &self.versions_note) {
            (Some(v), _) => writeln!(
                f,
                "  versions: agent {} / server {}{}",
                v.agent,
                v.server,
                v.note
                    .as_deref()
                    .map(|n| format!("  WATCH: {n}"))
                    .unwrap_or_default()
            )?,
            (None, Some(n)) => writeln!(f, "  versions: {n}")?,
            _ => {}
        }
        for a in &self.apps {
            writeln!(f, "\n{}  [{:?}]", a.app, a.status)?;
            if let Some(role) = &a.role {
                writeln!(
                    f,
                    "  role:       {}/roles/{} ({})",
                    role.mount,
                    role.role,
                    crate::steps::role_action_text(role)
                )?;
            }
            if !a.removed_policies.is_empty() {
                writeln!(
                    f,
                    "  mapping:    {} {} from {}",
                    if self.dry_run {
                        "would remove"
                    } else {
                        "removed"
                    },
                    a.removed_policies.join(", "),
                    a.mapping.as_ref().map(|m| m.path.as_str()).unwrap_or("?")
                )?;
            } else if let Some(m) = &a.mapping {
                writeln!(f, "  mapping:    {} ({:?})", m.path, m.action)?;
            }
            if let Some(kv) = &a.kv {
                writeln!(
                    f,
                    "  kv:         v{} on mount {}; seed {}/{}: {}",
                    kv.version, kv.mount, kv.mount, a.app, kv.seed
                )?;
                if let Some(p) = &kv.policy {
                    writeln!(f, "  kv policy:  {} ({:?})", p.name, p.action)?;
                }
            }
            writeln!(f, "  auth:       {}", a.auth)?;
            if let Some(h) = &a.post_hook {
                writeln!(
                    f,
                    "  post-hook:  {} ({})",
                    h.path.display(),
                    match (h.changed, self.dry_run) {
                        (true, true) => "would install",
                        (true, false) => "installed",
                        _ => "unchanged",
                    }
                )?;
            }
            if let Some(r) = &a.restart {
                writeln!(f, "  restart:    {}", r.reloaded.join(", "))?;
            }
            if let Some(l) = &a.leaf {
                writeln!(
                    f,
                    "  leaf:       CN = {}  issuer = {}",
                    l.cn(),
                    l.issuer_cn.as_deref().unwrap_or("?")
                )?;
                writeln!(
                    f,
                    "              serial {}  notAfter {}",
                    l.serial_hex, l.not_after_human
                )?;
            }
            if let Some(l) = &a.login {
                writeln!(
                    f,
                    "  gate:       leaf checks OK; cert login OK ({})",
                    l.token_policies.join(",")
                )?;
            }
            if let Some(serial) = &a.agent_login_serial {
                writeln!(
                    f,
                    "  agent:      logged in with the new agent cert (serial {serial}): step 3 live"
                )?;
            }
            if let Some(e) = &a.error {
                writeln!(f, "  error:      {e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_auto_auth_method_of_an_agent_config() {
        let hcl = "auto_auth {\n  method \"approle\" {\n  }\n  method \"cert\" {\n  }\n}\n";
        assert_eq!(auth_methods_in(hcl), ["approle", "cert"]);
        assert!(auth_methods_in("vault { address = \"x\" }").is_empty());
    }
}
