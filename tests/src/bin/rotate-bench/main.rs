//! `rotate-bench`: measure what a rotation spends its time on, against the real lab.
//!
//! `cargo run --release -p rotate-tests --bin rotate-bench` prints a table: requests over
//! one pooled mTLS connection vs a fresh client (handshake) per request, issuance with a
//! Vault-made key vs a local CSR (P-256, RSA 2048), and whole `run --step agents` runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use pki_ops::{IssueMode, KeyAlgorithm, RoleSpec, issue_cert};
use vault_client::{IssueRequest, SysApi, VaultClient};

#[derive(Parser)]
struct Args {
    /// Lab directory (wiped and recreated).
    #[arg(long, default_value = "target/bench-lab")]
    dir: std::path::PathBuf,
    /// Repetitions of the cheap measurements (the expensive ones use a fifth).
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Skip the failover measurement (it starts a 3-node raft cluster).
    #[arg(long)]
    no_cluster: bool,
    /// Only the fleet table (rotate vs floor vs baseline at --sizes/--agent-sizes).
    #[arg(long)]
    scale_only: bool,
    /// Skip the fleet table.
    #[arg(long)]
    no_scale: bool,
    /// Fleet sizes for `plan` and step 3.
    #[arg(long, value_delimiter = ',', default_value = "10,200,1000")]
    sizes: Vec<usize>,
    /// Fleet sizes for step 4 with real agents.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    agent_sizes: Vec<usize>,
    /// The largest fleet the baseline (a process per operation) runs for.
    #[arg(long, default_value_t = 200)]
    baseline_max: usize,
    /// `[run] concurrency` of the fleet table's runs.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// `[run] agent_concurrency` of the fleet table's runs (step 4).
    #[arg(long, default_value_t = 16)]
    agent_concurrency: usize,
    /// Certificate files for the inventory row (0: none).
    #[arg(long, default_value_t = 10_000)]
    inventory_files: usize,
}

mod scale;

struct Stats {
    name: String,
    n: usize,
    samples: Vec<Duration>,
}

impl Stats {
    fn row(&mut self) -> String {
        self.samples.sort();
        let total: Duration = self.samples.iter().sum();
        let pct = |p: f64| self.samples[((self.samples.len() - 1) as f64 * p) as usize];
        format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            self.name,
            self.n,
            (total / self.n as u32).as_secs_f64() * 1e3,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.95).as_secs_f64() * 1e3,
        )
    }
}

