//! "Plan never writes", per step of the list: each step planned as `rotate plan` plans it,
//! against a mocked Vault that answers reads only (a write, or any call nobody expected,
//! panics) and a command runner that answers nothing (a plan starts no process), over a
//! tree of real files that must come out byte-for-byte and mode-for-mode unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::context::{Cancel, Deps, RunCtx};
use crate::engine::unwind::{IssuedIndex, UndoDeps};
use crate::engine::{Outcome, StepReport};
use crate::state::journal::{RunRequest, StepId};
use crate::testing::{Mocks, ca_and_leaf};

const ISSUER: &str = "PrivSec Intermediate CA (prod)";

/// A prod-shaped config whose every file lives under `root`, owned by root (the test
/// runs as root, as CI does).
fn config(root: &Path) -> Config {
    let r = root.display();
    let text = format!(
        r#"env = "prod"
[vault]
addr = "https://127.0.0.1:1"
tls_server_name = "vault.prod.privsec.ch"
ca_cert = "{r}/admin/ca.pem"
client_cert = "{r}/admin/admin.crt"
client_key = "{r}/admin/admin.key"
[pki]
mount = "pki-prod"
issuer_name = "{ISSUER}"
[admin]
role = "admin-mtls"
common_name = "admin.prod.privsec.ch"
ttl = "72h"
create_role = true
[listener]
role = "vault-server"
cert_file = "{r}/listener/tls.crt"
key_file = "{r}/listener/tls.key"
owner = "root"
reload = "systemd:openbao.service"
create_role = true
[agents]
domain = "prod.privsec.ch"
create_roles = true
[[apps]]
name = "a"
home = "{r}/home-a"
user = "root"
[proxy]
name = "proxyprod"
user = "root"
home = "{r}/proxy"
ca_bundle = "tls/vault-ca.pem"
reload = "systemd:nginx.service"
[restarts]
proxy = ["systemd-restart:nginx.service"]
vault = "systemd-restart:openbao.service"
vault_when = "always"
[run]
state_dir = "{r}/state"
"#
    );
    Config::parse(&text, &root.join("rotate.toml")).unwrap()
}

/// Every file under `root`: its bytes and mode.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p.clone());
            }
            let bytes = if meta.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(p, (bytes, meta.permissions().mode()));
        }
    }
    out
}

/// Vault as a plan sees it: nothing rotate manages exists yet but the agent's mapping;
/// the chain is `chain`; the listener serves `served`.
fn read_only_vault(chain: &str, served: &Path) -> Mocks {
    let mut m = Mocks::default();
    m.unsealed();
    let ca = chain.to_owned();
    m.pki
        .expect_read_ca_chain()
        .returning(move |_| Ok(ca.clone()));
    m.pki.expect_read_role().returning(|_, _| Ok(None));
    m.pki.expect_list_certs().returning(|_| Ok(Vec::new()));
    m.sys.expect_read_policy().returning(|_| Ok(None));
    m.sys.expect_list_auth().returning(|| {
        Ok(serde_json::from_value(serde_json::json!({
            "cert/": {"type": "cert", "description": "", "accessor": "auth_cert_1"}
        }))
        .unwrap())
    });
    m.sys.expect_list_mounts().returning(|| Ok(BTreeMap::new()));
    let ca = chain.to_owned();
    m.cert.expect_read_cert_role().returning(move |_, _| {
        Ok(Some(vault_client::CertRole {
            certificate: ca.clone(),
            ..Default::default()
        }))
    });
    let peer_chain: Vec<Vec<u8>> = vault_client::load_certs("served", served)
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    // The admin identity works over a new connection (what step 2 proves before it
    // writes): its token looks itself up, nothing else.
    m.gate.expect_admin_client().returning(|_, _, _| {
        let mut admin = crate::testing::MockAdmin::new();
        admin.expect_lookup_self().returning(|| {
            Ok(serde_json::from_value(serde_json::json!({
                "accessor": "a1", "display_name": "cert-admin", "policies": ["admin"],
                "path": "auth/cert/login", "ttl": 3600
            }))
            .unwrap())
        });
        Ok(Box::new(admin))
    });
    m.gate.expect_handshake().returning(move |_, _, _| {
        Ok(vault_client::Handshake {
            peer_chain: peer_chain.clone(),
            protocol: "TLSv1.3".into(),
            seal_status: Ok(200),
            sealed: false,
            acceptable_client_cas: None,
            millis: 1,
        })
    });
    m.cert
        .expect_list_cert_roles()
        .returning(|_| Ok(Vec::new()));
    m.kv.expect_kv2_read().returning(|_, _| Ok(None));
    m.kv.expect_kv2_read_metadata().returning(|_, _| Ok(None));
    m
}

