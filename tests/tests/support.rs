//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use clap::Parser;
use rotate_cli::{Cli, Exit};
use rotate_tests::Lab;

/// A lab config whose app homes live under `dir`, so tests don't share files.
pub(crate) fn config_in(lab: &Lab, dir: &Path, apps: &[&str], extra: &str) -> PathBuf {
    let mut text = lab.rotate_config();
    let start = text.find("\n[[apps]]").unwrap();
    let end = text.len();
    let mut apps_toml = String::new();
    for app in apps {
        let home = dir.join("home").join(app);
        std::fs::create_dir_all(&home).unwrap();
        apps_toml.push_str(&format!(
            "\n[[apps]]\nname = \"{app}\"\nhome = \"{}\"\nuser = \"root\"\n",
            home.display()
        ));
    }
    text.replace_range(start..end, &apps_toml);
    // Each test has its own journal and lock.
    let state = dir.join("state");
    let text = text.replace(
        &lab.paths.dir.join("state").display().to_string(),
        &state.display().to_string(),
    );
    let text = text.replace("[agents]\n", &format!("[agents]\n{extra}"));
    let path = dir.join("rotate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rotate-agents-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) async fn rotate(config: &Path, args: &[&str]) -> (Exit, serde_json::Value) {
    let c = config.display().to_string();
    let mut argv = vec!["rotate", "--config", &c, "--output", "json"];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let exit = rotate_cli::run(Cli::parse_from(argv), &mut out).await;
    let text = String::from_utf8(out).unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (exit, v)
}

/// Insert `lines` right after the `[section]` header of the config at `path`.
pub(crate) fn add_to_section(path: &Path, section: &str, lines: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let header = format!("[{section}]\n");
    assert!(
        text.contains(&header),
        "no [{section}] in {}",
        path.display()
    );
    std::fs::write(
        path,
        text.replacen(&header, &format!("{header}{lines}\n"), 1),
    )
    .unwrap();
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The report of `app` in `step` (`agents`, `leaf`) of a run or plan report.
pub(crate) fn target<'v>(
    report: &'v serde_json::Value,
    step: &str,
    app: &str,
) -> &'v serde_json::Value {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == step)
        .flat_map(|s| s["targets"].as_array().into_iter().flatten())
        .find(|t| t["app"] == app)
        .unwrap_or_else(|| panic!("no target {app} in step {step}: {report:#}"))
}

/// The change kind (`create`, `update`, `unchanged`, `delete`, `kept`) reported for the
/// object ending in `object`.
pub(crate) fn change_kind(target: &serde_json::Value, object: &str) -> String {
    target["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["object"].as_str().is_some_and(|o| o.ends_with(object)))
        .and_then(|c| c["kind"].as_str())
        .unwrap_or_else(|| panic!("no change for {object}: {target:#}"))
        .to_owned()
}

/// Every error a report carries, joined: the top-level error, failed preflight checks and
/// failed targets.
pub(crate) fn errors(report: &serde_json::Value) -> String {
    let mut out: Vec<String> = report["error"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    for c in report["preflight"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["ok"] == false {
            out.push(format!("{}: {}", c["name"], c["detail"]));
        }
    }
    for s in report["steps"].as_array().into_iter().flatten() {
        for t in s["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["error"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    assert!(!out.is_empty(), "the report carries no error: {report:#}");
    out.join("\n")
}

/// `bao login -method=cert` with the agent files under `home`, as the agent would.
pub(crate) fn bao_login(lab: &Lab, home: &Path) -> serde_json::Value {
    let out = std::process::Command::new(&lab.bao)
        .env_clear()
        .env("VAULT_ADDR", &lab.addr)
        .env("VAULT_CACERT", home.join("vault/ca/ca.pem"))
        .env("VAULT_TLS_SERVER_NAME", rotate_tests::SERVER_NAME)
        .env("HOME", home)
        .args([
            "login",
            "-method=cert",
            "-format=json",
            "-no-store",
            &format!(
                "-client-cert={}",
                home.join("vault/mtls/agent.crt").display()
            ),
            &format!(
                "-client-key={}",
                home.join("vault/mtls/agent.key").display()
            ),
        ])
        .output()
        .expect("run bao");
    assert!(
        out.status.success(),
        "bao login -method=cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A fresh test directory `tag` with a config for `apps` (see [`config_in`]) on which
/// step 3 has run successfully: the common start of the step-4 and fault tests.
pub(crate) async fn after_step_3(
    lab: &Lab,
    tag: &str,
    apps: &[&str],
    extra: &str,
) -> (PathBuf, PathBuf) {
    let dir = tempdir(tag);
    let cfg = config_in(lab, &dir, apps, extra);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "step 3 for {apps:?}: {v:#}");
    (dir, cfg)
}
