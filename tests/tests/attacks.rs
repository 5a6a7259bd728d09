//! The threat model played out: `rotate` runs as root, the app and proxy users are the
//! attacker. Each test acts as a real unprivileged user (`useradd`, `runuser`) against the
//! real lab and checks that the attack gains nothing: no command of the app's runs as
//! root, no token reaches a child, no foreign process is signalled, no write lands
//! outside the intended Vault path, no raw control byte reaches the terminal, and a
//! dangerous policy cannot be kept by sabotage.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rotate_cli::journal::{Event, Journal, RunRequest, RunState, TargetState, UndoAction};
use rotate_cli::{Exit, StepId};
use rotate_tests::{Lab, SERVER_NAME, shared};
use vault_client::{CertAuthApi, SysApi};

use crate::support::{config_in, errors, rotate, system_user, target, tempdir};

/// `sh -c script` as `user`, as the attacker acts.
fn as_user(user: &str, script: &str) {
    let out = Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", script])
        .output()
        .expect("runuser (util-linux) is needed: apt-get install util-linux");
    assert!(
        out.status.success(),
        "as {user}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config for one app `app` owned by the real user of the same name (home chowned to
/// it), in a fresh test directory.
fn tenant(lab: &Lab, tag: &str, app: &str) -> (PathBuf, PathBuf, PathBuf, u32) {
    let uid = system_user(app);
    let dir = tempdir(tag);
    let cfg = config_in(lab, &dir, &[app], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("user = \"root\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    let home = dir.join("home").join(app);
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
    (dir, cfg, home, uid)
}

/// The test binary's `rotate` as a real process with exactly `env` (cron-like: no
/// `VAULT_*` unless given), human output. Exit code, stdout, stderr.
fn rotate_process(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<u8>, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .env_clear()
        .envs(env.iter().copied())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rotate");
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn children_get_neither_roots_terminal_nor_its_environment() {
    let lab = shared();
    let app = "rotatk1";
    let (dir, cfg, home, uid) = tenant(lab, "atk-env", app);
    // The admin token comes from the environment (a supported way when token_file is
    // unset), the way it would leak.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .collect::<Vec<_>>()
        .join("\n");
    // Every `systemctl` rotate runs goes through a spy that records, as the app user it
    // runs as, what that user could see of it: its uid, terminal and environment.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spy = bin.join("systemctl-spy");
    let log = home.join("spy.log");
    write_exec(
        &spy,
        &format!(
            "#!/bin/sh\n{{ echo \"uid=$(id -u)\"; echo \"tty_nr=$(cut -d' ' -f7 /proc/$$/stat)\"; \
             if ( : < /dev/tty ) 2>/dev/null; then echo tty=yes; else echo tty=no; fi; \
             env | sed 's/^/env:/'; }} >> '{log}' 2>/dev/null\nexec '{real}' \"$@\"\n",
            log = log.display(),
            real = lab.paths.dir.join("bin/systemctl").display()
        ),
    );
    let text = text.replace(
        &format!(
            "systemctl = \"{}\"",
            lab.paths.dir.join("bin/systemctl").display()
        ),
        &format!("systemctl = \"{}\"", spy.display()),
    );
    assert!(
        text.contains("systemctl-spy"),
        "the lab config sets [commands] systemctl"
    );
    std::fs::write(&cfg, text).unwrap();

    let token = lab.token().to_owned();
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/root"),
        ("VAULT_TOKEN", token.as_str()),
        ("BAO_TOKEN", token.as_str()),
    ];
    let (code, out, err) = rotate_process(&cfg, &["run", "--step", "agents"], &env);
    assert_eq!(
        code,
        0,
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    lab.define_agent_unit_as(app, &home, Some(app));

    // Step 4 under a real terminal (`script` gives rotate a pty as its controlling
    // terminal), from a cron-like environment.
    let cmd = format!(
        "'{}' --config '{}' run --step leaf",
        env!("CARGO_BIN_EXE_rotate-child"),
        cfg.display()
    );
    let run = Command::new("script")
        .env_clear()
        .envs(env)
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) is needed: apt-get install bsdutils");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\n{}\nspy:\n{seen}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        seen.contains(&format!("uid={uid}")),
        "the spy ran as the app: {seen}"
    );
    for line in seen.lines() {
        assert!(!line.contains(&token), "the token reached a child: {line}");
        assert!(
            !(line.starts_with("env:VAULT_") || line.starts_with("env:BAO_")),
            "a Vault variable reached a child: {line}"
        );
        if let Some(t) = line.strip_prefix("tty_nr=") {
            assert_eq!(t, "0", "a child has a controlling terminal: {seen}");
        }
        assert_ne!(line, "tty=yes", "a child can open root's terminal: {seen}");
    }
    // The control: the same spy started straight from that terminal does see it.
    std::fs::remove_file(&log).unwrap();
    let control = Command::new("script")
        .env_clear()
        .envs(env)
        .args([
            "-qec",
            &format!("'{}' --version", spy.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = control;
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.contains("tty=yes"),
        "the control spy saw no terminal: {seen}"
    );
    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &format!("vault-agent-{app}.service")])
        .status();
}

#[tokio::test]
async fn a_state_directory_another_user_could_write_is_refused_before_anything() {
    let lab = shared();
    let app = "rotatk2";
    let (dir, cfg, _home, uid) = tenant(lab, "atk-state", app);
    let state = dir.join("state");
    let admin = lab.admin_client().unwrap();
    let mapping = format!("agent-{app}");

    // Owned by the app user: its journal would decide what root undoes.
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains(&state.display().to_string()) && err.contains(&format!("owned by uid {uid}")),
        "{err}"
    );
    assert!(!state.join("journal.jsonl").exists());
    // Plan reads the journal too: refused the same way.
    let (exit, _) = rotate(&cfg, &["plan", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config);

    // Root's, but writable by everyone.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(errors(&v).contains("writable by others"), "{v:#}");

    // Root's and private, but a symlink sits where the lock goes (planted while it was
    // open): root never follows it, so the file it points at is not truncated.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(errors(&v).contains("is a symlink"), "{v:#}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        admin
            .read_cert_role("cert", &mapping)
            .await
            .unwrap()
            .is_none(),
        "no Vault write happened"
    );

    // Once it is root's alone, the run goes ahead.
    std::fs::remove_file(state.join("lock")).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
}

#[tokio::test]
async fn undo_never_runs_a_command_line_read_from_the_journal() {
    let lab = shared();
    let dir = tempdir("atk-journal");
    let cfg = config_in(lab, &dir, &["atkjournal"], "");
    let state = dir.join("state");
    let marker = dir.join("pwned");
    // A journal saying step 5 reloaded the proxy with a `cmd:` (the config has no proxy).
    let request = RunRequest {
        steps: vec![StepId::Proxy],
        apps: vec![],
        kv_access: false,
        kv_seed: false,
        if_due: false,
    };
    let j = Journal::start(&state, "r1", "test", 1, request).unwrap();
    j.set_state(StepId::Proxy, "proxy", TargetState::Applying, None)
        .unwrap();
    j.record_undo(
        StepId::Proxy,
        "proxy",
        UndoAction::Reload {
            reload: format!("cmd:touch {}", marker.display()),
            setting: "proxy.reload".into(),
        },
    )
    .unwrap();
    j.set_state(StepId::Proxy, "proxy", TargetState::Committed, None)
        .unwrap();
    j.append(Event::RunEnded {
        state: RunState::Finished,
    })
    .unwrap();
    drop(j);
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::RollbackIncomplete, "{v:#}");
    assert!(!marker.exists(), "root ran a command read from the journal");
    let left = v["rolled_back"].to_string();
    assert!(
        left.contains("no longer sets proxy.reload") && left.contains("by hand"),
        "{left}"
    );

    // A journal whose run id climbs out of the state directory is refused, not followed.
    let forged = r#"{"event":"run_started","run_id":"../../escaped","env":"test","pid":1,"started":1,"request":{"steps":["agents"],"apps":[],"kv_access":false,"kv_seed":false}}"#;
    std::fs::write(
        state.join("journal.jsonl"),
        format!("{forged}\n{{\"event\":\"run_ended\",\"state\":\"finished\"}}\n"),
    )
    .unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_ne!(exit, Exit::Ok, "{v:#}");
    assert!(errors(&v).contains("run id"), "{v:#}");
    assert!(state.join("journal.jsonl").exists(), "nothing was moved");
    assert!(!dir.join("escaped.jsonl").exists());
}

#[tokio::test]
async fn signals_reach_only_the_vault_server() {
    let lab = shared();
    let dir = tempdir("atk-signal");
    let cfg = config_in(lab, &dir, &["atksignal"], "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let i = text.find("\n[[apps]]").unwrap();
    let with_listener = |reload: &str| {
        let sections = lab
            .tls_sections()
            .replace(
                &format!("signal:{}:HUP", lab.paths.pid_file.display()),
                reload,
            )
            .replace(
                &lab.paths.dir.join("admin/env.sh").display().to_string(),
                &dir.join("env.sh").display().to_string(),
            );
        std::fs::write(&cfg, format!("{}{}{}", &text[..i], sections, &text[i..])).unwrap();
    };
    // A process that is not the server: the pid file is stale, or was rewritten.
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    let pid_file = dir.join("vault.pid");
    std::fs::write(&pid_file, bystander.id().to_string()).unwrap();
    with_listener(&format!("signal:{}:HUP", pid_file.display()));
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains("sleep") && err.contains("expected bao"),
        "{err}"
    );
    // A symlink to the real pid file is not read.
    let link = dir.join("link.pid");
    std::os::unix::fs::symlink(&lab.paths.pid_file, &link).unwrap();
    with_listener(&format!("signal:{}:HUP", link.display()));
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(errors(&v).contains("symlink"), "{v:#}");
    // KILL is no reload.
    with_listener(&format!("signal:{}:KILL", lab.paths.pid_file.display()));
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(errors(&v).contains("listener.reload"), "{v:#}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    // The real server passes, named with its executable.
    with_listener(&format!("signal:{}:HUP", lab.paths.pid_file.display()));
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Changes, "{v:#}");
    let check = v["preflight"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "listener reload")
        .unwrap()
        .to_string();
    assert!(
        check.contains("names the server") && check.contains("bao"),
        "{check}"
    );
}

#[tokio::test]
async fn settings_that_would_hand_a_tenant_root_are_refused_before_any_write() {
    let lab = shared();
    let app = "rotatk3";
    let (dir, cfg, _home, uid) = tenant(lab, "atk-config", app);
    let good = std::fs::read_to_string(&cfg).unwrap();
    let token_before = std::fs::read(&lab.paths.token_file).unwrap();
    let try_config = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        cfg.clone()
    };

    // A program in a directory the app owns: root would run what the app writes there.
    let app_bin = dir.join("appbin");
    std::fs::create_dir(&app_bin).unwrap();
    write_exec(&app_bin.join("systemctl"), "#!/bin/sh\nexit 0\n");
    std::os::unix::fs::chown(&app_bin, Some(uid), Some(uid)).unwrap();
    let c = try_config(good.replace(
        &format!(
            "systemctl = \"{}\"",
            lab.paths.dir.join("bin/systemctl").display()
        ),
        &format!("systemctl = \"{}\"", app_bin.join("systemctl").display()),
    ));
    let (exit, v) = rotate(&c, &["plan", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(errors(&v).contains(&format!("owned by uid {uid}")), "{v:#}");

    // A config naming a cmd: reloader that others may write.
    let c = try_config(good.replace(
        "[agents]\n",
        "[restarts]\nproxy = [\"cmd:true\"]\n\n[agents]\n",
    ));
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (exit, v) = rotate(&c, &["plan", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    assert!(
        v["error"].as_str().unwrap().contains("writable by others"),
        "{v:#}"
    );

    // The env file aliasing the admin token: the run would overwrite the token.
    let c = try_config(
        good.replace("[agents]\n", "[admin]\nenv_file = \"TOKEN\"\n\n[agents]\n")
            .replace("TOKEN", &lab.paths.token_file.display().to_string()),
    );
    let (exit, v) = rotate(&c, &["run", "--step", "admin"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("admin.env_file") && err.contains("vault.token_file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&lab.paths.token_file).unwrap(), token_before);

    // Names that would climb into another Vault path.
    for (from, to, setting) in [
        (
            "[agents]\n",
            "[admin]\nrole = \"../../auth/cert/certs/agent-x\"\n\n[agents]\n",
            "admin.role",
        ),
        (
            "name = \"proxyprod\"",
            "name = \"../roles/x\"",
            "proxy.name",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let c = try_config(good.replace(from, to));
        let (exit, v) = rotate(&c, &["plan"]).await;
        assert_eq!(exit, Exit::Config, "{setting}: {v:#}");
        assert!(v["error"].as_str().unwrap().contains(setting), "{v:#}");
    }
}

#[tokio::test]
async fn text_an_app_writes_reaches_the_terminal_escaped() {
    let lab = shared();
    let app = "rotatk4";
    let (_dir, cfg, home, _uid) = tenant(lab, "atk-escape", app);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // The app's "agent" answers every restart with a broken leaf and a post-hook failure
    // whose reason clears the screen, writes the clipboard (OSC 52) and fakes a success
    // line.
    let status = home.join(format!(".vault-agent-{app}/post-hook.status"));
    let evil = "failed - boom\\033]52;c;cm0gLXJmIC8=\\007\\033[2J\\r  all gates passed (exit 0)";
    lab.units.define(
        &format!("vault-agent-{app}.service"),
        rotate_tests::UnitDef {
            argv: vec![
                "/usr/sbin/runuser".into(),
                "-u".into(),
                app.into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                format!(
                    "cd '{home}' && echo junk > tls/{app}.fullchain.pem && echo junk > tls/{app}.key \
                     && printf '{evil}\\n' > '{status}'; exec sleep 600",
                    home = home.display(),
                    status = status.display()
                ),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            log: home.join("agent.log"),
        },
    );
    let (code, out, err) = rotate_process(
        &cfg,
        &["run", "--step", "leaf"],
        &[("PATH", "/usr/bin:/bin"), ("HOME", "/root")],
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert_eq!(code, 5, "{shown}");
    assert!(shown.contains("boom"), "the reason is shown: {shown}");
    for b in [0x1b_u8, 0x07, 0x0d] {
        assert!(
            !out.contains(&b) && !err.contains(&b),
            "raw byte {b:#04x} reached the terminal: {shown:?}"
        );
    }
    assert!(shown.contains("\\u{1b}]52"), "escaped, visible: {shown}");
    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &format!("vault-agent-{app}.service")])
        .status();
}

#[tokio::test]
async fn an_app_cannot_keep_a_dangerous_policy_by_sabotaging_its_rotation() {
    let lab = shared();
    let app = "rotatk5";
    let (_dir, cfg, home, _uid) = tenant(lab, "atk-veto", app);
    let admin = lab.admin_client().unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // The seed's leftover: debug-policy (read on everything) on the agent's mapping.
    admin
        .write_policy("debug-policy", "path \"*\" { capabilities = [\"read\"] }")
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
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::VerifyFailed, "{v:#}");
    assert!(v.to_string().contains("carries debug-policy"), "{v:#}");

    // The app makes its own rotation fail: its key becomes a symlink.
    as_user(
        app,
        &format!(
            "cd '{}' && rm -f agent.key && ln -s /etc/hostname agent.key",
            home.join("vault/mtls").display()
        ),
    );
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents", "--step", "leaf"]).await;
    assert_ne!(exit, Exit::Ok, "{v:#}");
    assert_ne!(target(&v, "agents", app)["outcome"], "committed", "{v:#}");
    let after = admin
        .read_cert_role("cert", &mapping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !after.token_policies.contains(&"debug-policy".to_string()),
        "the app kept debug-policy: {:?}",
        after.token_policies
    );
    let fixes = v["security_fixes"].to_string();
    assert!(
        fixes.contains("debug-policy") && fixes.contains(&mapping),
        "{v:#}"
    );
    assert_eq!(
        std::fs::read_link(home.join("vault/mtls/agent.key")).unwrap(),
        Path::new("/etc/hostname"),
        "root never wrote through the app's symlink"
    );
}

#[tokio::test]
async fn an_agent_mapping_trusts_only_the_issuing_ca() {
    let lab = shared();
    let app = "atkca";
    let dir = tempdir("atk-ca");
    let cfg = config_in(lab, &dir, &[app], "");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let admin = lab.admin_client().unwrap();
    let role = admin
        .read_cert_role("cert", &format!("agent-{app}"))
        .await
        .unwrap()
        .unwrap();
    let trusted = pki_ops::parse_bundle(&role.certificate, "mapping").unwrap();
    assert_eq!(
        trusted.len(),
        1,
        "the mapping trusts more than the issuing CA"
    );
    assert_eq!(
        trusted[0].subject_cn.as_deref(),
        Some(rotate_tests::INTERMEDIATE_CN)
    );
    // Another intermediate under the same root mints the agent's CN: the listener
    // accepts the TLS handshake (it trusts the root), the mapping refuses the login.
    let forged = lab
        .ca
        .sibling_client(&format!("agent-{app}.prod.privsec.ch"))
        .unwrap();
    let (crt, key) = (dir.join("forged.crt"), dir.join("forged.key"));
    std::fs::write(&crt, &forged.cert_pem).unwrap();
    std::fs::write(&key, forged.key_pem.as_bytes()).unwrap();
    let login = |crt: &Path, key: &Path| {
        Command::new(&lab.bao)
            .env_clear()
            .env("VAULT_ADDR", &lab.addr)
            .env("VAULT_CACERT", &lab.paths.ca_bundle)
            .env("VAULT_TLS_SERVER_NAME", SERVER_NAME)
            .env("HOME", &dir)
            .args([
                "login",
                "-method=cert",
                "-no-store",
                &format!("-client-cert={}", crt.display()),
                &format!("-client-key={}", key.display()),
            ])
            .output()
            .unwrap()
    };
    let out = login(&crt, &key);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a certificate from another intermediate logged in as the agent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Refused by cert auth (the TLS handshake itself went through), not by the listener.
    assert!(
        said.contains("auth/cert/login") && !said.contains("tls:"),
        "{said}"
    );
    let home = dir.join("home").join(app);
    let out = login(
        &home.join("vault/mtls/agent.crt"),
        &home.join("vault/mtls/agent.key"),
    );
    assert!(
        out.status.success(),
        "the agent's own certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