async fn measure<F, Fut>(name: &str, n: usize, mut f: F) -> Result<Stats>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    f().await?; // warm-up
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed());
    }
    Ok(Stats {
        name: name.to_owned(),
        n,
        samples,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let lab = rotate_tests::Lab::start(&args.dir).await?;
    let scale_rows = if args.no_scale {
        Vec::new()
    } else {
        let plan = scale::Plan {
            sizes: args.sizes.clone(),
            agent_sizes: args.agent_sizes.clone(),
            baseline_max: args.baseline_max,
            concurrency: args.concurrency,
            agent_concurrency: args.agent_concurrency,
            inventory_files: args.inventory_files,
        };
        scale::run(&lab, &std::path::absolute(&args.dir)?, &plan).await?
    };
    let print_scale = || {
        if !scale_rows.is_empty() {
            println!("\n{}", scale::Row::header());
            for r in &scale_rows {
                println!("{}", r.line());
            }
        }
    };
    if args.scale_only {
        print_scale();
        return Ok(());
    }
    let admin = lab.admin_client()?;
    let cfg = lab.client_config(None)?;
    let few = (args.n / 5).max(5);

    let role = RoleSpec::agent_client("bench.prod.privsec.ch", "1h", "1h");
    pki_ops::upsert_role(
        &admin,
        rotate_tests::PKI_MOUNT,
        "bench",
        &role,
        pki_ops::CreatePolicy::CreateIfMissing,
        false,
    )
    .await?;
    let rsa_role =
        RoleSpec::agent_client("bench.prod.privsec.ch", "1h", "1h").with_key(KeyAlgorithm::Rsa2048);
    pki_ops::upsert_role(
        &admin,
        rotate_tests::PKI_MOUNT,
        "bench-rsa",
        &rsa_role,
        pki_ops::CreatePolicy::CreateIfMissing,
        false,
    )
    .await?;
    let req = IssueRequest {
        common_name: "bench.prod.privsec.ch".into(),
        ttl: Some("10m".into()),
        ..Default::default()
    };

    let pooled = VaultClient::new(&cfg)?;
    let mut rows = vec![
        measure(
            "sys/seal-status, one pooled mTLS client",
            args.n,
            || async {
                pooled.seal_status().await?;
                Ok(())
            },
        )
        .await?,
        measure(
            "sys/seal-status, fresh client + mTLS handshake each",
            few,
            || async {
                VaultClient::new(&cfg)?.seal_status().await?;
                Ok(())
            },
        )
        .await?,
        measure(
            "issue, Vault-made EC P-256 key (pki/issue)",
            few,
            || async {
                issue_cert(
                    &admin,
                    rotate_tests::PKI_MOUNT,
                    "bench",
                    &req,
                    IssueMode::VaultKey,
                )
                .await?;
                Ok(())
            },
        )
        .await?,
        measure("issue, local P-256 key + CSR (pki/sign)", few, || async {
            issue_cert(
                &admin,
                rotate_tests::PKI_MOUNT,
                "bench",
                &req,
                IssueMode::Csr(KeyAlgorithm::EcdsaP256),
            )
            .await?;
            Ok(())
        })
        .await?,
        measure(
            "issue, local RSA 2048 key + CSR (pki/sign)",
            few / 2,
            || async {
                issue_cert(
                    &admin,
                    rotate_tests::PKI_MOUNT,
                    "bench-rsa",
                    &req,
                    IssueMode::Csr(KeyAlgorithm::Rsa2048),
                )
                .await?;
                Ok(())
            },
        )
        .await?,
    ];
    let config = lab.paths.rotate_toml.display().to_string();
    rows.push(
        measure(
            "`rotate run --step agents`, 2 apps, gates included",
            5,
            || async {
                let cli = <rotate_cli::Cli as Parser>::parse_from([
                    "rotate", "--config", &config, "-o", "json", "run", "--step", "agents",
                ]);
                let exit = rotate_cli::run(cli, &mut std::io::sink()).await;
                anyhow::ensure!(exit == rotate_cli::Exit::Ok, "rotate exited {exit:?}");
                Ok(())
            },
        )
        .await?,
    );
    // Step 3 at fleet sizes, sequential (`[run] concurrency = 1`) vs concurrent (4), each
    // in its own state directory; peak RSS per row (the kernel's high-water mark, reset
    // before each row through /proc/self/clear_refs).
    let base = std::path::absolute(&args.dir)?;
    for apps in [10usize, 50, 200] {
        for concurrency in [1usize, 4] {
            let homes: Vec<(String, PathBuf)> = (0..apps)
                .map(|i| {
                    let name = format!("fleet{apps}c{concurrency}x{i}");
                    (name.clone(), base.join("fleet").join(&name))
                })
                .collect();
            for (_, home) in &homes {
                std::fs::create_dir_all(home)?;
            }
            let config = fleet_config(&lab, &base, "fleet", &homes, concurrency, 16)?;
            std::fs::write("/proc/self/clear_refs", "5")?;
            let mut row = measure(
                &format!(
                    "`rotate run --step agents`, {apps} apps, gates included, concurrency {concurrency}"
                ),
                3,
                || async {
                    let cli = <rotate_cli::Cli as Parser>::parse_from([
                        "rotate", "--config", &config, "-o", "json", "run", "--step", "agents",
                    ]);
                    let exit = rotate_cli::run(cli, &mut std::io::sink()).await;
                    anyhow::ensure!(exit == rotate_cli::Exit::Ok, "rotate exited {exit:?}");
                    Ok(())
                },
            )
            .await?;
            row.name = format!("{} (peak RSS {} MiB)", row.name, peak_rss_kib()? / 1024);
            rows.push(row);
        }
    }
    let cost = if args.no_cluster {
        None
    } else {
        Some(failover(&args.dir.join("cluster"), &mut rows).await?)
    };
    println!("| operation | n | mean ms | p50 ms | p95 ms |\n| --- | --- | --- | --- | --- |");
    for r in &mut rows {
        println!("{}", r.row());
    }
    if let Some(cost) = cost {
        println!(
            "\nfailover cost (killed minus unhurt, mean): {:.0} ms",
            cost.as_secs_f64() * 1e3
        );
    }
    print_scale();
    Ok(())
}

/// What a leader change costs a run: `rotate run --step agents` for 10 apps through a
/// load balancer in front of a 3-node raft cluster, unhurt, and with the active node
/// SIGKILLed 30 ms into the run (restarted, unsealed and rejoined between runs). Returns
/// the difference of the means: the time from the kill to the run continuing.
async fn failover(dir: &Path, rows: &mut Vec<Stats>) -> Result<Duration> {
    let cluster: &'static rotate_tests::Cluster =
        Box::leak(Box::new(rotate_tests::Cluster::start(dir, 3).await?));
    let lb = rotate_tests::Balancer::start(cluster).await?;
    let apps: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let names: Vec<&str> = apps.iter().map(String::as_str).collect();
    let config = cluster.rotate_config(dir, &lb.addr, &names)?;
    let config = config.display().to_string();
    let run = || {
        let config = config.clone();
        async move {
            let cli = <rotate_cli::Cli as Parser>::parse_from([
                "rotate", "--config", &config, "-o", "json", "run", "--step", "agents",
            ]);
            let exit = rotate_cli::run(cli, &mut std::io::sink()).await;
            anyhow::ensure!(
                exit == rotate_cli::Exit::Ok,
                "agents: rotate exited {exit:?}"
            );
            Ok(())
        }
    };
    let mut unhurt = measure(
        "`rotate run --step agents`, 10 apps, 3-node cluster behind a balancer",
        3,
        run,
    )
    .await?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let leader = cluster
            .leader()
            .await
            .ok_or_else(|| anyhow::anyhow!("no active node"))?;
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            cluster.kill(leader);
        });
        let t = Instant::now();
        run().await?;
        samples.push(t.elapsed());
        killer.await?;
        cluster.spawn(leader)?;
        cluster.unseal(leader).await?;
        cluster.wait_voters().await?;
    }
    let mean = |s: &Stats| s.samples.iter().sum::<Duration>() / s.samples.len() as u32;
    let killed = Stats {
        name: "the same, the active node SIGKILLed 30 ms into the run".into(),
        n: samples.len(),
        samples,
    };
    let cost = mean(&killed).saturating_sub(mean(&unhurt));
    unhurt.samples.sort();
    rows.push(unhurt);
    rows.push(killed);
    Ok(cost)
}

/// A lab config for `homes` with its own state directory and `[run] concurrency`,
/// written under `base` as `<kind>-<apps>-<concurrency>.toml`: its path.
fn fleet_config(
    lab: &rotate_tests::Lab,
    base: &Path,
    kind: &str,
    homes: &[(String, PathBuf)],
    concurrency: usize,
    agent_concurrency: usize,
) -> Result<String> {
    let tag = format!("{kind}-{}-{concurrency}", homes.len());
    let text = lab.rotate_config_for(homes).replace(
        &lab.paths.dir.join("state").display().to_string(),
        &base.join(format!("{tag}-state")).display().to_string(),
    );
    anyhow::ensure!(
        text.contains("[run]\n"),
        "the lab config has no [run] section to set concurrency in"
    );
    let path = base.join(format!("{tag}.toml"));
    std::fs::write(
        &path,
        text.replace(
            "[run]\n",
            &format!(
                "[run]\nconcurrency = {concurrency}\nagent_concurrency = {agent_concurrency}\n"
            ),
        ),
    )?;
    Ok(path.display().to_string())
}

/// This process's peak resident set size (VmHWM), KiB.
fn peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))
}
