//! `rotate-lab`: start the OpenBao lab and run `rotate` against it (the README's main job).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use rotate_cli::Exit;
use vault_client::{CertAuthApi, KvApi, SysApi};

/// Start a real OpenBao server shaped like the seed's production (mTLS listener, SNI
/// `vault.prod.privsec.ch`, `pki-prod` with "PrivSec Intermediate CA (prod)", KV v2 `kv`)
/// and run the rotation steps against it, in the order: status, plan + run of steps 1
/// and 2 (admin client cert, listener cert: the served serial is shown before and after),
/// plan + run of step 3 (agents), plan + run of step 4 (leaf, with real `bao agent`s
/// behind a fake `systemctl`), status.
#[derive(Parser)]
struct Args {
    /// Lab directory (wiped and recreated).
    #[arg(long, default_value = "target/lab")]
    dir: PathBuf,
    /// Keep the lab running after the demo until Ctrl-C (source `<dir>/env.sh` to use it).
    #[arg(long)]
    keep: bool,
}

async fn rotate(config: &str, args: &[&str]) -> Exit {
    println!("\n$ rotate {}", args.join(" "));
    let mut argv = vec!["rotate", "--config", config];
    argv.extend_from_slice(args);
    let mut out = std::io::stdout();
    let exit = rotate_cli::run(rotate_cli::Cli::parse_from(argv), &mut out).await;
    println!("(exit {})", exit.code());
    exit
}

/// The write-up found a leftover `debug-policy` on the agent mappings and an existing
/// `kv/ncprd1`: recreate that state so the run has something to fix and to respect.
async fn seed_drift(lab: &rotate_tests::Lab) -> Result<()> {
    let admin = lab.admin_client()?;
    admin
        .write_policy(
            "debug-policy",
            "path \"sys/health\" { capabilities = [\"read\"] }\n",
        )
        .await?;
    for app in ["ncprd1", "resume2me"] {
        let name = format!("agent-{app}");
        let mut m = admin
            .read_cert_role("cert", &name)
            .await?
            .with_context(|| format!("mapping {name} missing"))?;
        m.token_policies.push("debug-policy".into());
        admin.write_cert_role("cert", &name, &m).await?;
    }
    let data = serde_json::json!({"db_password": "set-by-operator"});
    admin
        .kv2_write(
            "kv",
            "ncprd1",
            data.as_object().cloned().unwrap_or_default(),
            Some(0),
        )
        .await?;
    println!("\n(lab) added debug-policy to both agent mappings; created kv/ncprd1");
    Ok(())
}

/// The serial the listener serves on a new TLS connection with SNI (what
/// `openssl s_client -servername` shows).
async fn served_serial(lab: &rotate_tests::Lab) -> Result<String> {
    let h =
        vault_client::tls_handshake(&lab.client_config(None)?, std::time::Duration::from_secs(5))
            .await?;
    let leaf = h.peer_chain.first().context("no certificate served")?;
    Ok(pki_ops::CertInfo::from_der(leaf, "served")?.serial_hex)
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode> {
    let args = Args::parse();
    println!("Starting the OpenBao lab in {} ...", args.dir.display());
    let lab = rotate_tests::Lab::start(&args.dir).await?;
    println!(
        "OpenBao listening on {} (TLS name {}, client certificate required)",
        lab.addr,
        rotate_tests::SERVER_NAME
    );
    println!(
        "Lab files: {}  (config: {})",
        lab.paths.dir.display(),
        lab.paths.rotate_toml.display()
    );
    for app in ["ncprd1", "resume2me"] {
        lab.define_agent_unit(app, &lab.paths.dir.join("home").join(app));
    }
    // The demo runs the whole order: steps 1 and 2 included.
    std::fs::write(&lab.paths.rotate_toml, lab.rotate_config_full())?;
    let config = lab.paths.rotate_toml.display().to_string();
    let ok = |e: Exit| e == Exit::Ok || e == Exit::Changes;
    let mut exit = rotate(&config, &["status"]).await;
    let before = served_serial(&lab).await?;
    println!("\n(lab) the listener serves serial {before}");
    for step in [
        &["plan", "--step", "admin", "--step", "listener"][..],
        &["run", "--step", "admin", "--step", "listener"][..],
    ] {
        if !ok(exit) {
            break;
        }
        exit = rotate(&config, step).await;
    }
    if ok(exit) {
        let after = served_serial(&lab).await?;
        println!(
            "\n(lab) the listener served serial {before} before step 2 and serves {after} now"
        );
        anyhow::ensure!(before != after, "the listener serial did not change");
    }
    for step in [
        &["plan", "--step", "agents"][..],
        &["run", "--step", "agents"][..],
        &["plan", "--step", "leaf", "--with-kv-access"][..],
        &["run", "--step", "leaf", "--with-kv-access"][..],
        &["status"][..],
    ] {
        if !ok(exit) {
            break;
        }
        if step == ["plan", "--step", "leaf", "--with-kv-access"] {
            seed_drift(&lab).await?;
        }
        exit = rotate(&config, step).await;
    }
    if ok(exit) && args.keep {
        println!(
            "\nLab running. In another shell: source {} && bao status\nCtrl-C to stop.",
            lab.paths.env_sh.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    if !ok(exit) {
        eprintln!("server log tail:\n{}", lab.log_tail());
    }
    drop(lab);
    Ok(if ok(exit) { Exit::Ok } else { exit }.into())
}
