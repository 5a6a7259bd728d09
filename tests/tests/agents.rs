//! Step 3 end to end against the lab: `rotate run --step agents`, checked with real
//! clients (`bao login -method=cert`, `openssl verify`) and the server's audit log.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use rotate_cli::Exit;
use rotate_tests::{Lab, shared};

use crate::support::{bao_login, change_kind, config_in, rotate, target, tempdir};

/// Count audit log requests (writes) to `path`.
fn audit_writes(lab: &Lab, path: &str) -> usize {
    let log = std::fs::read_to_string(lab.paths.dir.join("server/audit.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("\"type\":\"request\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["request"]["path"] == path
                && matches!(
                    v["request"]["operation"].as_str(),
                    Some("create" | "update")
                )
        })
        .count()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn agents_rotate_end_to_end_and_real_clients_agree() {
    let lab = shared();
    let dir = tempdir("e2e");
    let cfg = config_in(lab, &dir, &["e2eapp1", "e2eapp2"], "");

    let (exit, report) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let text = report.to_string();
    assert!(!text.contains("PRIVATE KEY"), "no key material in JSON");
    assert!(!text.contains(lab.token()), "no token in JSON");

    for app in ["e2eapp1", "e2eapp2"] {
        let r = target(&report, "agents", app);
        assert_eq!(r["outcome"], "committed", "{r:#}");
        assert_eq!(r["applied"]["cn"], format!("agent-{app}.prod.privsec.ch"));
        assert_eq!(
            change_kind(r, &format!("pki-prod/roles/agent-mtls-{app}")),
            "create"
        );
        assert_eq!(
            change_kind(r, &format!("auth/cert/certs/agent-{app}")),
            "create"
        );
        assert_eq!(r["proof"]["login"]["mapping"], format!("agent-{app}"));
        assert!(
            r["pending"]
                .as_str()
                .unwrap()
                .contains(&format!("vault-agent-{app}.service")),
            "{r:#}"
        );

        let home = dir.join("home").join(app);
        let key = home.join("vault/mtls/agent.key");
        let crt = home.join("vault/mtls/agent.crt");
        let ca = home.join("vault/ca/ca.pem");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&crt), 0o644);
        assert_eq!(mode(&ca), 0o644);
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .contains("PRIVATE KEY")
        );

        // openssl agrees the chain verifies to the CA bundle written for the app.
        let v = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&crt)
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&v.stdout)
        );

        // The real bao CLI logs in with the new cert and gets exactly the policies.
        let login = bao_login(lab, &home);
        let mut policies: Vec<String> =
            serde_json::from_value(login["auth"]["token_policies"].clone()).unwrap();
        policies.sort();
        assert_eq!(
            policies,
            ["default", "marker-cert-auth", &format!("pki-issue-{app}")]
        );
        assert_eq!(
            login["auth"]["metadata"]["cert_name"],
            format!("agent-{app}")
        );
        assert_eq!(
            login["auth"]["metadata"]["serial_number"],
            r["applied"]["serial_decimal"]
        );
    }

    // Second run: new certificates, but no role or mapping writes.
    let role_writes = audit_writes(lab, "pki-prod/roles/agent-mtls-e2eapp1");
    let map_writes = audit_writes(lab, "auth/cert/certs/agent-e2eapp1");
    assert_eq!(
        (role_writes, map_writes),
        (1, 1),
        "first run wrote each once"
    );
    let first_serial = target(&report, "agents", "e2eapp1")["applied"]["serial_hex"].clone();
    let (exit, again) = rotate(&cfg, &["run", "--step", "agents", "--app", "e2eapp1"]).await;
    assert_eq!(exit, Exit::Ok, "{again:#}");
    assert_eq!(again["steps"][0]["targets"].as_array().unwrap().len(), 1);
    let r = target(&again, "agents", "e2eapp1");
    assert_eq!(
        change_kind(r, "pki-prod/roles/agent-mtls-e2eapp1"),
        "unchanged"
    );
    assert_eq!(change_kind(r, "auth/cert/certs/agent-e2eapp1"), "unchanged");
    assert_ne!(r["applied"]["serial_hex"], first_serial);
    assert_eq!(audit_writes(lab, "pki-prod/roles/agent-mtls-e2eapp1"), 1);
    assert_eq!(audit_writes(lab, "auth/cert/certs/agent-e2eapp1"), 1);
    // The last run's previous pair is kept (private, for `rotate rollback`); the run
    // before it was pruned when this one committed.
    let mtls = dir.join("home/e2eapp1/vault/mtls");
    let prev: Vec<String> = std::fs::read_dir(&mtls)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".prev"))
        .collect();
    let run_id = again["run_id"].as_str().unwrap();
    assert_eq!(prev.len(), 2, "{prev:?}");
    assert!(prev.iter().all(|n| n.contains(run_id)), "{prev:?}");
    let key_prev = prev.iter().find(|n| n.contains("agent.key")).unwrap();
    assert_eq!(mode(&mtls.join(key_prev)), 0o600, "the kept key is private");
}

