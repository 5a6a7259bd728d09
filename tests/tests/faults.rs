//! Regressions from the engine review, against the lab: gates that must fail, undo that
//! must be complete, operator state that must survive, hostile app trees.

use std::path::Path;

use rotate_cli::Exit;
use rotate_tests::shared;
use vault_client::{CertAuthApi, Idempotency, KvApi, Method, PkiApi, SysApi, VaultClient};

use crate::support::{
    add_to_section, after_step_3, bao_login, change_kind, config_in, errors, rotate, target,
    tempdir,
};

async fn post(admin: &VaultClient, path: &str, body: serde_json::Value) -> serde_json::Value {
    admin
        .request::<serde_json::Value>(Method::Post, path, Some(body), Idempotency::NonIdempotent)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .unwrap_or_default()
}

fn serial_of(home: &Path) -> String {
    let pem = std::fs::read_to_string(home.join("vault/mtls/agent.crt")).unwrap();
    pki_ops::CertInfo::from_pem(&pem).unwrap().serial_hex
}

#[tokio::test]
async fn identity_policy_fails_the_gate_and_the_new_cert_is_revoked_and_the_pair_restored() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let app = "identapp";
    let (dir, cfg) = after_step_3(lab, "ident", &[app], "").await;
    let home = dir.join("home").join(app);
    let before = serial_of(&home);
    let key_before = std::fs::read(home.join("vault/mtls/agent.key")).unwrap();

    // The agent's entity joins a group that carries an extra policy.
    let login = bao_login(lab, &home);
    let entity = login["auth"]["entity_id"].as_str().unwrap().to_owned();
    admin
        .write_policy(
            "ident-extra",
            "path \"sys/mounts\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    post(
        &admin,
        "identity/group",
        serde_json::json!({
            "name": "identapp-group",
            "policies": ["ident-extra"],
            "member_entity_ids": [entity],
        }),
    )
    .await;

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "agents", app);
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    let err = errors(&v);
    assert!(
        err.contains("ident-extra") && err.contains("identity"),
        "{err}"
    );

    // The pair on disk is the previous one, byte for byte.
    assert_eq!(serial_of(&home), before);
    assert_eq!(
        std::fs::read(home.join("vault/mtls/agent.key")).unwrap(),
        key_before
    );
    // The certificate the failed run issued is revoked.
    let issued = t["applied"]["serial_hex"]
        .as_str()
        .unwrap_or_else(|| panic!("the report names the issued serial: {t:#}"));
    assert_ne!(issued, before);
    let rec = admin
        .read_cert("pki-prod", issued)
        .await
        .unwrap()
        .expect("the issued certificate is known to the PKI");
    assert_ne!(rec.revocation_time, 0, "serial {issued} was revoked");
    let old = admin.read_cert("pki-prod", &before).await.unwrap().unwrap();
    assert_eq!(
        old.revocation_time, 0,
        "the previous certificate still works"
    );
}

#[tokio::test]
async fn an_operator_extended_policy_is_kept_with_its_diff_and_the_run_commits() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let app = "extendapp";
    let (_, cfg) = after_step_3(lab, "extend", &[app], "").await;
    let name = format!("pki-issue-{app}");
    let ours = admin.read_policy(&name).await.unwrap().unwrap();
    let extended = format!("{ours}\npath \"kv/data/shared\" {{ capabilities = [\"read\"] }}\n");
    admin.write_policy(&name, &extended).await.unwrap();

    let (exit, p) = rotate(&cfg, &["plan", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Changes, "{p:#}");
    let t = target(&p, "agents", app);
    assert_eq!(
        change_kind(t, &format!("sys/policies/acl/{name}")),
        "kept",
        "{t:#}"
    );
    assert!(
        t.to_string().contains("kv/data/shared"),
        "plan shows the text diff: {t:#}"
    );

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        admin.read_policy(&name).await.unwrap().unwrap(),
        extended,
        "the operator's grant survived"
    );
}

#[tokio::test]
async fn a_mapping_constraint_rotate_does_not_manage_is_refused_or_converged() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let app = "ouapp";
    let (_, cfg) = after_step_3(lab, "ou", &[app], "").await;
    let mapping = format!("agent-{app}");
    let mut role = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();
    role.other.insert(
        "allowed_organizational_units".into(),
        serde_json::json!(["Finance"]),
    );
    admin
        .write_cert_role("cert", &mapping, &role)
        .await
        .unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let t = target(&v, "agents", app);
    assert_eq!(t["outcome"], "failed_nothing_written", "{t:#}");
    let err = errors(&v);
    assert!(
        err.contains("allowed_organizational_units") && err.contains("converge_unmanaged"),
        "{err}"
    );

    add_to_section(&cfg, "agents", "converge_unmanaged = true");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let after = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();
    let ous = after.other.get("allowed_organizational_units");
    assert!(
        ous.is_none_or(|v| v.as_array().is_some_and(Vec::is_empty)),
        "converged: {ous:?}"
    );
}

