//! Step 0, preflight: every check that can be made before the first write, reads only.
//! Any failure stops the run with nothing written (exit 3 input, 4 Vault refused us,
//! 6 sealed).

use std::path::Path;

use futures_util::StreamExt as _;
use serde::Serialize;
use vault_client::HealthState;

use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::error::StepError;
use crate::exit::Exit;
use crate::host::owner_of;
use crate::state::journal::{RunRequest, StepId};
use crate::topology::Names;

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `vault unsealed`, `home of ncprd1`.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was seen, or why it failed and what to do.
    pub detail: String,
    /// Exit class when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<u8>,
}

/// The preflight's findings.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    /// The checks, in the order made.
    pub checks: Vec<Check>,
    /// The PKI mount's CA chain, once verified (the steps use it).
    #[serde(skip)]
    pub ca_chain: Option<String>,
}

impl PreflightReport {
    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The exit code of the first failure (`Ok` when ready).
    pub fn exit(&self) -> Exit {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .filter_map(|c| c.class.and_then(Exit::from_code))
            .fold(Exit::Ok, Exit::worst)
    }

    fn push(&mut self, name: impl Into<String>, r: Result<String, (Exit, String)>) -> bool {
        let ok = r.is_ok();
        let (class, detail) = match r {
            Ok(d) => (None, d),
            Err((e, d)) => (Some(e.code()), d),
        };
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
            class,
        });
        ok
    }
}

