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

/// Every JSON document the commands print validates against `schemas/rotate.schema.json`
/// (the contract), errors included; each is the shape of its own command.
#[tokio::test]
async fn every_json_document_validates_against_the_checked_in_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/rotate.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema itself is valid");
    let lab = shared();
    let dir = crate::support::tempdir("schema");
    let cfg = crate::support::config_in(lab, &dir, &["schemaapp"], "");
    let c = cfg.display().to_string();
    let bad = dir.join("missing.toml").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--config", &c, "status"], "status"),
        (vec!["--config", &c, "plan", "--step", "agents"], "plan"),
        (vec!["--config", &c, "run", "--resume"], "run"),
        (vec!["--config", &c, "run", "--step", "agents"], "run"),
        (
            vec!["--config", &c, "verify", "--app", "schemaapp"],
            "verify",
        ),
        (vec!["--config", &c, "inventory"], "inventory"),
        (vec!["--config", &c, "health"], "health"),
        (vec!["--config", &c, "rollback"], "rollback"),
        (vec!["--config", &bad, "run"], "run"),
        (vec!["run", "--step", "agents"], "run"),
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for (args, command) in cases {
        let mut argv = vec!["rotate", "-o", "json"];
        argv.extend(&args);
        let mut out = Vec::new();
        let exit = rotate_cli::run(Cli::parse_from(&argv), &mut out).await;
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON document ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        });
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{args:?} does not validate: {errors:#?}\n{doc:#}"
        );
        assert_eq!(doc["schema_version"], 1, "{args:?}");
        assert_eq!(doc["command"], command, "{args:?}");
        assert_eq!(
            doc["exit_code"],
            exit.code(),
            "{args:?}: the document's exit code is the process's"
        );
        kinds.insert(if doc.get("error").is_some() && doc.get("env").is_none() {
            "error"
        } else {
            command
        });
    }
    assert!(
        kinds.contains("error"),
        "an error document was checked: {kinds:?}"
    );
}
