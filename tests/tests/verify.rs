//! `rotate verify` after a real run (step 3, step 4 with a real agent), and with drift
//! injected: each failure names its item, and verify itself changes nothing.

use rotate_cli::Exit;
use rotate_tests::shared;
use vault_client::{CertAuthApi, SysApi};

use crate::support::{config_in, rotate, tempdir};

/// The failed checks of a verify report: (name, detail).
fn failed(v: &serde_json::Value) -> Vec<(String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn verify_passes_after_a_run_and_names_each_injected_drift() {
    let lab = shared();
    let app = "verapp";
    let dir = tempdir("verify");
    let cfg = config_in(lab, &dir, &[app], "");
    let home = dir.join("home").join(app);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    lab.define_agent_unit(app, &home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");

    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{:#?}", failed(&v));
    metrics_and_inventory_agree_with_verify(&cfg, &dir, app, &v).await;
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "admin identity",
        "leaf of verapp",
        "agent certificate of verapp",
        "agent unit vault-agent-verapp.service",
        "cert login of verapp",
    ] {
        assert!(names.contains(&want), "no check {want:?}: {names:?}");
    }
    let inventory = v["inventory"].to_string();
    assert!(
        inventory.contains("leaf of verapp") && inventory.contains("admin certificate"),
        "{inventory}"
    );

    // Drift 1: debug-policy re-attached to the mapping.
    let admin = lab.admin_client().unwrap();
    admin
        .write_policy(
            "debug-policy",
            "path \"sys/health\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let name = format!("agent-{app}");
    let clean = admin.read_cert_role("cert", &name).await.unwrap().unwrap();
    let mut drifted = clean.clone();
    drifted.token_policies.push("debug-policy".into());
    admin
        .write_cert_role("cert", &name, &drifted)
        .await
        .unwrap();
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::VerifyFailed, "{v:#}");
    let f = failed(&v);
    assert!(
        f.iter()
            .any(|(n, d)| n.contains("mapping") && n.contains(&name) && d.contains("debug-policy")),
        "{f:#?}"
    );
    // Verify changed nothing: the drift is still there.
    let now = admin.read_cert_role("cert", &name).await.unwrap().unwrap();
    assert!(now.token_policies.contains(&"debug-policy".to_owned()));
    admin.write_cert_role("cert", &name, &clean).await.unwrap();

    // Drift 2: the leaf replaced by one from another CA.
    let fullchain = home.join(format!("tls/{app}.fullchain.pem"));
    let leaf_key = home.join(format!("tls/{app}.key"));
    let (good_chain, good_key) = (
        std::fs::read(&fullchain).unwrap(),
        std::fs::read(&leaf_key).unwrap(),
    );
    let other = rotate_tests::LabCa::generate().unwrap();
    let cn = format!("{app}.int.privsec.ch");
    let foreign = other
        .leaf(&cn, &[cn.as_str()], &[], true, time::Duration::days(1))
        .unwrap();
    std::fs::write(
        &fullchain,
        format!("{}{}", foreign.cert_pem, other.intermediate_pem()),
    )
    .unwrap();
    std::fs::write(&leaf_key, foreign.key_pem.as_bytes()).unwrap();
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::VerifyFailed, "{v:#}");
    let f = failed(&v);
    assert!(f.iter().any(|(n, _)| n == "leaf of verapp"), "{f:#?}");
    std::fs::write(&fullchain, &good_chain).unwrap();
    std::fs::write(&leaf_key, &good_key).unwrap();

    // Drift 3: an agent key that does not match its certificate.
    let agent_key = home.join("vault/mtls/agent.key");
    let good = std::fs::read(&agent_key).unwrap();
    std::fs::write(&agent_key, foreign.key_pem.as_bytes()).unwrap();
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    std::fs::write(&agent_key, &good).unwrap();
    assert_eq!(exit, Exit::VerifyFailed, "{v:#}");
    let f = failed(&v);
    assert!(
        f.iter()
            .any(|(n, d)| n == "agent certificate of verapp" && d.contains("match")),
        "{f:#?}"
    );

    // Drift 4, hostile: the app points its agent files at root's admin identity. Root
    // must not read through them (nor log in with what they point at).
    let agent_cert = home.join("vault/mtls/agent.crt");
    let (good_cert, good_key) = (
        std::fs::read(&agent_cert).unwrap(),
        std::fs::read(&agent_key).unwrap(),
    );
    for (link, target) in [
        (&agent_cert, &lab.paths.admin_cert),
        (&agent_key, &lab.paths.admin_key),
    ] {
        std::fs::remove_file(link).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    for (link, good) in [(&agent_cert, &good_cert), (&agent_key, &good_key)] {
        std::fs::remove_file(link).unwrap();
        std::fs::write(link, good).unwrap();
    }
    assert_eq!(exit, Exit::VerifyFailed, "{v:#}");
    let f = failed(&v);
    assert!(
        f.iter()
            .any(|(n, d)| n == "cert login of verapp" && d.contains("is a symlink")),
        "{f:#?}"
    );

    // Repaired: passes again.
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{:#?}", failed(&v));
}

/// `verify --metrics-file` and `inventory` (files only) report the same certificates as
/// verify's inventory: the textfile in the exposition format, with the last run.
async fn metrics_and_inventory_agree_with_verify(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    app: &str,
    verified: &serde_json::Value,
) {
    use std::os::unix::fs::PermissionsExt as _;
    let textfile_dir = dir.join("textfile");
    std::fs::create_dir_all(&textfile_dir).unwrap();
    let prom = textfile_dir.join("rotate.prom");
    let p = prom.to_str().unwrap();
    let (exit, _) = rotate(cfg, &["verify", "--metrics-file", p]).await;
    assert_eq!(exit, Exit::Ok);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Every sample line: name{labels} value, after its family's TYPE.
    let mut typed = Vec::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            typed.push(t.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once("} ").unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| t == name),
            "sample before TYPE: {line}"
        );
        samples.insert(format!("{series}}}"), value.parse::<f64>().unwrap());
    }
    let find = |needle: &[&str]| {
        samples
            .iter()
            .find(|(k, _)| needle.iter().all(|n| k.contains(n)))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    assert_eq!(find(&["rotate_verify_success{"]), 1.0);
    assert_eq!(find(&["rotate_last_run_exit_code{", "mode=\"run\""]), 0.0);
    for kind in ["agent", "leaf"] {
        let listed = verified["inventory"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["kind"] == kind && m["app"] == app)
            .unwrap_or_else(|| panic!("no {kind} of {app} in verify's inventory"));
        let unix = listed["not_after_unix"].as_i64().unwrap();
        assert!(listed["not_after_rfc3339"].as_str().unwrap().ends_with('Z'));
        let label = format!("app=\"{app}\"");
        let kind_label = format!("kind=\"{kind}\"");
        assert_eq!(
            find(&[
                "rotate_certificate_expiry_timestamp_seconds{",
                &label,
                &kind_label
            ]),
            unix as f64
        );
    }
    // The same from the files alone.
    let (exit, inv) = rotate(cfg, &["inventory", "--app", app]).await;
    assert_eq!(exit, Exit::Ok, "{inv:#}");
    let kinds: Vec<&str> = inv["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["app"] == app)
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"agent") && kinds.contains(&"leaf"),
        "{inv:#}"
    );
}
