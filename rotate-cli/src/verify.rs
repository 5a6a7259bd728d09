//! `rotate verify`: the write-up's per-app checklist and everything else this tool
//! manages, checked as clients see it, changing nothing. Per app: the fullchain exists,
//! its CN, issuer and expiry are sane, its key matches, the agent unit is active, a cert
//! login with the agent's files gives exactly the expected policies, the agent's pair
//! matches, and the mapping and roles have not drifted (e.g. `debug-policy` re-attached).
//! Globally: the admin identity works, the listener serves the certificate its file
//! holds, and an expiry inventory of every managed certificate.

use std::time::Duration;

use serde::Serialize;

use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::exit::Exit;
use crate::host::owner_of;
use crate::served::{look, prove_admin};
use crate::steps::ca_chain;
use crate::steps::leaf::{LeafExpectation, leaf_role_spec, verify_leaf};
use crate::steps::preflight::Check;
use crate::topology::{Names, rel};

/// One managed certificate and when it expires.
#[derive(Debug, Clone, Serialize)]
pub struct Material {
    /// What it is (`admin certificate`, `leaf of ncprd1`, ...).
    pub what: String,
    /// Where it lives (a file, or `served by the listener`).
    pub location: String,
    /// Serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Not after.
    pub not_after: String,
    /// Days left (negative: expired).
    pub days_left: i64,
    /// Hours left (negative: expired).
    pub hours_left: i64,
}

/// What `rotate verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// Environment.
    pub env: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Every managed certificate, soonest expiry first.
    pub inventory: Vec<Material>,
    /// 0 when every check passed, 11 otherwise.
    pub exit_code: u8,
    /// One line.
    pub summary: String,
}

impl VerifyReport {
    /// The exit code.
    pub fn exit(&self) -> Exit {
        Exit::from_code(self.exit_code).unwrap_or(Exit::Failure)
    }

    fn check(&mut self, name: impl Into<String>, r: Result<String, String>) {
        let ok = r.is_ok();
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: r.unwrap_or_else(|e| e),
            class: (!ok).then_some(Exit::VerifyFailed.code()),
        });
    }

    fn material(&mut self, what: String, location: String, c: &pki_ops::CertInfo, now: i64) {
        self.inventory.push(Material {
            what,
            location,
            serial_hex: c.serial_hex.clone(),
            not_after: c.not_after_human.clone(),
            days_left: (c.not_after - now).div_euclid(86_400),
            hours_left: (c.not_after - now).div_euclid(3600),
        });
    }
}

