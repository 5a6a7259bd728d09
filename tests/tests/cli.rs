//! The `rotate` command line, run in-process against the lab.

use clap::Parser;
use rotate_cli::{Cli, Exit};
use rotate_tests::shared;

/// Run `rotate <args>` with the lab's config; return exit code and stdout.
async fn rotate(args: &[&str]) -> (Exit, String) {
    let config = shared().paths.rotate_toml.display().to_string();
    let mut argv = vec!["rotate", "--config", &config];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let exit = rotate_cli::run(Cli::parse_from(argv), &mut out).await;
    (exit, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn status_json_reports_active_version_and_identity_without_the_token() {
    let (exit, out) = rotate(&["--output", "json", "status"]).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "active");
    assert_eq!(v["version"], "2.7.2");
    assert_eq!(v["sealed"], false);
    assert_eq!(v["tls_server_name"], "vault.prod.privsec.ch");
    assert_eq!(v["identity"]["policies"], serde_json::json!(["root"]));
    assert!(
        !out.contains(shared().token()),
        "the token never appears in output"
    );
}

#[tokio::test]
async fn status_with_a_wrong_server_name_exits_vault_error() {
    let lab = shared();
    let dir = std::env::temp_dir().join(format!("rotate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("wrong-sni.toml");
    std::fs::write(
        &cfg,
        lab.rotate_config()
            .replace("vault.prod.privsec.ch", "vault.dev.privsec.ch"),
    )
    .unwrap();
    let mut out = Vec::new();
    let cli = Cli::parse_from([
        "rotate",
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        "json",
        "status",
    ]);
    let exit = rotate_cli::run(cli, &mut out).await;
    assert_eq!(exit, Exit::Vault);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["exit_code"], 4);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("vault.dev.privsec.ch")
            || v["error"].as_str().unwrap().contains("TLS server name"),
        "{v}"
    );
}

#[tokio::test]
async fn status_with_an_unreadable_ca_exits_config_error() {
    let lab = shared();
    let dir = std::env::temp_dir().join(format!("rotate-cli-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad-ca.toml");
    std::fs::write(
        &cfg,
        lab.rotate_config().replace(
            &lab.paths.ca_bundle.display().to_string(),
            "/nonexistent/ca.pem",
        ),
    )
    .unwrap();
    let mut out = Vec::new();
    let cli = Cli::parse_from(["rotate", "--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(rotate_cli::run(cli, &mut out).await, Exit::Config);
}