#[tokio::test]
async fn rsa_key_mode_issues_an_rsa_agent_cert_that_logs_in() {
    let lab = shared();
    let app = "rsaapp";
    let dir = tempdir("rsa");
    let cfg = config_in(lab, &dir, &[app], "key_mode = \"csr-rsa2048\"\n");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let home = dir.join("home").join(app);
    let key = std::fs::read_to_string(home.join("vault/mtls/agent.key")).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(home.join("vault/mtls/agent.key"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2048 bit"), "an RSA 2048 key: {text}");
    assert!(key.contains("PRIVATE KEY"));
    let login = bao_login(lab, &home);
    assert_eq!(
        login["auth"]["metadata"]["cert_name"],
        format!("agent-{app}")
    );
}

#[tokio::test]
async fn a_step_4_failure_after_the_mapping_write_restores_mapping_role_policy_seed_and_hook() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let app = "undoapp";
    let (dir, cfg) = after_step_3(lab, "undo4", &[app], "").await;
    let home = dir.join("home").join(app);
    // The seed's leftover debug-policy, which step 4 removes from the mapping.
    admin
        .write_policy(
            "debug-policy",
            "path \"sys/health\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let mapping = format!("agent-{app}");
    let mut role = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();
    role.token_policies.push("debug-policy".into());
    admin
        .write_cert_role("cert", &mapping, &role)
        .await
        .unwrap();
    let before = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();

    // No unit is defined for the app: the restart fails after every Vault write.
    let (exit, v) = rotate(
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
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "leaf", app);
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    assert_eq!(
        change_kind(t, &format!("auth/cert/certs/{mapping}")),
        "update"
    );

    let after = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();
    // Restored, except the policy `[leaf] remove_policies` names: a security fix the app
    // cannot veto by making its own rotation fail.
    let mut expected = before.token_policies.clone();
    expected.retain(|p| p != "debug-policy");
    assert_eq!(
        after.token_policies, expected,
        "mapping restored, never with debug-policy"
    );
    assert_eq!(after.token_max_ttl, before.token_max_ttl);
    assert!(
        admin
            .read_role("pki-prod", &format!("nginx-{app}"))
            .await
            .unwrap()
            .is_none(),
        "role removed"
    );
    assert!(
        admin
            .read_policy(&format!("secret-agent-{app}-policy"))
            .await
            .unwrap()
            .is_none(),
        "KV policy removed"
    );
    assert!(
        admin.kv2_read_metadata("kv", app).await.unwrap().is_none(),
        "the seed this run created is gone"
    );
    assert!(
        !home.join(format!(".vault-agent-{app}")).exists(),
        "hook, agent config and the directories created for them are gone"
    );
}

#[tokio::test]
async fn a_symlinked_agent_dir_is_refused_and_its_target_untouched() {
    let lab = shared();
    let app = "linkapp";
    let (dir, cfg) = after_step_3(lab, "linkdir", &[app], "").await;
    let home = dir.join("home").join(app);
    // The app points its agent directory at a root-owned directory.
    let victim = dir.join("root-owned");
    std::fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, home.join(format!(".vault-agent-{app}"))).unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains(&format!(".vault-agent-{app}")) && err.contains("symlink"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing created in the target"
    );
    let admin = lab.admin_client().unwrap();
    assert!(
        admin
            .read_role("pki-prod", &format!("nginx-{app}"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_key_swapped_for_a_symlink_is_refused_and_never_read_or_copied() {
    let lab = shared();
    let app = "swapapp";
    let (dir, cfg) = after_step_3(lab, "swap", &[app], "").await;
    let home = dir.join("home").join(app);
    let secret = dir.join("shadow");
    std::fs::write(&secret, "root:SECRET-HASH:19000:0:99999:7:::\n").unwrap();
    let key = home.join("vault/mtls/agent.key");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&secret, &key).unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert_eq!(
        target(&v, "agents", app)["outcome"],
        "failed_nothing_written"
    );
    let err = errors(&v);
    assert!(
        err.contains("agent.key") && err.contains("symlink"),
        "{err}"
    );
    // No file anywhere in the home carries the secret.
    let mut stack = vec![home.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains("SECRET-HASH"),
                    "{} holds the secret",
                    e.path().display()
                );
            }
        }
    }
    assert!(
        std::fs::symlink_metadata(&key)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A small tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed ({}): this test needs root with CAP_SYS_ADMIN, as CI has",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    /// Fill what is left with a file, so the next write gets ENOSPC.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_under_vault_mtls_fails_before_any_rename_and_everything_is_undone() {
    let lab = shared();
    let admin = lab.admin_client().unwrap();
    let app = "fullapp";
    let (dir, cfg) = after_step_3(lab, "full", &[app], "").await;
    let home = dir.join("home").join(app);
    let mtls = home.join("vault/mtls");
    let key = std::fs::read(mtls.join("agent.key")).unwrap();
    let crt = std::fs::read(mtls.join("agent.crt")).unwrap();
    let serial = serial_of(&home);

    // The same pair, on a tmpfs with no room left.
    let fs = Tmpfs::mount(&mtls, "64k");
    rotate_tests::write_file(&mtls.join("agent.key"), &key, 0o600).unwrap();
    rotate_tests::write_file(&mtls.join("agent.crt"), &crt, 0o644).unwrap();
    fs.fill();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "agents", app);
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    let err = errors(&v);
    assert!(
        err.contains(&mtls.display().to_string()) && err.to_lowercase().contains("space"),
        "{err}"
    );
    assert_eq!(std::fs::read(mtls.join("agent.key")).unwrap(), key);
    assert_eq!(std::fs::read(mtls.join("agent.crt")).unwrap(), crt);
    let mut names: Vec<String> = std::fs::read_dir(&mtls)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["agent.crt", "agent.key", "filler"],
        "no temp file left"
    );
    // The certificate issued before the disk ran out is revoked by the unwind.
    let undone = t["rollback"]["undone"].to_string();
    assert!(undone.contains("revoke certificate"), "{t:#}");
    let issued = undone
        .split("revoke certificate ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let rec = admin.read_cert("pki-prod", issued).await.unwrap().unwrap();
    assert_ne!(rec.revocation_time, 0, "{issued} revoked");
    assert_eq!(serial_of(&home), serial);
    drop(fs);
}

#[tokio::test]
async fn a_full_disk_under_tls_fails_the_leaf_before_any_rename_and_the_pair_stays_matched() {
    let lab = shared();
    let app = "fulltls";
    let (dir, cfg) = after_step_3(lab, "fulltls", &[app], "").await;
    let home = dir.join("home").join(app);
    lab.define_agent_unit(app, &home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Ok, "the first leaf: {v:#}");
    let tls = home.join("tls");
    let (key_path, full_path) = (
        tls.join(format!("{app}.key")),
        tls.join(format!("{app}.fullchain.pem")),
    );
    let key = std::fs::read(&key_path).unwrap();
    let full = std::fs::read(&full_path).unwrap();

    // The same pair, on a tmpfs with no room left: the agent renders (elsewhere), the
    // post-hook cannot stage the new pair next to the old one.
    let fs = Tmpfs::mount(&tls, "64k");
    rotate_tests::write_file(&key_path, &key, 0o600).unwrap();
    rotate_tests::write_file(&full_path, &full, 0o644).unwrap();
    fs.fill();

    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert!(
        matches!(exit, Exit::GateFailed | Exit::RollbackIncomplete),
        "{v:#}"
    );
    let err = errors(&v);
    assert!(err.contains("nothing was replaced"), "{err}");
    assert_eq!(std::fs::read(&key_path).unwrap(), key, "the key changed");
    assert_eq!(
        std::fs::read(&full_path).unwrap(),
        full,
        "the fullchain changed"
    );
    pki_ops::key_matches_cert_files(&key_path, &full_path).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&tls)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["filler", "fulltls.fullchain.pem", "fulltls.key"],
        "no staged file left"
    );
    drop(fs);
}