#[tokio::test]
async fn plan_writes_nothing_and_reports_what_would_change() {
    let lab = shared();
    let dir = tempdir("plan");
    let cfg = config_in(lab, &dir, &["planapp"], "");
    let (exit, plan) = rotate(&cfg, &["plan", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Changes, "{plan:#}");
    let app = target(&plan, "agents", "planapp");
    assert_eq!(app["outcome"], "planned");
    assert_eq!(
        change_kind(app, "pki-prod/roles/agent-mtls-planapp"),
        "create"
    );
    assert_eq!(change_kind(app, "auth/cert/certs/agent-planapp"), "create");
    assert_eq!(change_kind(app, "vault/mtls/agent.key"), "create");
    assert!(
        !dir.join("home/planapp/vault").exists(),
        "plan wrote no files"
    );
    let admin = lab.admin_client().unwrap();
    use vault_client::{CertAuthApi, PkiApi};
    assert!(
        admin
            .read_role("pki-prod", "agent-mtls-planapp")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        admin
            .read_cert_role("cert", "agent-planapp")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn unknown_app_is_a_config_error_and_changes_nothing() {
    let lab = shared();
    let dir = tempdir("unknown");
    let cfg = config_in(lab, &dir, &["knownapp"], "");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents", "--app", "nosuchapp"]).await;
    assert_eq!(exit, Exit::Config);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown app \"nosuchapp\""),
        "{v}"
    );
    assert!(!dir.join("home/knownapp/vault").exists());
}

#[tokio::test]
async fn missing_role_with_create_roles_off_fails_without_writing() {
    let lab = shared();
    let dir = tempdir("norole");
    let cfg = config_in(lab, &dir, &["noroleapp"], "create_roles = false\n");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let t = target(&v, "agents", "noroleapp");
    assert_eq!(t["outcome"], "failed_nothing_written");
    let err = t["error"].as_str().unwrap();
    assert!(
        err.contains("pki-prod") && err.contains("agent-mtls-noroleapp"),
        "{err}"
    );
    assert!(!dir.join("home/noroleapp/vault").exists());
}

#[tokio::test]
async fn unwritable_target_fails_clearly_and_changes_nothing() {
    let lab = shared();
    let dir = tempdir("unwritable");
    let cfg = config_in(lab, &dir, &["blockedapp"], "");
    // `vault` is a file where the directory should be: nothing can be written below it.
    std::fs::write(dir.join("home/blockedapp/vault"), "not a dir").unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let t = target(&v, "agents", "blockedapp");
    assert_eq!(t["outcome"], "failed_nothing_written", "{t:#}");
    let err = t["error"].as_str().unwrap();
    assert!(err.contains("blockedapp/vault"), "{err}");
    let admin = lab.admin_client().unwrap();
    use vault_client::CertAuthApi;
    assert!(
        admin
            .read_cert_role("cert", "agent-blockedapp")
            .await
            .unwrap()
            .is_none(),
        "no mapping written when files could not be"
    );
}

#[tokio::test]
async fn forbidden_mapping_write_is_refused_by_preflight_before_any_write() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    use vault_client::SysApi;
    // An operator token that may do everything but write cert auth mappings.
    admin
        .write_policy(
            "rotate-no-mappings",
            "path \"*\" { capabilities = [\"create\",\"read\",\"update\",\"delete\",\"list\",\"sudo\"] }\n\
             path \"auth/cert/certs/*\" { capabilities = [\"read\", \"list\"] }\n",
        )
        .await
        .unwrap();
    let token: serde_json::Value = admin
        .request(
            vault_client::Method::Post,
            "auth/token/create",
            Some(serde_json::json!({"policies": ["rotate-no-mappings"], "ttl": "10m"})),
            vault_client::Idempotency::NonIdempotent,
        )
        .await
        .unwrap()
        .unwrap();
    let dir = tempdir("forbidden");
    let token_file = dir.join("token");
    std::fs::write(&token_file, token["auth"]["client_token"].as_str().unwrap()).unwrap();
    let cfg = config_in(lab, &dir, &["forbidapp"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &lab.paths.token_file.display().to_string(),
        &token_file.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    // The admin token cannot write the mapping: preflight's capability check says so
    // before anything is written.
    assert_eq!(exit, Exit::Vault, "{v:#}");
    assert_eq!(v["summary"], "preflight failed: nothing was written");
    let failed: Vec<&serde_json::Value> = v["preflight"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v:#}");
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("update on auth/cert/certs/agent-forbidapp"),
        "{v:#}"
    );
    let key = dir.join("home/forbidapp/vault/mtls/agent.key");
    assert!(!key.exists(), "no file written");
    use vault_client::PkiApi;
    assert!(
        admin
            .read_role("pki-prod", "agent-mtls-forbidapp")
            .await
            .unwrap()
            .is_none(),
        "no role written"
    );
}

#[tokio::test]
async fn non_pem_ca_file_is_a_config_error_and_changes_nothing() {
    let lab = shared();
    let dir = tempdir("badca");
    let cfg = config_in(lab, &dir, &["badcaapp"], "");
    let bad = dir.join("ca.pem");
    std::fs::write(&bad, "this is not PEM\n").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &lab.paths.ca_bundle.display().to_string(),
        &bad.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("PEM"),
        "{err}"
    );
    assert!(!dir.join("home/badcaapp/vault").exists());
    use vault_client::PkiApi;
    let admin = lab.admin_client().unwrap();
    assert!(
        admin
            .read_role("pki-prod", "agent-mtls-badcaapp")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn role_update_keeps_fields_rotate_does_not_manage() {
    use vault_client::PkiApi;
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let spec = pki_ops::RoleSpec::agent_client("keep.prod.privsec.ch", "1h", "2h");
    let create = pki_ops::CreatePolicy::CreateIfMissing;
    pki_ops::upsert_role(&admin, "pki-prod", "keep-role", &spec, create, false)
        .await
        .unwrap();
    // An operator sets a field rotate does not manage (Vault resets fields a write omits).
    let mut role = admin
        .read_role("pki-prod", "keep-role")
        .await
        .unwrap()
        .unwrap();
    role.insert("ou".into(), serde_json::json!(["SRE"]));
    admin
        .write_role("pki-prod", "keep-role", role)
        .await
        .unwrap();

    let changed = pki_ops::RoleSpec::agent_client("keep.prod.privsec.ch", "30m", "2h");
    let out = pki_ops::upsert_role(&admin, "pki-prod", "keep-role", &changed, create, false)
        .await
        .unwrap();
    assert_eq!(out.action, pki_ops::RoleAction::Updated);
    let after = admin
        .read_role("pki-prod", "keep-role")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after["ttl"], 1800);
    assert_eq!(
        after["ou"],
        serde_json::json!(["SRE"]),
        "the operator's field survived"
    );
}

#[tokio::test]
async fn a_role_pinned_to_another_issuer_is_refused_before_any_write() {
    use vault_client::{CertAuthApi, Idempotency, Method, PkiApi};
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let default = admin
        .read_issuer("pki-prod", "default")
        .await
        .unwrap()
        .unwrap();
    // A second issuer in pki-prod; the default stays the intermediate.
    if admin
        .read_issuer("pki-prod", "pinned-test")
        .await
        .unwrap()
        .is_none()
    {
        admin
            .request::<serde_json::Value>(
                Method::Post,
                "pki-prod/root/generate/internal",
                Some(serde_json::json!({
                    "common_name": "Pinned Test Root", "issuer_name": "pinned-test", "ttl": "24h",
                })),
                Idempotency::NonIdempotent,
            )
            .await
            .unwrap();
    }
    let now = admin
        .read_issuer("pki-prod", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.issuer_id, default.issuer_id, "the default issuer moved");
    // The operator pinned the app's agent role to it.
    let app = "pinnedapp";
    admin
        .request::<serde_json::Value>(
            Method::Post,
            &format!("pki-prod/roles/agent-mtls-{app}"),
            Some(serde_json::json!({
                "issuer_ref": "pinned-test", "allow_any_name": true, "client_flag": true,
            })),
            Idempotency::Idempotent,
        )
        .await
        .unwrap();
    let dir = tempdir("pinned");
    let cfg = config_in(lab, &dir, &[app], "");

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = crate::support::errors(&v);
    assert!(
        err.contains(&format!("pki-prod/roles/agent-mtls-{app}")) && err.contains("pinned-test"),
        "{err}"
    );
    // Nothing was written: no mapping, no files.
    assert!(
        admin
            .read_cert_role("cert", &format!("agent-{app}"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!dir.join("home").join(app).join("vault").exists());
}
