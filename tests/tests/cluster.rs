//! A real 3-node raft cluster (`rotate_tests::cluster`): every node's listener is a
//! target of step 2, rotated one at a time and proven at its own address, and `verify`
//! looks at every node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rotate_cli::Exit;
use rotate_tests::{Cluster, SERVER_NAME, balancer, cluster, cluster_turn};

use crate::support::{rotate, tempdir};

/// The serial `node` serves, as `openssl s_client` sees it at that node's own port
/// (`AABB...`), presenting the admin identity and verifying with the cluster's bundle.
fn served_serial(c: &Cluster, node: usize) -> String {
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", c.nodes[node].port),
        ])
        .args(["-servername", SERVER_NAME, "-verify_return_error"])
        .arg("-CAfile")
        .arg(&c.ca_bundle)
        .arg("-cert")
        .arg(&c.admin_cert)
        .arg("-key")
        .arg(&c.admin_key)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&s_client.stdout)
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| {
            panic!(
                "openssl s_client to {} showed no certificate: {}",
                c.nodes[node].name,
                String::from_utf8_lossy(&s_client.stderr)
            )
        })
        .to_owned()
}

/// The serial in `file` (`AABB...`), by `openssl x509`.
fn file_serial(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// A `rotate` config for the cluster: the admin reaches Vault at the first node, step 2
/// names every node with its own address, files and pid file.
fn cluster_config(c: &Cluster, dir: &Path) -> PathBuf {
    let path = cluster_config_at(c, dir, &c.nodes[0].addr);
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.find("\n[[apps]]").unwrap();
    std::fs::write(&path, &text[..cut]).unwrap();
    path
}

/// [`cluster_config`] with `[vault] addr` at `addr`, and one app (`app1`, run as root).
fn cluster_config_at(c: &Cluster, dir: &Path, addr: &str) -> PathBuf {
    cluster_config_apps(c, dir, addr, &["app1"])
}

/// [`cluster_config_at`] with `apps` (run as root, homes under `dir`).
fn cluster_config_apps(c: &Cluster, dir: &Path, addr: &str, apps: &[&str]) -> PathBuf {
    c.rotate_config(dir, addr, apps).unwrap()
}

/// The whole of step 2 on a cluster: each node's listener is replaced and proven at its
/// own address, one node after the other, standbys like the active node; `openssl
/// s_client` to each node sees its new serial, each node its own; `verify` checks every
/// node and fails, naming the node, when one serves what its file does not hold.
#[tokio::test]
async fn step_2_rotates_every_node_of_a_raft_cluster_and_verify_checks_each() {
    let c = cluster();
    let _turn = cluster_turn().await;
    let dir = tempdir("cluster-step2");
    let cfg = cluster_config(c, &dir);
    let before: Vec<String> = (0..c.nodes.len()).map(|i| served_serial(c, i)).collect();

    let (exit, report) = rotate(&cfg, &["run", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let targets = report["steps"][0]["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t["app"].as_str().unwrap()).collect();
    assert_eq!(names, ["vault-1", "vault-2", "vault-3"], "{report:#}");
    assert!(
        targets.iter().all(|t| t["outcome"] == "committed"),
        "{report:#}"
    );

    let after: Vec<String> = (0..c.nodes.len()).map(|i| served_serial(c, i)).collect();
    for (i, n) in c.nodes.iter().enumerate() {
        assert_ne!(
            after[i], before[i],
            "{} still serves its old certificate",
            n.name
        );
        assert_eq!(
            after[i],
            file_serial(&n.cert),
            "{} serves what its file holds",
            n.name
        );
        let proof = &targets[i]["proof"]["served"]["serial_hex"];
        assert_eq!(
            proof.as_str().unwrap().replace(':', "").to_uppercase(),
            after[i],
            "the gate of {} proved the serial openssl sees at that node",
            n.name
        );
    }
    assert!(
        after[0] != after[1] && after[1] != after[2],
        "each node its own certificate"
    );

    let (exit, report) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let inventory = report["inventory"].as_array().unwrap();
    for n in &c.nodes {
        assert!(
            inventory
                .iter()
                .any(|m| m["what"] == format!("listener certificate of {}", n.name)),
            "{} in the inventory: {report:#}",
            n.name
        );
    }

    // vault-3 serves a certificate with a day of its 90 left (as if it had been missed):
    // verify names it, and a scheduled `--if-due` renews that node alone.
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let old =
        c.ca.leaf_between(
            SERVER_NAME,
            &[SERVER_NAME, "vault-3.prod.privsec.ch"],
            &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
            true,
            now - day * 89,
            now + day,
        )
        .unwrap();
    let n3 = &c.nodes[2];
    let chain = format!("{}{}", old.cert_pem, c.ca.intermediate_pem());
    rotate_tests::write_file(&n3.cert, chain.as_bytes(), 0o644).unwrap();
    rotate_tests::write_file(&n3.key, old.key_pem.as_bytes(), 0o600).unwrap();
    let expiring = file_serial(&n3.cert);
    sighup(&n3.pid_file);
    wait_served(c, 2, &expiring);
    let (exit, report) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::VerifyFailed, "{report:#}");
    let failed = failed_checks(&report);
    assert!(
        failed
            .iter()
            .any(|n| n.contains("vault-3") && n.contains("current")),
        "{failed:?}"
    );
    assert!(failed.iter().all(|n| n.contains("vault-3")), "{failed:?}");
    let (exit, report) = rotate(&cfg, &["run", "--if-due", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let outcomes: Vec<&str> = report["steps"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["unchanged", "unchanged", "committed"],
        "{report:#}"
    );
    assert_ne!(served_serial(c, 2), expiring);
    assert_eq!(served_serial(c, 0), after[0], "vault-1 left alone");
    let (exit, report) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");

    // vault-2's file now holds a certificate it does not serve (a reload that never
    // happened): verify names that node.
    let keep = std::fs::read(&c.nodes[1].cert).unwrap();
    let other =
        c.ca.leaf(
            SERVER_NAME,
            &[SERVER_NAME],
            &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
            true,
            time::Duration::days(2),
        )
        .unwrap();
    std::fs::write(&c.nodes[1].cert, other.cert_pem.as_bytes()).unwrap();
    let (exit, report) = rotate(&cfg, &["verify"]).await;
    std::fs::write(&c.nodes[1].cert, keep).unwrap();
    assert_eq!(exit, Exit::VerifyFailed, "{report:#}");
    let failed = failed_checks(&report);
    assert!(failed.iter().any(|n| n.contains("vault-2")), "{failed:?}");
    assert!(failed.iter().all(|n| n.contains("vault-2")), "{failed:?}");
}

/// The names of the checks of a verify report that failed.
fn failed_checks(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// SIGHUP the server whose pid `pid_file` holds (it reloads its listener certificate).
fn sighup(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let st = Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Wait (5 s at most) until node `i` serves `serial`.
fn wait_served(c: &Cluster, i: usize, serial: &str) {
    let start = std::time::Instant::now();
    while served_serial(c, i) != serial {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{} does not serve {serial} after a SIGHUP",
            c.nodes[i].name
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `rotate health` on a cluster: every node at its own address and raft's failure
/// tolerance; with one of three nodes down the tolerance is 0 and health fails (exit
/// 4), naming the node; back and unsealed, healthy again.
#[tokio::test]
async fn health_sees_every_node_and_fails_when_a_lost_node_leaves_no_tolerance() {
    let c = cluster();
    let _turn = cluster_turn().await;
    let dir = tempdir("cluster-health");
    let cfg = cluster_config(c, &dir);
    let (exit, report) = rotate(&cfg, &["health"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let cluster = &report["proof"]["cluster"];
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 3, "{report:#}");
    assert_eq!(cluster["failure_tolerance"], 1, "{report:#}");
    assert!(
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["serial"].is_string() && n["sealed"] == false),
        "{report:#}"
    );

    // Never the node [vault] addr names: the admin's own healthcheck goes there.
    c.kill(2);
    let (exit, status) = rotate(&cfg, &["status"]).await;
    assert_eq!(exit, Exit::Ok, "{status:#}");
    let states: Vec<(&str, &str)> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states.len(), 3, "{status:#}");
    assert!(states[2].1.starts_with("DOWN"), "{status:#}");
    assert!(
        states[..2].iter().any(|(_, s)| *s == "active"),
        "{status:#}"
    );
    let (exit, report) = rotate(&cfg, &["health"]).await;
    c.spawn(2).unwrap();
    c.unseal(2).await.unwrap();
    assert_eq!(exit, Exit::Vault, "{report:#}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("failure tolerance is 0") && error.contains("vault-3"),
        "{error}"
    );

    // Back, unsealed, rejoined (autopilot counts it again): healthy.
    c.wait_voters().await.unwrap();
    let (exit, report) = rotate(&cfg, &["health"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    assert_eq!(
        report["proof"]["cluster"]["failure_tolerance"], 1,
        "{report:#}"
    );
}

/// Through a standby, every command works: preflight and health say it is a standby and
/// name the active node (a standby forwards to it), and step 3 commits (its login gate
/// goes to the active node).
#[tokio::test]
async fn a_standby_serves_every_command_and_names_the_active_node() {
    let c = cluster();
    let _turn = cluster_turn().await;
    let leader = c.leader().await.expect("an active node");
    let standby = (leader + 1) % c.nodes.len();
    let dir = tempdir("cluster-standby");
    let cfg = cluster_config_at(c, &dir, &c.nodes[standby].addr);
    let active = &c.nodes[leader].addr;

    let (exit, report) = rotate(&cfg, &["plan", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Changes, "{report:#}");
    let up = report["preflight"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vault reachable and unsealed")
        .unwrap();
    let detail = up["detail"].as_str().unwrap();
    assert!(
        detail.contains("standby") && detail.contains(active.as_str()),
        "{detail}"
    );

    // A standby does not forward a cert login's client certificate: step 3's gate logs
    // in at the active node sys/leader names.
    let (exit, report) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");

    let (exit, report) = rotate(&cfg, &["health"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let state = report["proof"]["state"].as_str().unwrap();
    assert!(
        state.contains("standby") && state.contains(active.as_str()),
        "{state}"
    );
}

/// The active node SIGKILLed in the middle of step 3 and of step 2, five times, behind a
/// load balancer (the cluster address agents and the admin use): each run ends committed
/// or in a clean exit 8 that `--resume` completes, once the node is back; then every
/// agent's pair matches and logs in (`bao login -method=cert` through the balancer) and
/// every node serves what its file holds.
#[tokio::test]
async fn killing_the_active_node_mid_run_ends_committed_or_in_a_resume_that_completes() {
    let c = cluster();
    let lb = balancer();
    let _turn = cluster_turn().await;
    let dir = tempdir("cluster-kill");
    let apps = ["k1", "k2", "k3", "k4"];
    let cfg = cluster_config_apps(c, &dir, &lb.addr, &apps);
    // Kills land inside the runs (a run takes ~0.2 s unhurt); only those count, until
    // five have.
    let plan = [
        ("agents", 60),
        ("listener", 40),
        ("agents", 120),
        ("listener", 100),
        ("agents", 30),
        ("listener", 150),
        ("agents", 90),
        ("listener", 70),
        ("agents", 10),
        ("listener", 20),
    ];
    let mut exits = Vec::new();
    for (step, after_ms) in plan {
        if exits
            .iter()
            .filter(|e: &&(&str, u64, u128, Exit)| e.2 > u128::from(e.1))
            .count()
            >= 5
        {
            break;
        }
        let leader = c.leader().await.expect("an active node");
        let killer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
            c.kill(leader);
        });
        let started = std::time::Instant::now();
        let (exit, report) = rotate(&cfg, &["run", "--step", step]).await;
        let took = started.elapsed();
        killer.await.unwrap();
        // The node comes back (sealed, as after a crash) and is unsealed.
        c.spawn(leader).unwrap();
        c.unseal(leader).await.unwrap();
        c.wait_voters().await.unwrap();
        let outcomes: Vec<String> = report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["targets"].as_array().into_iter().flatten())
            .map(|t| {
                format!(
                    "{}={}",
                    t["app"].as_str().unwrap_or("?"),
                    t["outcome"].as_str().unwrap_or("?")
                )
            })
            .collect();
        eprintln!(
            "{step} kill after {after_ms} ms: took {took:?}, {exit:?}, {outcomes:?} {}",
            report["summary"]
        );
        // A kill during step 0 does not count as one mid-run.
        let wrote = !report["steps"].as_array().is_none_or(|s| s.is_empty());
        let took = if wrote { took.as_millis() } else { 0 };
        exits.push((step, after_ms, took, exit));
        match exit {
            Exit::Ok => {}
            // Killed during step 0: nothing written; the same command once it is back.
            Exit::Vault if !wrote => {
                let (exit, again) = rotate(&cfg, &["run", "--step", step]).await;
                assert_eq!(exit, Exit::Ok, "{again:#}");
            }
            Exit::ResumeNeeded => {
                let (exit, resumed) = rotate(&cfg, &["run", "--resume"]).await;
                assert_eq!(
                    exit,
                    Exit::Ok,
                    "resume after killing {}: {resumed:#}\nthe run: {report:#}",
                    c.nodes[leader].name
                );
            }
            other => panic!(
                "{step} with {} killed after {after_ms} ms: exit {other:?}: {report:#}",
                c.nodes[leader].name
            ),
        }
        for app in apps {
            let home = dir.join("home").join(app);
            let (crt, key) = (
                home.join("vault/mtls/agent.crt"),
                home.join("vault/mtls/agent.key"),
            );
            if !crt.exists() {
                continue;
            }
            pki_ops::key_matches_cert_files(&key, &crt).unwrap();
            let out = Command::new(&c.bao)
                .env_clear()
                .env("VAULT_ADDR", &lb.addr)
                .env("VAULT_CACERT", home.join("vault/ca/ca.pem"))
                .env("VAULT_TLS_SERVER_NAME", SERVER_NAME)
                .env("HOME", &home)
                .args(["login", "-method=cert", "-format=json", "-no-store"])
                .arg(format!("-client-cert={}", crt.display()))
                .arg(format!("-client-key={}", key.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{app} cannot log in after the kill: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (i, n) in c.nodes.iter().enumerate() {
            assert_eq!(
                served_serial(c, i),
                file_serial(&n.cert),
                "{} serves its file",
                n.name
            );
        }
    }
    eprintln!("kills: {exits:?}");
    let mid_run = exits.iter().filter(|e| e.2 > u128::from(e.1)).count();
    assert!(
        mid_run >= 5,
        "only {mid_run} kills landed mid-run: {exits:?}"
    );
}

/// Step 4 on the cluster with real `bao agent`s reaching Vault through the balancer, the
/// active node SIGKILLed while the agents restart and render: the run ends committed or
/// in exit 8 that `--resume` completes; then every leaf pair matches, every agent logs
/// in, and each agent's sink token was issued for its step-3 certificate.
#[tokio::test]
async fn killing_the_active_node_during_step_4_ends_committed_or_in_a_resume_that_completes() {
    let c = cluster();
    let lb = balancer();
    let _turn = cluster_turn().await;
    let dir = tempdir("cluster-leaf-kill");
    let units = rotate_tests::Units::start(&dir).unwrap();
    let apps = ["l1", "l2"];
    let cfg = cluster_config_apps(c, &dir, &lb.addr, &apps);
    for app in apps {
        let home = dir.join("home").join(app);
        units.define(
            &format!("vault-agent-{app}.service"),
            rotate_tests::UnitDef {
                argv: vec![
                    c.bao.display().to_string(),
                    "agent".into(),
                    format!(
                        "-config={}",
                        home.join(format!(".vault-agent-{app}/agent.hcl")).display()
                    ),
                ],
                env: vec![
                    ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                    ("HOME".into(), home.display().to_string()),
                ],
                log: home.join(format!("agent-{app}.log")),
            },
        );
    }
    let (exit, report) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let mut mid_run = 0;
    for after_ms in [400, 900, 250] {
        let leader = c.leader().await.expect("an active node");
        let killer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
            c.kill(leader);
        });
        let started = std::time::Instant::now();
        let (exit, report) = rotate(&cfg, &["run", "--step", "leaf"]).await;
        let took = started.elapsed();
        killer.await.unwrap();
        c.spawn(leader).unwrap();
        c.unseal(leader).await.unwrap();
        c.wait_voters().await.unwrap();
        eprintln!(
            "leaf kill after {after_ms} ms: took {took:?}, {exit:?}: {}",
            report["summary"]
        );
        if took > std::time::Duration::from_millis(after_ms) {
            mid_run += 1;
        }
        match exit {
            Exit::Ok => {}
            Exit::ResumeNeeded => {
                let (exit, resumed) = rotate(&cfg, &["run", "--resume"]).await;
                assert_eq!(exit, Exit::Ok, "{resumed:#}\nthe run: {report:#}");
            }
            other => panic!(
                "step 4 with {} killed after {after_ms} ms: exit {other:?}: {report:#}",
                c.nodes[leader].name
            ),
        }
        for app in apps {
            let home = dir.join("home").join(app);
            let tls = home.join("tls");
            pki_ops::key_matches_cert_files(
                &tls.join(format!("{app}.key")),
                &tls.join(format!("{app}.fullchain.pem")),
            )
            .unwrap();
            let out = Command::new(&c.bao)
                .env_clear()
                .env("VAULT_ADDR", &lb.addr)
                .env("VAULT_CACERT", home.join("vault/ca/ca.pem"))
                .env("VAULT_TLS_SERVER_NAME", SERVER_NAME)
                .env("HOME", &home)
                .args(["login", "-method=cert", "-format=json", "-no-store"])
                .arg(format!(
                    "-client-cert={}",
                    home.join("vault/mtls/agent.crt").display()
                ))
                .arg(format!(
                    "-client-key={}",
                    home.join("vault/mtls/agent.key").display()
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{app}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The whole order on the cluster (steps 2, 3, 4 and 7): every node's listener changes.
    let before: Vec<String> = (0..c.nodes.len()).map(|i| served_serial(c, i)).collect();
    let (exit, report) = rotate(&cfg, &["run"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    for (i, n) in c.nodes.iter().enumerate() {
        assert_ne!(
            served_serial(c, i),
            before[i],
            "{} after the whole order",
            n.name
        );
    }
    for app in apps {
        let _ = Command::new(dir.join("bin/systemctl"))
            .args(["--user", "stop", &format!("vault-agent-{app}.service")])
            .status();
    }
    assert!(mid_run >= 2, "only {mid_run} kills landed inside step 4");
}

/// Step 6 on a cluster: after step 2, each node is restarted by its own `restart`, one
/// at a time, each back, unsealed and rejoined (raft healthy) before the next: the
/// restarts never overlap, and the cluster is healthy after.
#[tokio::test]
async fn step_6_restarts_the_nodes_one_at_a_time() {
    let c = cluster();
    let _turn = cluster_turn().await;
    let dir = tempdir("cluster-restarts");
    let cfg = cluster_config(c, &dir);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    for (i, n) in c.nodes.iter().enumerate() {
        let script = c.restart_command(i).unwrap();
        let reload = format!("reload = \"signal:{}:HUP\"\n", n.pid_file.display());
        text = text.replacen(
            &reload,
            &format!("{reload}restart = \"cmd:{}\"\n", script.display()),
            1,
        );
    }
    text.push_str("\n[restarts]\nvault_when = \"always\"\n");
    std::fs::write(&cfg, &text).unwrap();
    let log = c.dir.join("restarts.log");
    let _ = std::fs::remove_file(&log);

    let (exit, report) = rotate(&cfg, &["run", "--step", "listener", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let restarts = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "restarts")
        .unwrap();
    let names: Vec<(&str, &str)> = restarts["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["app"].as_str().unwrap(), t["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        &names[1..],
        [
            ("vault-1", "committed"),
            ("vault-2", "committed"),
            ("vault-3", "committed")
        ],
        "{report:#}"
    );
    // Each node down and up again before the next goes down.
    let events: Vec<(String, String, u128)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect();
    let order: Vec<String> = events.iter().map(|(n, w, _)| format!("{n} {w}")).collect();
    assert_eq!(
        order,
        [
            "vault-1 down",
            "vault-1 up",
            "vault-2 down",
            "vault-2 up",
            "vault-3 down",
            "vault-3 up"
        ],
        "{events:?}"
    );
    let (exit, report) = rotate(&cfg, &["health"]).await;
    assert_eq!(exit, Exit::Ok, "{report:#}");
    assert_eq!(
        report["proof"]["cluster"]["failure_tolerance"], 1,
        "{report:#}"
    );
}