/// Plan step `id` alone, as `rotate plan --step <id>` does once preflight passed.
/// Everything trusts the PKI chain already, but the proxy for step 5 (its bundle holds an
/// older CA only, so the plan adds the chain).
async fn plan(id: StepId) -> StepReport {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (ca, leaf) = ca_and_leaf(ISSUER);
    for d in [
        "admin",
        "listener",
        "home-a/vault/mtls",
        "proxy/tls",
        "state",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("admin/ca.pem"), &ca).unwrap();
    std::fs::write(root.join("listener/tls.crt"), format!("{leaf}{ca}")).unwrap();
    // Step 3 ran before: the agent has its login certificate.
    std::fs::write(root.join("home-a/vault/mtls/agent.crt"), &leaf).unwrap();
    let bundle = match id {
        StepId::Proxy => ca_and_leaf("Old CA").0,
        _ => ca.clone(),
    };
    std::fs::write(root.join("proxy/tls/vault-ca.pem"), bundle).unwrap();
    let cfg = config(root);
    let before = snapshot(root);

    let mocks = read_only_vault(&ca, &root.join("listener/tls.crt"));
    let runner = hooks::MockCommandRunner::new();
    let (clock, cancel, issued) = (|| 1_767_225_600_i64, Cancel::new(), IssuedIndex::new());
    let deps = Deps {
        vault: mocks.vault(),
        runner: &runner,
        clock: &clock,
        cancel: &cancel,
    };
    let request = RunRequest {
        steps: vec![id],
        apps: Vec::new(),
        kv_access: false,
        kv_seed: false,
        if_due: false,
    };
    let apps: Vec<_> = cfg.apps.iter().collect();
    let steps = super::build(&cfg, deps, &ca, &request);
    let step = steps.iter().find(|s| s.id() == id).unwrap();
    let ctx = RunCtx {
        journal: None,
        undo: UndoDeps {
            cfg: &cfg,
            vault: deps.vault,
            runner: &runner,
            timeout: std::time::Duration::from_secs(1),
            issued: &issued,
        },
        concurrency: 2,
        cancel: &cancel,
        if_due: false,
        steps: &request.steps,
    };
    let report = step.run(&apps, ctx, &|_| false).await.unwrap();
    assert_eq!(snapshot(root), before, "{id}: the plan changed a file");
    report
}

/// The plan got to a decision: every target planned, none failed, and it lists what
/// the run would change.
fn planned_changes(report: &StepReport) {
    assert!(!report.targets.is_empty(), "{}: no target", report.step);
    for t in &report.targets {
        assert_eq!(
            t.outcome,
            Outcome::Planned,
            "{} {}: {:?}",
            report.step,
            t.app,
            t.error
        );
        assert!(
            t.changes.iter().any(|c| c.is_change()),
            "{} {}: nothing to change in {:?}",
            report.step,
            t.app,
            t.changes
        );
    }
}

#[tokio::test]
async fn admin_plan_never_writes() {
    planned_changes(&plan(StepId::Admin).await);
}

#[tokio::test]
async fn listener_plan_never_writes() {
    planned_changes(&plan(StepId::Listener).await);
}

#[tokio::test]
async fn agents_plan_never_writes() {
    planned_changes(&plan(StepId::Agents).await);
}

#[tokio::test]
async fn leaf_plan_never_writes() {
    planned_changes(&plan(StepId::Leaf).await);
}

#[tokio::test]
async fn proxy_plan_never_writes() {
    planned_changes(&plan(StepId::Proxy).await);
}

#[tokio::test]
async fn restarts_plan_never_writes() {
    planned_changes(&plan(StepId::Restarts).await);
}

#[tokio::test]
async fn health_plan_never_writes() {
    let report = plan(StepId::Health).await;
    assert!(report.targets.iter().all(|t| t.outcome == Outcome::Planned));
}
