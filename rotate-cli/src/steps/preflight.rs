//! Step 0, preflight: every check that can be made before the first write, reads only.
//! Any failure stops the run with nothing written (exit 3 input, 4 Vault refused us,
//! 6 sealed). The checks every run needs are here; each requested step adds its own
//! ([`super::def::StepDef::needs`] and [`super::def::StepDef::preflight`]).

use futures_util::StreamExt as _;
use vault_client::HealthState;

use super::def::{Ctx, Needs};
use crate::checks::PreflightReport;
use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::error::StepError;
use crate::exit::Exit;
use crate::host::owner_of;
use crate::state::journal::{RunRequest, StepId};

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
    let ctx = Ctx {
        cfg,
        apps,
        request,
        deps,
    };
    if !admin_cert_valid(&ctx, &mut r) || !vault_up(&ctx, &mut r).await {
        return r;
    }
    pki_chain(&ctx, &mut r).await;
    let mut needs = common_needs(&ctx);
    for def in super::requested(request) {
        def.needs(&ctx, &mut needs);
    }
    capabilities(&ctx, &needs, &mut r).await;
    default_issuers(&ctx, &needs, &mut r).await;
    for def in super::requested(request) {
        def.preflight(&ctx, &mut r).await;
    }
    app_homes(&ctx, &mut r);
    programs(&ctx, needs.programs, &mut r);
    r
}

/// The admin certificate, read locally: an expired one would only show up as a TLS
/// failure of the first request.
fn admin_cert_valid(ctx: &Ctx<'_>, r: &mut PreflightReport) -> bool {
    let cfg = ctx.cfg;
    let Some(cert) = &cfg.vault.client_cert else {
        return true;
    };
    let now = ctx.now();
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
    r.push("admin certificate valid", res)
}

/// Vault reachable, initialised, unsealed, active.
async fn vault_up(ctx: &Ctx<'_>, r: &mut PreflightReport) -> bool {
    let sys = ctx.deps.vault.sys;
    let leader = || async {
        sys.leader()
            .await
            .ok()
            .map(|l| l.leader_address)
            .filter(|a| !a.is_empty())
    };
    r.push(
        "vault reachable and unsealed",
        match sys.health().await {
            Ok(h) => match h.state {
                HealthState::Active => Ok(format!("active, version {}", h.body.version)),
                // A standby forwards every request to the active node.
                HealthState::Standby | HealthState::PerformanceStandby => match leader().await {
                    Some(active) => Ok(format!(
                        "standby (version {}), forwarding to the active node {active}",
                        h.body.version
                    )),
                    None => Err((
                        Exit::Vault,
                        "a standby, and no active node is elected (sys/leader): the cluster has lost its quorum or is electing; check every node".into(),
                    )),
                },
                HealthState::Sealed => Err((
                    Exit::Sealed,
                    "sealed: unseal it (`bao operator unseal`), then run again".into(),
                )),
                HealthState::NotInitialized => Err((Exit::Sealed, "not initialised".into())),
                other => Err((
                    Exit::Vault,
                    format!(
                        "{other:?}: point [vault] addr at the active node{}",
                        leader().await.map(|a| format!(" ({a})")).unwrap_or_default()
                    ),
                )),
            },
            Err(e) => Err((e.class().into(), e.to_string())),
        },
    )
}

/// The PKI mount and its issuer: the chain every step checks against.
async fn pki_chain(ctx: &Ctx<'_>, r: &mut PreflightReport) {
    let cfg = ctx.cfg;
    let name = format!("PKI mount {} and issuer", cfg.pki.mount);
    match super::common::ca_chain(cfg, ctx.deps.vault).await {
        Ok(chain) => {
            r.push(
                name,
                Ok(format!("chain starts with {:?}", cfg.pki.issuer_name)),
            );
            r.ca_chain = Some(chain);
        }
        Err(e) => {
            r.push(name, Err((e.exit(), format!("{e:#}"))));
        }
    }
}

/// What every run writes, whatever its steps: the cert auth mount (enabled when
/// missing), revocations (undo), the marker policy.
fn common_needs(ctx: &Ctx<'_>) -> Needs {
    let cfg = ctx.cfg;
    let mut needs = Needs::default();
    needs.cap(format!("sys/auth/{}", cfg.agents.cert_auth_mount), "update");
    needs.cap(format!("{}/revoke", cfg.pki.mount), "update");
    needs.cap(
        format!("sys/policies/acl/{}", cfg.agents.marker_policy),
        "update",
    );
    needs
}

/// The admin token may write every path the run will write.
async fn capabilities(ctx: &Ctx<'_>, needs: &Needs, r: &mut PreflightReport) {
    let need = &needs.caps;
    let paths: Vec<String> = need.iter().map(|(p, _)| p.clone()).collect();
    let caps = ctx.deps.vault.token.capabilities_self(&paths).await;
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
}

/// Every role the run issues from signs with its mount's default issuer: that is the
/// chain the gates, the cert auth mapping and the bundles are checked against.
async fn default_issuers(ctx: &Ctx<'_>, needs: &Needs, r: &mut PreflightReport) {
    let v = ctx.deps.vault;
    // Reads only, a few per app: as many at once as the run allows.
    let found: Vec<Result<Option<String>, StepError>> = futures_util::stream::iter(&needs.roles)
        .map(|(mount, role)| super::common::pinned_issuer(v, mount, role))
        .buffered(ctx.cfg.run.concurrency.max(1))
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
}

/// Apps: user, home (no symlink, owned by the app or root).
fn app_homes(ctx: &Ctx<'_>, r: &mut PreflightReport) {
    for app in ctx.apps {
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
}

/// Every program root will run (the steps' own, and what each reloader of the requested
/// steps runs): found on the fixed PATH, owned by root and writable by nobody else along
/// its whole path (else a tenant decides what root runs). A `cmd:` line's scripts and
/// files (by absolute path) are root's alone too.
fn programs(ctx: &Ctx<'_>, mut programs: Vec<(String, String)>, r: &mut PreflightReport) {
    let (cfg, request) = (ctx.cfg, ctx.request);
    reloader_programs(cfg, request, &mut programs);
    for (what, prog) in programs {
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
}

/// Whether the reloader at `setting` is used by the steps `request` runs.
fn step_runs(request: &RunRequest, setting: &str) -> bool {
    let step = match setting.split('.').next() {
        // A cluster node's restart is step 6's.
        Some("listener") if setting.ends_with(".restart") => StepId::Restarts,
        Some("listener") => StepId::Listener,
        Some("proxy") => StepId::Proxy,
        _ => StepId::Restarts,
    };
    request.steps.contains(&step)
}

/// What each reloader of the requested steps runs as root (`podman`, `systemctl`, `sh`
/// and the program a `cmd:` names by absolute path), added to `out`.
fn reloader_programs(cfg: &Config, request: &RunRequest, out: &mut Vec<(String, String)>) {
    let mut add = |what: String, name: &str| {
        let prog = cfg.program(name);
        if !out.iter().any(|(_, p)| *p == prog) {
            out.push((what, prog));
        }
    };
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
}
