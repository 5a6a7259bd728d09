//! `rotate-lab`: start the OpenBao lab and run `rotate` against it (the README's main job).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// Start a real OpenBao server shaped like the seed's production (mTLS listener, SNI
/// `vault.prod.privsec.ch`, `pki-prod` with "PrivSec Intermediate CA (prod)") and run
/// `rotate` against it.
#[derive(Parser)]
struct Args {
    /// Lab directory (wiped and recreated).
    #[arg(long, default_value = "target/lab")]
    dir: PathBuf,
    /// Keep the lab running after the demo until Ctrl-C (source `<dir>/env.sh` to use it).
    #[arg(long)]
    keep: bool,
}

async fn rotate(args: &[&str]) -> rotate_cli::Exit {
    println!("\n$ rotate {}", args[1..].join(" "));
    let cli = rotate_cli::Cli::parse_from(args);
    let mut out = std::io::stdout();
    rotate_cli::run(cli, &mut out).await
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
    let config = lab.paths.rotate_toml.display().to_string();
    let mut exit = rotate(&["rotate", "--config", &config, "status"]).await;
    for args in [
        &["plan", "--step", "agents"][..],
        &["run", "--step", "agents"][..],
    ] {
        if exit != rotate_cli::Exit::Ok && exit != rotate_cli::Exit::Changes {
            break;
        }
        let mut argv = vec!["rotate", "--config", &config];
        argv.extend_from_slice(args);
        exit = rotate(&argv).await;
    }
    if args.keep && exit == rotate_cli::Exit::Ok {
        println!(
            "\nLab running. In another shell: source {} && bao status\nCtrl-C to stop.",
            lab.paths.env_sh.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    if exit != rotate_cli::Exit::Ok {
        eprintln!("server log tail:\n{}", lab.log_tail());
    }
    drop(lab);
    Ok(exit.into())
}