#[tokio::test]
async fn a_full_state_disk_mid_run_is_an_interruption_with_the_hint_and_resume_finishes_it() {
    let lab = shared();
    let apps = ["fullstate1", "fullstate2", "fullstate3", "fullstate4"];
    let (dir, cfg) = after_step_3(lab, "full-state", &apps, "").await;
    // The state directory on a tmpfs with one page left: the run starts, then its
    // journal runs out of room in the middle of the target.
    let state = dir.join("state");
    let saved = dir.join("state-saved");
    std::fs::rename(&state, &saved).unwrap();
    let fs = Tmpfs::mount(&state, "64k");
    for e in std::fs::read_dir(&saved).unwrap().flatten() {
        let to = state.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir(&to).unwrap();
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    fs.fill();
    let filler = state.join("filler");
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(4096))
        .unwrap();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("disk is full") && err.contains("rotate run --resume"),
        "{err}"
    );
    // Space again: the resume finishes what the run left.
    std::fs::remove_file(&filler).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    for app in apps {
        let home = dir.join("home").join(app);
        pki_ops::key_matches_cert_files(
            &home.join("vault/mtls/agent.key"),
            &home.join("vault/mtls/agent.crt"),
        )
        .unwrap();
    }
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "the run after: {v:#}");
    drop(fs);
}