/// Verify `apps` and the global material; reads only.
pub async fn verify(cfg: &Config, apps: &[&AppConfig], deps: Deps<'_>) -> VerifyReport {
    let mut r = VerifyReport {
        env: cfg.env.clone(),
        checks: Vec::new(),
        inventory: Vec::new(),
        exit_code: 0,
        summary: String::new(),
    };
    let v = deps.vault;
    let now = (deps.clock)();
    let e = |e: &dyn std::fmt::Display| format!("{e:#}");

    // The admin identity, and what the listener serves.
    let mut served_chain: Option<String> = None;
    let vs = &cfg.vault;
    if let (Some(cert), Some(key), Some(ca)) = (&vs.client_cert, &vs.client_key, &vs.ca_cert) {
        let pair = pki_ops::key_matches_cert_files(key, cert).map_err(|x| e(&x));
        r.check(
            "admin key matches its certificate",
            pair.map(|()| cert.display().to_string()),
        );
        if let Ok(c) = pki_ops::CertInfo::from_pem_file(cert) {
            r.material(
                "admin certificate".into(),
                cert.display().to_string(),
                &c,
                now,
            );
        }
        match prove_admin(v.gate, cert, key, ca, Duration::from_secs(10)).await {
            Ok(id) => {
                r.check(
                    "admin identity",
                    Ok(format!(
                        "sys/seal-status and token lookup work; policies {:?}",
                        id.policies
                    )),
                );
                let s = &id.listener;
                served_chain = Some(s.chain_pem.clone());
                let served_left = pki_ops::parse_bundle(&s.chain_pem, "served")
                    .ok()
                    .and_then(|c| c.first().map(|c| c.not_after - now))
                    .unwrap_or_default();
                r.inventory.push(Material {
                    what: "listener certificate".into(),
                    location: "served by the listener".into(),
                    serial_hex: s.serial_hex.clone(),
                    not_after: s.not_after.clone(),
                    days_left: served_left.div_euclid(86_400),
                    hours_left: served_left.div_euclid(3600),
                });
                if let Some(l) = &cfg.listener {
                    // The listener's directory belongs to the Vault user: read without
                    // following symlinks.
                    let read = |p: &std::path::Path| -> Result<String, String> {
                        let dir = p.parent().unwrap_or(std::path::Path::new("/"));
                        let name = std::path::Path::new(p.file_name().unwrap_or_default());
                        match pki_ops::Tree::open(dir, None).and_then(|t| t.read(name)) {
                            Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
                            Ok(None) => Err(format!("{} is missing", p.display())),
                            Err(x) => Err(e(&x)),
                        }
                    };
                    let file = read(&l.cert_file).and_then(|pem| {
                        pki_ops::CertInfo::from_pem_labeled(
                            &pem,
                            &l.cert_file.display().to_string(),
                        )
                        .map_err(|x| e(&x))
                    });
                    r.check(
                        "listener serves the certificate its file holds",
                        match file {
                            Ok(f) if f.serial_hex.eq_ignore_ascii_case(&s.serial_hex) => {
                                Ok(format!(
                                    "serial {} ({}), verified with {}",
                                    s.serial_hex,
                                    l.cert_file.display(),
                                    ca.display()
                                ))
                            }
                            Ok(f) => Err(format!(
                                "{} holds {} but the listener serves {}: reload it",
                                l.cert_file.display(),
                                f.serial_hex,
                                s.serial_hex
                            )),
                            Err(x) => Err(x),
                        },
                    );
                    let pair = read(&l.cert_file).and_then(|c| {
                        let k = read(&l.key_file)?;
                        pki_ops::key_matches_cert(&k, &c).map_err(|x| e(&x))
                    });
                    r.check(
                        "listener key matches its certificate",
                        pair.map(|()| l.key_file.display().to_string()),
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
                            .map_err(|x| e(&x))
                        });
                        r.check(format!("client bundle {}", b.display()), res);
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
                        r.check("listener has loaded its client CA file", loaded);
                    }
                }
            }
            Err(why) => r.check("admin identity", Err(why)),
        }
        if let Ok(s) = look(v.gate, Some((cert, key)), ca, Duration::from_secs(10)).await
            && s.sealed
        {
            r.check("vault unsealed", Err("sealed: unseal it".into()));
        }
    }

    // The PKI chain the apps' material must chain to.
    let chain = match ca_chain(cfg, v).await {
        Ok(c) => {
            r.check(
                format!("PKI mount {} and issuer", cfg.pki.mount),
                Ok(cfg.pki.issuer_name.clone()),
            );
            for (i, c) in pki_ops::parse_bundle(&c, "PKI chain")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                r.material(
                    if i == 0 {
                        "issuing CA".into()
                    } else {
                        "CA above it".into()
                    },
                    format!("{}/cert/ca_chain", cfg.pki.mount),
                    c,
                    now,
                );
            }
            Some(c)
        }
        Err(x) => {
            r.check(
                format!("PKI mount {} and issuer", cfg.pki.mount),
                Err(e(&x)),
            );
            None
        }
    };

    for app in apps {
        verify_app(cfg, app, deps, chain.as_deref(), &mut r).await;
    }
    if let (Some(served), Some(p)) = (&served_chain, &cfg.proxy) {
        verify_proxy(cfg, p, apps, served, deps, &mut r).await;
    }

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
        .map(|m| format!("; soonest expiry: {} in {}", m.what, left(m)))
        .unwrap_or_default();
    r.summary = if failed == 0 {
        format!("all {} checks passed{soonest}", r.checks.len())
    } else {
        format!(
            "{failed} of {} checks FAILED (listed){soonest}; nothing was changed",
            r.checks.len()
        )
    };
    r
}