/// Run the preflight for `request` over `apps`.
pub async fn preflight(
    cfg: &Config,
    apps: &[&AppConfig],
    request: &RunRequest,
    deps: Deps<'_>,
) -> PreflightReport {
    let mut r = PreflightReport {
        checks: Vec::new(),
        ca_chain: None,
    };
    let v = deps.vault;
    let leaf = request.steps.contains(&StepId::Leaf);

    // The admin certificate, read locally: an expired one would only show up as a TLS
    // failure of the first request.
    if let Some(cert) = &cfg.vault.client_cert {
        let now = (deps.clock)();
        let res = match pki_ops::CertInfo::from_pem_file(cert) {
            Ok(c) if c.not_after < now => Err((
                Exit::Config,
                format!(
                    "admin cert {} (serial {}) expired on {}: the listener refuses it; issue a new one out of band (e.g. `bao write {}/issue/<role>` from a working identity)",
                    cert.display(),
                    c.serial_hex,
                    c.not_after_human,
                    cfg.admin_mount()
                ),
            )),
            Ok(c) if c.not_before > now => Err((
                Exit::Config,
                format!(
                    "admin cert {} is not valid before {} (check the clock)",
                    cert.display(),
                    c.not_before_human
                ),
            )),
            Ok(c) => Ok(format!(
                "serial {}, not after {}",
                c.serial_hex, c.not_after_human
            )),
            Err(e) => Err((Exit::Config, e.to_string())),
        };
        if !r.push("admin certificate valid", res) {
            return r;
        }
    }

    // Vault reachable, initialised, unsealed, active.
    let health = v.sys.health().await;
    let up = r.push(
        "vault reachable and unsealed",
        match &health {
            Ok(h) => match h.state {
                HealthState::Active => Ok(format!("active, version {}", h.body.version)),
                HealthState::Sealed => Err((
                    Exit::Sealed,
                    "sealed: unseal it (`bao operator unseal`), then run again".into(),
                )),
                HealthState::NotInitialized => Err((Exit::Sealed, "not initialised".into())),
                other => Err((
                    Exit::Vault,
                    format!("{other:?}: point [vault] addr at the active node"),
                )),
            },
            Err(e) => Err((Exit::Vault, e.to_string())),
        },
    );
    if !up {
        return r;
    }

    // PKI mount and issuer.
    match crate::steps::ca_chain(cfg, v).await {
        Ok(chain) => {
            r.push(
                format!("PKI mount {} and issuer", cfg.pki.mount),
                Ok(format!("chain starts with {:?}", cfg.pki.issuer_name)),
            );
            r.ca_chain = Some(chain);
        }
        Err(e) => {
            r.push(
                format!("PKI mount {} and issuer", cfg.pki.mount),
                Err((e.exit(), format!("{e:#}"))),
            );
        }
    }

    // The admin token may write every path the run will write.
    let mut need: Vec<(String, &'static str)> = Vec::new();
    let mount = &cfg.agents.cert_auth_mount;
    need.push((format!("sys/auth/{mount}"), "update"));
    need.push((format!("{}/revoke", cfg.pki.mount), "update"));
    need.push((
        format!("sys/policies/acl/{}", cfg.agents.marker_policy),
        "update",
    ));
    for app in apps {
        let n = Names::new(cfg, app);
        if request.steps.contains(&StepId::Agents) {
            need.push((
                format!("{}/roles/{}", cfg.pki.mount, n.agent_role),
                "update",
            ));
            need.push((format!("{}/sign/{}", cfg.pki.mount, n.agent_role), "update"));
            need.push((format!("sys/policies/acl/{}", n.issue_policy), "update"));
        }
        need.push((format!("auth/{mount}/certs/{}", n.mapping), "update"));
        if leaf {
            need.push((format!("{}/roles/{}", cfg.pki.mount, n.leaf_role), "update"));
            if request.kv_access {
                need.push((format!("sys/policies/acl/{}", n.kv_policy), "update"));
            }
            if request.kv_seed {
                let kv = cfg.leaf.kv_mount.trim_matches('/');
                need.push((format!("{kv}/data/{}", app.name), "create"));
            }
        }
    }
    if request.steps.contains(&StepId::Proxy)
        && let Some(id) = cfg
            .proxy
            .as_ref()
            .and_then(|p| p.identity(&cfg.agents.domain))
    {
        let m = &cfg.pki.mount;
        need.push((format!("{m}/roles/{}", id.role), "update"));
        need.push((format!("{m}/sign/{}", id.role), "update"));
    }
    let tls_steps =
        tls_step_checks(cfg, request, &mut need, &mut r) || request.steps.contains(&StepId::Proxy);
    let paths: Vec<String> = need.iter().map(|(p, _)| p.clone()).collect();
    let caps = v.token.capabilities_self(&paths).await;
    r.push(
        "admin token capabilities",
        match caps {
            Ok(caps) => {
                let missing: Vec<String> = need
                    .iter()
                    .filter(|(p, c)| {
                        let have = caps.get(p).cloned().unwrap_or_default();
                        !(have.iter().any(|h| h == c || h == "root" || h == "sudo")
                            || (*c == "update" && have.iter().any(|h| h == "create")))
                    })
                    .map(|(p, c)| format!("{c} on {p}"))
                    .collect();
                if missing.is_empty() {
                    Ok(format!("{} paths writable", need.len()))
                } else {
                    Err((
                        Exit::Vault,
                        format!(
                            "the admin token lacks: {}; grant them in the admin policy",
                            missing.join(", ")
                        ),
                    ))
                }
            }
            Err(e) => Err((Exit::Vault, format!("sys/capabilities-self: {e}"))),
        },
    );

    // Every role the run issues from signs with its mount's default issuer: that is the
    // chain the gates, the cert auth mapping and the bundles are checked against.
    let pki = cfg.pki.mount.as_str();
    let mut roles: Vec<(&str, &str)> = Vec::new();
    let wants = |s: StepId| request.steps.contains(&s);
    if let (true, Some(a)) = (wants(StepId::Admin), &cfg.admin) {
        roles.push((cfg.admin_mount(), &a.role));
    }
    if let (true, Some(l)) = (wants(StepId::Listener), &cfg.listener) {
        roles.push((pki, &l.role));
    }
    let names: Vec<Names> = apps.iter().map(|a| Names::new(cfg, a)).collect();
    for n in &names {
        if wants(StepId::Agents) {
            roles.push((pki, &n.agent_role));
        }
        if leaf {
            roles.push((pki, &n.leaf_role));
        }
    }
    let proxy_role = cfg
        .proxy
        .as_ref()
        .and_then(|p| p.identity(&cfg.agents.domain))
        .filter(|_| wants(StepId::Proxy))
        .map(|id| id.role);
    if let Some(r) = &proxy_role {
        roles.push((pki, r));
    }
    // Reads only, a few per app: as many at once as the run allows.
    let found: Vec<Result<Option<String>, StepError>> = futures_util::stream::iter(roles)
        .map(|(mount, role)| crate::steps::pinned_issuer(v, mount, role))
        .buffered(cfg.run.concurrency.max(1))
        .collect()
        .await;
    let mut pinned = Vec::new();
    let mut failed: Option<(Exit, String)> = None;
    for f in found {
        match f {
            Ok(None) => {}
            Ok(Some(why)) => pinned.push(why),
            Err(e) => {
                failed.get_or_insert((e.exit(), format!("{e:#}")));
            }
        }
    }
    r.push(
        "roles sign with their mount's default issuer",
        match (failed, pinned.is_empty()) {
            (Some(f), _) => Err(f),
            (None, true) => Ok("no role pins another issuer".into()),
            (None, false) => Err((Exit::Config, pinned.join("; "))),
        },
    );

    if tls_steps {
        check_tls_files(cfg, request, deps, &mut r).await;
    }

    // Apps: user, home (no symlink, owned by the app or root).
    for app in apps {
        let owner = match owner_of(app) {
            Ok(o) => {
                r.push(
                    format!("user of {}", app.name),
                    Ok(format!("{} (uid {}, gid {})", app.user(), o.uid, o.gid)),
                );
                o
            }
            Err(e) => {
                r.push(
                    format!("user of {}", app.name),
                    Err((Exit::Config, e.to_string())),
                );
                continue;
            }
        };
        r.push(
            format!("home of {}", app.name),
            match pki_ops::Tree::open(&app.home, Some(owner)) {
                Ok(_) => Ok(format!("{} (no symlinks, owner ok)", app.home.display())),
                Err(e) => Err((Exit::Config, e.to_string())),
            },
        );
    }

    // Every program root will run: found on the fixed PATH, owned by root and writable by
    // nobody else along its whole path (else a tenant decides what root runs).
    for (what, prog) in programs_root_runs(cfg, request) {
        r.push(
            format!("program {what}"),
            hooks::trusted_program(&prog)
                .map(|p| p.display().to_string())
                .map_err(|e| {
                    (
                        Exit::Config,
                        format!("{e}; fix it or point [commands] elsewhere"),
                    )
                }),
        );
    }
    // A `cmd:` line's scripts and files (by absolute path) are root's alone too.
    for (setting, reloader) in cfg.reloaders() {
        if let Ok(hooks::Reloader::Command { args, .. }) = reloader
            && step_runs(request, &setting)
        {
            r.push(
                format!("files {setting} names"),
                hooks::check_named_files(&args.join(" "))
                    .map(|()| "none another user can write".into())
                    .map_err(|e| (Exit::Config, format!("{e}; fix [{setting}]"))),
            );
        }
    }
    if leaf {
        let agent = &cfg.commands.agent;
        r.push(
            "agent binary",
            match hooks::resolve_program(agent) {
                Ok(p) if p.is_file() => Ok(p.display().to_string()),
                Ok(p) => Err((
                    Exit::Config,
                    format!("{} does not exist; set [commands] agent", p.display()),
                )),
                Err(e) => Err((Exit::Config, format!("{e}; set [commands] agent"))),
            },
        );
        if request.kv_access || request.kv_seed {
            let kv = cfg.leaf.kv_mount.trim_matches('/').to_owned();
            let res = match v.sys.list_mounts().await {
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
                Err(e) => Err((Exit::Vault, e.to_string())),
            };
            r.push(format!("KV mount {kv}"), res);
        }
    }
    r
}

/// Steps 1 and 2: configured when asked for; the paths their writes need. Returns
/// whether either is requested.
fn tls_step_checks(
    cfg: &Config,
    request: &RunRequest,
    need: &mut Vec<(String, &'static str)>,
    r: &mut PreflightReport,
) -> bool {
    let issue = |mode: crate::config::KeyMode| match mode {
        crate::config::KeyMode::Vault => "issue",
        _ => "sign",
    };
    let mut any = false;
    if request.steps.contains(&StepId::Admin) {
        any = true;
        match &cfg.admin {
            Some(a) => {
                let m = cfg.admin_mount();
                need.push((format!("{m}/roles/{}", a.role), "update"));
                need.push((format!("{m}/{}/{}", issue(a.key_mode), a.role), "update"));
                need.push((format!("{m}/revoke"), "update"));
            }
            None => {
                r.push(
                    "step 1 (admin) configured",
                    Err((Exit::Config, "add an [admin] section to the config".into())),
                );
            }
        }
    }
    if request.steps.contains(&StepId::Listener) {
        any = true;
        match &cfg.listener {
            Some(l) => {
                let m = &cfg.pki.mount;
                need.push((format!("{m}/roles/{}", l.role), "update"));
                need.push((format!("{m}/{}/{}", issue(l.key_mode), l.role), "update"));
            }
            None => {
                r.push(
                    "step 2 (listener) configured",
                    Err((
                        Exit::Config,
                        "add a [listener] section to the config".into(),
                    )),
                );
            }
        }
    }
    any
}

/// Steps 1 and 2: their directories (no symlinks, right owners), the listener's owner,
/// its reloader, the admin mount's chain.
async fn check_tls_files(
    cfg: &Config,
    request: &RunRequest,
    deps: Deps<'_>,
    r: &mut PreflightReport,
) {
    let dir_of = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    if let (true, Some(_)) = (request.steps.contains(&StepId::Admin), &cfg.admin) {
        let m = cfg.admin_mount();
        let chain = crate::steps::mount_chain(deps.vault, m, None).await;
        r.push(
            format!("admin PKI mount {m}"),
            chain
                .map(|_| "CA chain readable".to_owned())
                .map_err(|e| (Exit::Config, format!("{e:#}"))),
        );
        let mut dirs: Vec<std::path::PathBuf> = [&cfg.vault.client_cert, &cfg.vault.ca_cert]
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
                pki_ops::Tree::open(&d, Some(pki_ops::Owner::current()))
                    .map(|_| "no symlinks, owned by root".to_owned())
                    .map_err(|e| (Exit::Config, e.to_string())),
            );
        }
    }
    if request.steps.contains(&StepId::Proxy) {
        let res = match cfg.proxy.as_ref().and_then(|p| Some((p, p.home.as_ref()?))) {
            None => Err((
                Exit::Config,
                "step 5 needs [proxy] name, home and ca_bundle".to_owned(),
            )),
            Some((p, home)) => crate::host::owner_of_user("[proxy]", p.user(), None)
                .map_err(|e| (Exit::Config, e.to_string()))
                .and_then(|o| {
                    pki_ops::Tree::open(home, Some(o))
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
    if let (true, Some(l)) = (request.steps.contains(&StepId::Listener), &cfg.listener) {
        let owner = nix::unistd::User::from_name(&l.owner).ok().flatten();
        let Some(u) = owner else {
            r.push(
                format!("listener owner {}", l.owner),
                Err((Exit::Config, "no such user ([listener] owner)".into())),
            );
            return;
        };
        let o = pki_ops::Owner {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        };
        let d = dir_of(&l.cert_file);
        r.push(
            format!("listener directory {}", d.display()),
            pki_ops::Tree::open(&d, Some(o))
                .map(|_| format!("no symlinks, owner {} or root", l.owner))
                .map_err(|e| (Exit::Config, e.to_string())),
        );
        let res = match l.reload.parse::<hooks::Reloader>() {
            // Root signals only the Vault server: a stale or planted pid file must not
            // make it signal anything else.
            Ok(hooks::Reloader::Signal { pid_file, .. }) => {
                hooks::open_pid_file(&pid_file, &cfg.vault_process())
                    .map(|(_, info)| format!("{} names the server: {info}", pid_file.display()))
                    .map_err(|e| (Exit::Config, format!("{e}: fix [listener] reload")))
            }
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err((Exit::Config, e.to_string())),
        };
        r.push("listener reload", res);
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
}

/// Whether the reloader at `setting` is used by the steps `request` runs.
fn step_runs(request: &RunRequest, setting: &str) -> bool {
    let step = match setting.split('.').next() {
        Some("listener") => StepId::Listener,
        Some("proxy") => StepId::Proxy,
        _ => StepId::Restarts,
    };
    request.steps.contains(&step)
}

/// The programs this run may start as root, each with what it is for: `systemctl` and
/// `runuser` for the agents (step 4), and what each reloader of the requested steps runs
/// (`podman`, `systemctl`, `sh` and the program a `cmd:` names by absolute path).
fn programs_root_runs(cfg: &Config, request: &RunRequest) -> Vec<(String, String)> {
    let wants = |s: StepId| request.steps.contains(&s);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |what: String, name: &str| {
        let prog = cfg.program(name);
        if !out.iter().any(|(_, p)| *p == prog) {
            out.push((what, prog));
        }
    };
    if wants(StepId::Leaf) {
        add("systemctl (agent units)".into(), "systemctl");
        add("runuser (agent units, as the app user)".into(), "runuser");
    }
    for (setting, reloader) in cfg.reloaders() {
        let Some(reloader) = reloader.ok().filter(|_| step_runs(request, &setting)) else {
            continue;
        };
        match reloader {
            hooks::Reloader::PodmanLabel { .. } | hooks::Reloader::PodmanContainer { .. } => {
                add(format!("podman ({setting})"), "podman")
            }
            hooks::Reloader::Systemd { .. } => add(format!("systemctl ({setting})"), "systemctl"),
            hooks::Reloader::SystemdUser { .. } => {
                add(format!("systemctl ({setting})"), "systemctl");
                add(format!("runuser ({setting})"), "runuser");
            }
            hooks::Reloader::Command { program, args } => {
                add(format!("{program} ({setting})"), &program);
                // `cmd:/path/to/script ...`: the script root runs, too.
                if let Some(first) = args
                    .get(1)
                    .and_then(|line| line.split_whitespace().next())
                    .filter(|w| w.starts_with('/'))
                {
                    add(format!("{first} ({setting})"), first);
                }
            }
            _ => {}
        }
    }
    out
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok" } else { "FAIL" };
        write!(f, "[{mark}] {}: {}", self.name, self.detail)
    }
}

impl std::fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Step 0: preflight")?;
        for c in &self.checks {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}
