//! Step 4 end to end: a real `bao agent` (started through the lab's fake systemd) logs in
//! with the rotated agent cert, renders the leaf, runs the post-hook, which reloads a real
//! nginx; `openssl s_client` then sees the new serial.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rotate_cli::Exit;
use rotate_tests::{Lab, SERVER_NAME, shared};
use vault_client::{CertAuthApi, KvApi, SysApi};

use crate::support::{
    Nginx, add_to_section, after_step_3, change_kind, config_in, errors, rotate, system_user,
    target, tempdir,
};

/// A real nginx serving `fullchain`/`key` for `cn` on a loopback port.
fn start_nginx(dir: &Path, cn: &str, fullchain: &Path, key: &Path) -> Nginx {
    Nginx::start(dir, |port| {
        format!(
            r#"server {{
    listen 127.0.0.1:{port} ssl;
    server_name {cn};
    ssl_certificate {fullchain};
    ssl_certificate_key {key};
    location / {{ return 200 "ok\n"; }}
  }}"#,
            fullchain = fullchain.display(),
            key = key.display(),
        )
    })
}

/// The serial (hex, `aa:bb` like Vault prints it) nginx presents for `cn`, via `openssl s_client`.
fn served_serial(port: u16, cn: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {cn} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn wait_for_serial(port: u16, cn: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = served_serial(port, cn);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nginx still serves {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Put a placeholder leaf (from the lab CA) where the agent will render, so nginx can start.
fn placeholder_leaf(lab: &Lab, home: &Path, app: &str) -> (PathBuf, PathBuf) {
    let tls = home.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let cn = format!("{app}.int.privsec.ch");
    let leaf = lab
        .ca
        .leaf(&cn, &[&cn], &[], true, time::Duration::hours(2))
        .unwrap();
    let fullchain = tls.join(format!("{app}.fullchain.pem"));
    let key = tls.join(format!("{app}.key"));
    rotate_tests::write_file(
        &fullchain,
        format!("{}{}", leaf.cert_pem, lab.ca.intermediate_pem()).as_bytes(),
        0o644,
    )
    .unwrap();
    rotate_tests::write_file(&key, leaf.key_pem.as_bytes(), 0o600).unwrap();
    (fullchain, key)
}

#[tokio::test]
async fn leaf_rotation_with_a_real_agent_post_hook_and_nginx() {
    let lab = shared();
    let app = "leafapp";
    let cn = format!("{app}.int.privsec.ch");
    let dir = tempdir("leaf-e2e");
    let cfg = config_in(lab, &dir, &[app], "");
    let home = dir.join("home").join(app);
    add_to_section(
        &cfg,
        "leaf",
        &format!(
            "proxy_reload = \"signal:{}:HUP\"",
            dir.join("nginx/nginx.pid").display()
        ),
    );

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let agent_serial = target(&v, "agents", app)["applied"]["serial_decimal"].clone();

    // A leftover debug-policy on the mapping, as in the write-up.
    let admin = lab.admin_client().unwrap();
    admin
        .write_policy(
            "debug-policy",
            "path \"sys/health\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let mut mapping = admin
        .read_cert_role("cert", &format!("agent-{app}"))
        .await
        .unwrap()
        .unwrap();
    mapping.token_policies.push("debug-policy".into());
    admin
        .write_cert_role("cert", &format!("agent-{app}"), &mapping)
        .await
        .unwrap();

    let (fullchain, key) = placeholder_leaf(lab, &home, app);
    let nginx = start_nginx(&dir, &cn, &fullchain, &key);
    let placeholder = served_serial(nginx.port, &cn);
    assert!(!placeholder.is_empty());
    lab.define_agent_unit(app, &home);

    let (exit, r) = rotate(
        &cfg,
        &[
            "run",
            "--step",
            "leaf",
            "--with-kv-access",
            "--with-kv-seed",
        ],
    )
    .await;
    let agent_log =
        std::fs::read_to_string(home.join(format!("agent-{app}.log"))).unwrap_or_default();
    assert_eq!(exit, Exit::Ok, "{r:#}\nagent log:\n{agent_log}");
    let a = target(&r, "leaf", app);
    assert_eq!(a["outcome"], "committed", "{a:#}");
    assert_eq!(
        a["applied"]["removed_policies"],
        serde_json::json!(["debug-policy"])
    );
    assert_eq!(a["applied"]["seeded"], true);
    assert_eq!(change_kind(a, &format!("kv/{app}")), "create");
    assert_eq!(
        change_kind(a, &format!("sys/policies/acl/secret-agent-{app}-policy")),
        "create"
    );
    assert_eq!(
        a["proof"]["agent_login_serial"], agent_serial,
        "the restarted agent's own token was issued for the step-3 certificate"
    );
    assert_eq!(
        change_kind(a, &format!("pki-prod/roles/nginx-{app}")),
        "create"
    );
    let leaf = &a["proof"]["leaf"];
    assert_eq!(leaf["subject_cn"], cn);
    assert_eq!(leaf["dns_sans"], serde_json::json!([cn]));
    assert_eq!(leaf["issuer_cn"], "PrivSec Intermediate CA (prod)");
    assert_eq!(a["applied"]["previous_serial"], placeholder.as_str());
    let new_serial = leaf["serial_hex"].as_str().unwrap().to_owned();
    assert_ne!(new_serial, placeholder);
    let mut policies: Vec<String> =
        serde_json::from_value(a["proof"]["login"]["token_policies"].clone()).unwrap();
    policies.sort();
    assert_eq!(
        policies,
        [
            "default",
            "marker-cert-auth",
            &format!("pki-issue-{app}"),
            &format!("secret-agent-{app}-policy")
        ]
    );

    // The post-hook is installed 0755, and it reloaded the real nginx.
    let hook = home.join(format!(".vault-agent-{app}/bin/vault-agent-post-leaf.sh"));
    assert_eq!(
        std::fs::metadata(&hook).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().mode() & 0o7777,
        0o600,
        "agent wrote the key 0600"
    );
    wait_for_serial(nginx.port, &cn, &new_serial);
    assert!(agent_log.contains("vault-agent-post-leaf") || hook.exists());

    // The fake systemctl saw a user-unit restart and an is-active check.
    let calls = lab.units.calls();
    let unit = format!("vault-agent-{app}.service");
    assert!(
        calls.contains(&format!("--user restart {unit}")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!("--user is-active {unit}")),
        "{calls:?}"
    );
    assert!(lab.units.is_active(&unit));

    // KV: the secret exists now and a second run never overwrites it; the agent is
    // restarted again, so nginx gets yet another leaf.
    let before = admin
        .kv2_read_metadata("kv", app)
        .await
        .unwrap()
        .unwrap()
        .current_version;
    let (exit, r2) = rotate(
        &cfg,
        &[
            "run",
            "--step",
            "leaf",
            "--with-kv-access",
            "--with-kv-seed",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{r2:#}");
    let a2 = target(&r2, "leaf", app);
    assert_eq!(a2["outcome"], "committed", "{a2:#}");
    assert_eq!(a2["applied"]["seeded"], false);
    assert_eq!(change_kind(a2, &format!("kv/{app}")), "unchanged");
    assert_eq!(a2["applied"]["removed_policies"], serde_json::json!([]));
    assert_eq!(
        change_kind(a2, &format!("auth/cert/certs/agent-{app}")),
        "unchanged"
    );
    assert_eq!(change_kind(a2, "vault-agent-post-leaf.sh"), "unchanged");
    assert_eq!(
        admin
            .kv2_read_metadata("kv", app)
            .await
            .unwrap()
            .unwrap()
            .current_version,
        before
    );
    let newer = a2["proof"]["leaf"]["serial_hex"].as_str().unwrap();
    assert_ne!(newer, new_serial);
    wait_for_serial(nginx.port, &cn, newer);

    // Step 3 again: the KV access step 4 granted is kept, not treated as drift.
    let (exit, r3) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{r3:#}");
    let a3 = target(&r3, "agents", app);
    assert_eq!(
        change_kind(a3, &format!("auth/cert/certs/agent-{app}")),
        "unchanged",
        "{r3:#}"
    );
    let kept: Vec<String> =
        serde_json::from_value(a3["proof"]["login"]["token_policies"].clone()).unwrap();
    assert!(
        kept.contains(&format!("secret-agent-{app}-policy")),
        "{kept:?}"
    );

    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &unit])
        .status();
    drop(nginx);
}

#[tokio::test]
async fn unknown_or_v1_kv_mount_is_refused_before_anything_is_written() {
    let lab = shared();
    let (dir, cfg) = after_step_3(lab, "leaf-kv", &["kvapp"], "").await;

    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kv_mount = \"kv\"", "kv_mount = \"nokv\"");
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf", "--with-kv-access"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains("KV mount nokv") && err.contains("no such"),
        "{err}"
    );

    let admin = lab.admin_client().unwrap();
    admin
        .enable_mount(
            "kvone",
            "kv",
            [("version".to_owned(), "1".to_owned())].into(),
        )
        .await
        .unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kv_mount = \"nokv\"", "kv_mount = \"kvone\"");
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf", "--with-kv-access"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains("KV v1") && err.contains("v2 is required"),
        "{err}"
    );

    use vault_client::PkiApi;
    assert!(
        admin
            .read_role("pki-prod", "nginx-kvapp")
            .await
            .unwrap()
            .is_none(),
        "no role written"
    );
    assert!(
        !dir.join("home/kvapp/.vault-agent-kvapp").exists(),
        "no hook or agent config written"
    );
}

#[tokio::test]
async fn post_hook_dir_owned_by_a_third_user_is_refused_before_any_write() {
    let lab = shared();
    let dir = tempdir("leaf-owner");
    let cfg = config_in(lab, &dir, &["ownapp"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "user = \"root\"\n",
        "user = \"nobody\"\ngroup = \"nogroup\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let key = dir.join("home/ownapp/vault/mtls/agent.key");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_eq!(
        std::fs::metadata(&key).unwrap().uid(),
        nobody,
        "agent files owned by the app user"
    );

    // The hook's directory exists but belongs to a third user: refused at plan time,
    // before anything is written (root-owned levels are accepted: the app cannot change
    // them).
    let bin = dir.join("home/ownapp/.vault-agent-ownapp/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(4242), Some(4242)).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let t = target(&v, "leaf", "ownapp");
    assert_eq!(t["outcome"], "failed_nothing_written", "{t:#}");
    let err = errors(&v);
    assert!(
        err.contains(&bin.display().to_string()) && err.contains("owned by uid 4242"),
        "{err}"
    );
    assert!(!bin.join("vault-agent-post-leaf.sh").exists());
    use vault_client::PkiApi;
    let admin = lab.admin_client().unwrap();
    assert!(
        admin
            .read_role("pki-prod", "nginx-ownapp")
            .await
            .unwrap()
            .is_none(),
        "no role written"
    );
}

#[tokio::test]
async fn failing_or_hanging_restart_fails_the_step_and_keeps_the_leaf() {
    let lab = shared();
    let app = "hangapp";
    let (dir, cfg) = after_step_3(lab, "leaf-hang", &[app], "").await;
    let home = dir.join("home").join(app);
    let (fullchain, _) = placeholder_leaf(lab, &home, app);
    let before = std::fs::read(&fullchain).unwrap();

    // The unit is not defined: the (fake) systemctl restart fails with its message.
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains(&format!("vault-agent-{app}.service")) && err.contains("not found"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&fullchain).unwrap(),
        before,
        "the leaf stays as it was"
    );

    // A restart that hangs past its timeout (the unit answers `is-active`: inactive).
    let hang = dir.join("systemctl-hang");
    rotate_tests::write_file(
        &hang,
        b"#!/bin/sh\ncase \"$*\" in *is-active*) echo inactive; exit 3;; esac\nsleep 30\n",
        0o755,
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &lab.paths.dir.join("bin/systemctl").display().to_string(),
        &hang.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    add_to_section(&cfg, "leaf", "command_timeout = \"1s\"");
    let start = Instant::now();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "the timeout was enforced"
    );
    let err = errors(&v);
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert_eq!(std::fs::read(&fullchain).unwrap(), before);
}

#[test]
fn leaf_gate_rejects_a_wrong_cn_and_a_foreign_key() {
    let lab = shared();
    let dir = tempdir("leaf-gate");
    let home = dir.join("home/gateapp");
    let (fullchain, key) = placeholder_leaf(lab, &home, "gateapp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let hour = Duration::from_secs(3600);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let want = |cn: &'static str| rotate_cli::steps::LeafExpectation {
        cn,
        issuer: "PrivSec Intermediate CA (prod)",
        min_remaining: Duration::from_secs(60),
        max_lifetime: hour * 3,
    };
    let ok = rotate_cli::steps::verify_leaf(
        &read(&fullchain),
        &read(&key),
        &read(&lab.paths.ca_bundle),
        &want("gateapp.int.privsec.ch"),
        now,
    );
    assert!(ok.is_ok(), "{ok:?}");
    let err = rotate_cli::steps::verify_leaf(
        &read(&fullchain),
        &read(&key),
        &read(&lab.paths.ca_bundle),
        &want("other.int.privsec.ch"),
        now,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("other.int.privsec.ch") && err.contains("gateapp.int.privsec.ch"),
        "{err}"
    );
    assert!(err.contains("fullchain"), "names what it checked: {err}");

    let other = lab
        .ca
        .leaf("x", &["x"], &[], true, time::Duration::hours(1))
        .unwrap();
    std::fs::write(&key, other.key_pem.as_bytes()).unwrap();
    let err = rotate_cli::steps::verify_leaf(
        &read(&fullchain),
        &read(&key),
        &read(&lab.paths.ca_bundle),
        &want("gateapp.int.privsec.ch"),
        now,
    )
    .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("key"), "{err}");
    let _ = SERVER_NAME;
}

#[tokio::test]
async fn leaf_plan_reports_changes_and_writes_nothing() {
    use vault_client::PkiApi;
    let lab = shared();
    let app = "planleaf";
    let (dir, cfg) = after_step_3(lab, "leaf-plan", &[app], "").await;
    let admin = lab.admin_client().unwrap();
    let before = admin
        .read_cert_role("cert", &format!("agent-{app}"))
        .await
        .unwrap()
        .unwrap();

    let (exit, p) = rotate(
        &cfg,
        &[
            "plan",
            "--step",
            "leaf",
            "--with-kv-access",
            "--with-kv-seed",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Changes, "{p:#}");
    let a = target(&p, "leaf", app);
    assert_eq!(a["outcome"], "planned");
    assert_eq!(change_kind(a, &format!("kv/{app}")), "create");
    assert_eq!(
        change_kind(a, &format!("sys/policies/acl/secret-agent-{app}-policy")),
        "create"
    );
    assert_eq!(
        change_kind(a, &format!("auth/cert/certs/agent-{app}")),
        "update"
    );
    assert_eq!(change_kind(a, "vault-agent-post-leaf.sh"), "create");
    assert!(
        !dir.join(format!("home/{app}/.vault-agent-{app}")).exists(),
        "no file written"
    );
    assert!(
        admin
            .read_role("pki-prod", &format!("nginx-{app}"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(admin.kv2_read_metadata("kv", app).await.unwrap().is_none());
    let after = admin
        .read_cert_role("cert", &format!("agent-{app}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.token_policies, before.token_policies,
        "mapping untouched"
    );
    assert!(
        admin
            .read_policy(&format!("secret-agent-{app}-policy"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn steps_3_and_4_with_a_real_unprivileged_app_user() {
    let lab = shared();
    // `user` is not set: it defaults to the app's name.
    let app = "rotuser1";
    let uid = system_user(app);
    let dir = tempdir("unpriv");
    let cfg = config_in(lab, &dir, &[app], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("user = \"root\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    let home = dir.join("home").join(app);
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    for (f, mode) in [
        ("vault/mtls/agent.key", 0o600),
        ("vault/mtls/agent.crt", 0o644),
    ] {
        let m = std::fs::metadata(home.join(f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (uid, mode), "{f}");
    }

    lab.define_agent_unit_as(app, &home, Some(app));
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    let log = std::fs::read_to_string(home.join(format!("agent-{app}.log"))).unwrap_or_default();
    assert_eq!(exit, Exit::Ok, "{v:#}\nagent log:\n{log}");
    // The agent, running as the app user, rendered the leaf: the files are the user's.
    for (f, mode) in [
        (format!("tls/{app}.key"), 0o600),
        (format!("tls/{app}.fullchain.pem"), 0o644),
    ] {
        let m = std::fs::metadata(home.join(&f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (uid, mode), "{f}");
    }
    let unit = format!("vault-agent-{app}.service");
    let callers = lab.units.callers();
    assert!(
        callers.contains(&format!("{app} --user restart {unit}")),
        "systemctl --user ran as the app user: {callers:?}"
    );
    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &unit])
        .status();
}

#[tokio::test]
async fn a_failing_post_hook_fails_the_gate_with_its_reason_and_is_rolled_back() {
    let lab = shared();
    let app = "hookfail";
    let dir = tempdir("hookfail");
    let home = dir.join("home").join(app);
    let cfg = config_in(lab, &dir, &[app], "");
    // The proxy's pid file does not exist: the hook stops before reloading anything.
    let pid_file = dir.join("no-such-proxy.pid");
    add_to_section(
        &cfg,
        "leaf",
        &format!("proxy_reload = \"signal:{}:HUP\"", pid_file.display()),
    );
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    lab.define_agent_unit(app, &home);

    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "leaf", app);
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    let err = errors(&v);
    assert!(
        err.contains("post-hook failed")
            && err.contains(&format!("pid file {} is missing", pid_file.display())),
        "{err}"
    );
    // The unit was not running before the run: the unwind stopped it again.
    let unit = format!("vault-agent-{app}.service");
    assert!(!lab.units.is_active(&unit), "{t:#}");
    assert!(
        !home.join(format!(".vault-agent-{app}/agent.hcl")).exists(),
        "the agent config this run created is gone"
    );
}