async fn verify_app(
    cfg: &Config,
    app: &AppConfig,
    deps: Deps<'_>,
    chain: Option<&str>,
    r: &mut VerifyReport,
) {
    let v = deps.vault;
    let now = (deps.clock)();
    let n = Names::new(cfg, app);
    let e = |e: &dyn std::fmt::Display| format!("{e:#}");
    let a = &app.name;
    let tree = match owner_of(app)
        .and_then(|o| pki_ops::Tree::open(&app.home, Some(o)).map_err(Into::into))
    {
        Ok(t) => t,
        Err(x) => {
            r.check(format!("home of {a}"), Err(e(&x)));
            return;
        }
    };
    let read = |p: &std::path::Path| -> Result<String, String> {
        match tree.read(p) {
            Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Ok(None) => Err(format!("{} is missing", app.home.join(p).display())),
            Err(x) => Err(e(&x)),
        }
    };

    // The leaf (the write-up's checklist).
    let leaf = (|| {
        let full = read(&rel::fullchain(app))?;
        let key = read(&rel::leaf_key(app))?;
        let chain = chain.ok_or("no PKI chain to verify against")?;
        let want = LeafExpectation {
            cn: &n.leaf_cn,
            issuer: &cfg.pki.issuer_name,
            min_remaining: cfg.duration(&cfg.leaf.min_remaining),
            max_lifetime: cfg.duration(&cfg.leaf.max_lifetime),
        };
        verify_leaf(&full, &key, chain, &want, now).map_err(|x| e(&x))
    })();
    match leaf {
        Ok(info) => {
            r.check(
                format!("leaf of {a}"),
                Ok(format!(
                    "{}: CN {}, issuer {:?}, not after {}, key matches",
                    app.home.join(rel::fullchain(app)).display(),
                    n.leaf_cn,
                    info.issuer_cn.clone().unwrap_or_default(),
                    info.not_after_human
                )),
            );
            r.material(
                format!("leaf of {a}"),
                app.home.join(rel::fullchain(app)).display().to_string(),
                &info,
                now,
            );
        }
        Err(why) => r.check(format!("leaf of {a}"), Err(why)),
    }

    // The agent's login pair.
    let agent = (|| {
        let crt = read(&rel::agent_cert())?;
        let key = read(&rel::agent_key())?;
        pki_ops::key_matches_cert(&key, &crt).map_err(|x| e(&x))?;
        let info = pki_ops::CertInfo::from_pem_labeled(&crt, "agent.crt").map_err(|x| e(&x))?;
        info.expect_cn(&n.agent_cn).map_err(|x| e(&x))?;
        info.expect_validity(now, Duration::from_secs(3600), None)
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
            r.material(
                format!("agent certificate of {a}"),
                app.home.join(rel::agent_cert()).display().to_string(),
                &info,
                now,
            );
        }
        Err(why) => r.check(format!("agent certificate of {a}"), Err(why)),
    }

    // Drift of what rotate manages: the mapping (policies!) and the two roles.
    let mount = &cfg.agents.cert_auth_mount;
    let mut expected_policies = None;
    if let Some(chain) = chain {
        let spec = crate::steps::agents::mapping_spec(cfg, app, chain);
        let outcome = cert_auth::upsert_mapping(v.cert, mount, &spec, true).await;
        if let Ok(o) = &outcome {
            let dangerous: Vec<&String> = o
                .previous
                .iter()
                .flat_map(|m| &m.token_policies)
                .filter(|p| cfg.leaf.remove_policies.contains(p))
                .collect();
            if !dangerous.is_empty() {
                r.check(
                    format!("mapping {} of {a} carries no [leaf] remove_policies", o.path),
                    Err(format!(
                        "it carries {}: every token of this agent has it; `rotate run --app {a}` removes it",
                        dangerous
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
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
                expected_policies = Some(o.token_policies);
            }
            Ok(o) => r.check(
                format!("mapping {} of {a}", o.path),
                Err(format!(
                    "drifted: {}; `rotate run --step agents --app {a}` converges it",
                    o.drift
                        .iter()
                        .map(|d| format!("{} is {} (want {})", d.field, d.actual, d.desired))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            ),
            Err(x) => r.check(format!("mapping agent-{a}"), Err(e(&x))),
        }
    }
    for (role, spec) in [
        (&n.agent_role, crate::steps::agents::role_spec(cfg, &n)),
        (&n.leaf_role, leaf_role_spec(cfg, &n)),
    ] {
        let path = format!("{}/roles/{role}", cfg.pki.mount);
        let res = match v.pki.read_role(&cfg.pki.mount, role).await {
            Ok(Some(actual)) => {
                let diff = pki_ops::diff_role(&spec, &actual);
                if diff.is_empty() {
                    Ok("as rotate manages it".into())
                } else {
                    Err(format!(
                        "drifted: {}",
                        diff.iter()
                            .map(|d| format!(
                                "{} is {} (want {})",
                                d.field,
                                d.actual.as_ref().map_or("unset".into(), |v| v.to_string()),
                                d.desired
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                }
            }
            Ok(None) => Err("missing".into()),
            Err(x) => Err(e(&x)),
        };
        r.check(format!("role {path}"), res);
    }

    // The agent service, and a cert login as the agent would make it.
    let timeout = cfg.duration(&cfg.leaf.command_timeout);
    let unit = app.unit();
    r.check(
        format!("agent unit {unit}"),
        match hooks::unit_state(deps.runner, &unit, Some(app.user()), timeout).await {
            Ok(s) if s == "active" => Ok("active".into()),
            Ok(s) => Err(format!(
                "{s}: `systemctl --user status {unit}` as {}",
                app.user()
            )),
            Err(x) => Err(e(&x)),
        },
    );
    if let Some(expected) = expected_policies {
        let login = match crate::host::agent_identity(app)
            .map_err(|x| e(&x))
            .and_then(|id| v.gate.connect(&id).map_err(|x| e(&x)))
        {
            Ok(c) => cert_auth::login_gate(
                c.as_ref(),
                Some(v.token),
                mount,
                &n.mapping,
                &expected,
                None,
            )
            .await
            .map(|p| format!("policies {:?}", p.token_policies))
            .map_err(|x| e(&x)),
            Err(x) => Err(e(&x)),
        };
        r.check(format!("cert login of {a}"), login);
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
    let tree = match crate::host::owner_of_user("[proxy]", p.user(), None)
        .and_then(|o| pki_ops::Tree::open(home, Some(o)).map_err(Into::into))
    {
        Ok(t) => t,
        Err(x) => return r.check(name, Err(format!("{x:#}"))),
    };
    let text = match tree.read(bundle) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => return r.check(name, Err("missing: run step 5".into())),
        Err(x) => return r.check(name, Err(format!("{x:#}"))),
    };
    let label = home.join(bundle).display().to_string();
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
    let res = what
        .iter()
        .map(|(n, pem)| {
            pki_ops::verify_chain_as(p.trust.model(), pem, n, pem, &text, &label, now)
                .map(|()| n.clone())
                .map_err(|x| format!("does not verify {n}: {x:#}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|ok| format!("verifies {}", ok.join(", ")));
    r.check(name, res);

    if let Some(id) = p.identity(&cfg.agents.domain) {
        let what = format!("proxy client certificate {}", home.join(&id.cert).display());
        let pair = (|| -> Result<String, String> {
            let read = |f: &std::path::Path| match tree.read(f) {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(format!("{} is missing: run step 5", home.join(f).display())),
                Err(x) => Err(format!("{x:#}")),
            };
            let cert = String::from_utf8_lossy(&read(&id.cert)?).into_owned();
            let key = read(&id.key)?;
            let key =
                std::str::from_utf8(&key).map_err(|_| "the key is not PEM text".to_owned())?;
            pki_ops::key_matches_cert(key, &cert).map_err(|x| format!("{x:#}"))?;
            let c =
                pki_ops::CertInfo::from_pem_labeled(&cert, &what).map_err(|x| format!("{x:#}"))?;
            c.expect_validity(now, Duration::from_secs(0), None)
                .map_err(|x| format!("{x:#}"))?;
            pki_ops::verify_chain_labeled(&cert, &what, &cert, &text, &label, now)
                .map_err(|x| format!("{x:#}"))?;
            r.material(
                "proxy client certificate".into(),
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
    if let Some(addr) = &p.probe {
        let ca = p.probe_ca.as_ref().or(cfg.vault.ca_cert.as_ref());
        let res = match ca {
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
        };
        r.check(format!("Vault through the proxy at {addr}"), res);
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(f, "rotate verify ({})", self.env)?;
            for c in &self.checks {
                writeln!(f, "  {c}")?;
            }
            writeln!(f, "\nExpiry inventory (soonest first):")?;
            for m in &self.inventory {
                writeln!(
                    f,
                    "  {:>5} d  {}  {}  ({})",
                    m.days_left, m.not_after, m.what, m.location
                )?;
            }
            writeln!(f, "\n{} (exit {})", self.summary, self.exit_code)
        })
    }
}

/// `29 d`, or `23 h` under two days.
fn left(m: &Material) -> String {
    if m.days_left < 2 {
        format!("{} h", m.hours_left)
    } else {
        format!("{} d", m.days_left)
    }
}
