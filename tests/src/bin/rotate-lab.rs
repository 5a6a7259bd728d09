//! `rotate-lab`: start the OpenBao lab and run `rotate` against it (the README's main job).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use rotate_cli::Exit;
use vault_client::{CertAuthApi, KvApi, SysApi};

/// Start a real OpenBao server shaped like the seed's production (mTLS listener, SNI
/// `vault.prod.privsec.ch`, `pki-prod` with "PrivSec Intermediate CA (prod)", KV v2 `kv`)
/// and run the whole rotation against it: status; plan; `rotate run`, steps 0-7 in
/// order (admin cert, listener cert with the served serial before and after, agent certs,
/// leaves through real `bao agent`s behind a fake `systemctl`, the proxy's CA bundle, a
/// Vault restart that comes back sealed: unsealed, then `--resume`, final healthcheck);
/// then verify, drift caught and fixed, a `--if-due` run with nothing due, status.
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

/// The demo's config: the whole order. The proxy's trust material lives in
/// `<lab>/home/proxyprod`; step 6 restarts the lab's Vault (it comes back sealed, as a
/// production restart can).
fn demo_config(lab: &'static rotate_tests::Lab) -> Result<String> {
    let proxy_home = lab.paths.dir.join("home/proxyprod");
    std::fs::create_dir_all(proxy_home.join("tls"))?;
    let restart = lab.restart_command()?;
    Ok(lab
        .rotate_config_full()
        .replace(
            "[proxy]\nname = \"proxyprod\"\n",
            &format!(
                "[proxy]\nname = \"proxyprod\"\nhome = \"{}\"\nuser = \"root\"\nca_bundle = \"tls/vault-ca.pem\"\nclient_cert = \"tls/proxy-client.crt\"\nclient_key = \"tls/proxy-client.key\"\n\n[restarts]\nvault = \"cmd:{}\"\nvault_when = \"always\"\n\n[health]\nwindow = \"8s\"\n",
                proxy_home.display(),
                restart.display()
            ),
        ))
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode> {
    let args = Args::parse();
    println!("Starting the OpenBao lab in {} ...", args.dir.display());
    // Leaked: the restart helper serves it from a thread for the rest of the process.
    let lab: &'static rotate_tests::Lab =
        Box::leak(Box::new(rotate_tests::Lab::start(&args.dir).await?));
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
    std::fs::write(&lab.paths.rotate_toml, demo_config(lab)?)?;
    let config = lab.paths.rotate_toml.display().to_string();
    let result = demo(lab, &config).await;
    if result.is_err() {
        eprintln!("server log tail:\n{}", lab.log_tail());
    }
    let exit = result?;
    if exit == Exit::Ok && args.keep {
        println!(
            "\nLab running. In another shell: source {} && bao status\nCtrl-C to stop.",
            lab.paths.env_sh.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    lab.stop();
    Ok(exit.into())
}

/// The whole order, then what an operator does next: verify, drift caught and fixed, a
/// scheduled `--if-due` run that has nothing to do.
async fn demo(lab: &'static rotate_tests::Lab, config: &str) -> Result<Exit> {
    let expect = |got: Exit, want: Exit, what: &str| {
        anyhow::ensure!(
            got == want,
            "{what}: exit {} (expected {})",
            got.code(),
            want.code()
        );
        Ok(())
    };
    expect(rotate(config, &["status"]).await, Exit::Ok, "status")?;
    expect(
        rotate(config, &["plan", "--with-kv-access"]).await,
        Exit::Changes,
        "plan",
    )?;
    let before = served_serial(lab).await?;
    println!("\n(lab) the listener serves serial {before}");

    // Steps 0-7. Step 6 restarts Vault, which comes back sealed: the run stops journaled.
    let exit = rotate(config, &["run", "--with-kv-access"]).await;
    expect(
        exit,
        Exit::ResumeNeeded,
        "the whole order (sealed after the restart)",
    )?;
    println!("\n(lab) the operator unseals Vault (rotate never handles unseal keys)");
    lab.unseal().await?;
    expect(
        rotate(config, &["run", "--resume"]).await,
        Exit::Ok,
        "resume after unseal",
    )?;
    let after = served_serial(lab).await?;
    println!("\n(lab) the listener served serial {before} before the run and serves {after} now");
    anyhow::ensure!(before != after, "the listener serial did not change");

    expect(rotate(config, &["verify"]).await, Exit::Ok, "verify")?;
    seed_drift(lab).await?;
    expect(
        rotate(config, &["verify"]).await,
        Exit::VerifyFailed,
        "verify with drift",
    )?;
    expect(
        rotate(config, &["run", "--step", "leaf", "--with-kv-access"]).await,
        Exit::Ok,
        "step 4 removes debug-policy",
    )?;
    expect(
        rotate(config, &["verify"]).await,
        Exit::Ok,
        "verify after the fix",
    )?;
    // A scheduled renewer: nothing is due, nothing is written, nothing restarted.
    expect(
        rotate(config, &["run", "--if-due"]).await,
        Exit::Ok,
        "run --if-due",
    )?;
    expect(rotate(config, &["status"]).await, Exit::Ok, "status")?;
    Ok(Exit::Ok)
}
