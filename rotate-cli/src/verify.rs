//! `rotate verify`: the write-up's per-app checklist and everything else this tool
//! manages, checked as clients see it, changing nothing. Each step of the list brings its
//! own checks ([`crate::steps::def::StepDef::verify`] once, then
//! [`crate::steps::def::StepDef::verify_app`] per app); here: the PKI chain, each app's
//! home, the expiry inventory and the verdict.

use crate::checks::VerifyReport;
use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::exit::Exit;
use crate::host::owner_of;
use crate::state::journal::{RunRequest, StepId};
use crate::steps::ORDER;
use crate::steps::common::ca_chain;
use crate::steps::def::{AppView, Ctx, Seen};
use crate::topology::Names;

/// Verify `apps` and the global material; reads only.
pub async fn verify(cfg: &Config, apps: &[&AppConfig], deps: Deps<'_>) -> VerifyReport {
    let mut r = VerifyReport {
        env: cfg.env.clone(),
        checks: Vec::new(),
        inventory: Vec::new(),
        exit_code: 0,
        summary: String::new(),
    };
    let request = RunRequest {
        steps: StepId::ORDER[1..].to_vec(),
        apps: Vec::new(),
        kv_access: false,
        kv_seed: false,
        if_due: false,
    };
    let ctx = Ctx {
        cfg,
        apps,
        request: &request,
        deps,
    };
    let mut seen = Seen {
        chain: pki_chain(&ctx, &mut r).await,
        ..Seen::default()
    };
    for def in ORDER {
        def.verify(&ctx, &mut seen, &mut r).await;
    }
    for app in apps {
        let Some(view) = open_app(cfg, app, &mut r) else {
            continue;
        };
        for def in ORDER {
            def.verify_app(&ctx, &view, &seen, &mut r).await;
        }
    }
    judge(&mut r);
    r
}

/// The PKI chain the apps' material must chain to, into the inventory.
async fn pki_chain(ctx: &Ctx<'_>, r: &mut VerifyReport) -> Option<String> {
    let (cfg, now) = (ctx.cfg, ctx.now());
    let name = format!("PKI mount {} and issuer", cfg.pki.mount);
    match ca_chain(cfg, ctx.deps.vault).await {
        Ok(c) => {
            r.check(name, Ok(cfg.pki.issuer_name.clone()));
            let certs = pki_ops::parse_bundle(&c, "PKI chain").unwrap_or_default();
            for (i, cert) in certs.iter().enumerate() {
                let what = if i == 0 { "issuing CA" } else { "CA above it" };
                r.material(
                    crate::checks::Labels::of(crate::checks::MaterialKind::Ca),
                    what,
                    format!("{}/cert/ca_chain", cfg.pki.mount),
                    cert,
                    now,
                );
            }
            Some(c)
        }
        Err(x) => {
            r.check(name, Err(format!("{x:#}")));
            None
        }
    }
}

/// `app`'s home, opened without following symlinks as its owner's.
fn open_app<'a>(cfg: &Config, app: &'a AppConfig, r: &mut VerifyReport) -> Option<AppView<'a>> {
    match owner_of(app).and_then(|o| pki_ops::Tree::open(&app.home, Some(o)).map_err(Into::into)) {
        Ok(tree) => Some(AppView {
            app,
            names: Names::new(cfg, app),
            tree,
        }),
        Err(x) => {
            r.check(format!("home of {}", app.name), Err(format!("{x:#}")));
            None
        }
    }
}

/// Exit code and summary from the checks; the inventory soonest expiry first.
fn judge(r: &mut VerifyReport) {
    r.inventory.sort_by_key(|m| m.hours_left);
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    r.exit_code = if failed == 0 {
        Exit::Ok
    } else {
        Exit::VerifyFailed
    }
    .code();
    let soonest = r
        .inventory
        .first()
        .map(|m| format!("; soonest expiry: {} in {}", m.what, crate::checks::left(m)))
        .unwrap_or_default();
    r.summary = if failed == 0 {
        format!("all {} checks passed{soonest}", r.checks.len())
    } else {
        format!(
            "{failed} of {} checks FAILED (listed){soonest}; nothing was changed",
            r.checks.len()
        )
    };
}
