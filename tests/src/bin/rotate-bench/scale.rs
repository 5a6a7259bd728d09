//! Fleet sizes side by side: `rotate` against the floor (the same Vault requests replayed
//! bare over keep-alive connections; all agents restarted at once) and against a baseline
//! shaped like the seed's root shell wrapper (one `bao` process per Vault operation,
//! `openssl` for checks, `systemctl --user restart` per app, one app after another).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use pki_ops::{KeyAlgorithm, PrivateKey, build_csr};
use vault_client::{
    CertAuthApi, ClientConfig, IssueRequest, PkiApi, SysApi, TokenApi, VaultClient,
};

use rotate_tests::{Lab, PKI_MOUNT, SERVER_NAME};

/// One line of the table.
pub(crate) struct Row {
    pub(crate) n: usize,
    pub(crate) what: String,
    pub(crate) rotate: Duration,
    pub(crate) baseline: Option<Duration>,
    pub(crate) floor: Option<Duration>,
    pub(crate) rss_mib: Option<u64>,
    pub(crate) note: String,
}

impl Row {
    fn ms(d: Option<Duration>) -> String {
        d.map_or("—".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
    }

    fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
        match (a, b) {
            (Some(a), Some(b)) if !b.is_zero() => {
                format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
            }
            _ => "—".into(),
        }
    }

    pub(crate) fn header() -> &'static str {
        "| apps | what | rotate ms | floor ms | baseline ms | rotate / floor | baseline / rotate | peak RSS MiB | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.n,
            self.what,
            Self::ms(Some(self.rotate)),
            Self::ms(self.floor),
            Self::ms(self.baseline),
            Self::ratio(Some(self.rotate), self.floor),
            Self::ratio(self.baseline, Some(self.rotate)),
            self.rss_mib.map_or("—".into(), |m| m.to_string()),
            self.note
        )
    }
}

/// What to measure.
pub(crate) struct Plan {
    /// Fleet sizes for `plan` and step 3.
    pub(crate) sizes: Vec<usize>,
    /// Fleet sizes for step 4 with real agents.
    pub(crate) agent_sizes: Vec<usize>,
    /// The largest fleet the (slow) baseline runs for.
    pub(crate) baseline_max: usize,
    /// `[run] concurrency`.
    pub(crate) concurrency: usize,
    /// `[run] agent_concurrency`.
    pub(crate) agent_concurrency: usize,
    /// Certificate files for the inventory row (two per app).
    pub(crate) inventory_files: usize,
}

/// The table for every size of `plan`.
pub(crate) async fn run(lab: &Lab, base: &Path, plan: &Plan) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in &plan.sizes {
        let fleet = Fleet::new(lab, base, &format!("s{n}"), n, plan, false)?;
        rows.push(fleet.plan_row().await?);
        rows.push(fleet.step3_row(plan.baseline_max).await?);
        eprintln!("scale: {n} apps: plan and step 3 measured");
    }
    if plan.inventory_files > 0 {
        rows.push(inventory_row(lab, base, plan).await?);
        eprintln!(
            "scale: inventory of {} files measured",
            plan.inventory_files
        );
    }
    for &n in &plan.agent_sizes {
        let fleet = Fleet::new(lab, base, &format!("a{n}"), n, plan, true)?;
        let measured = fleet.step4_rows(plan.baseline_max).await;
        fleet.stop_agents();
        rows.extend(measured?);
        eprintln!("scale: {n} apps: step 4 measured");
    }
    Ok(rows)
}

/// `rotate inventory` of homes holding `plan.inventory_files` certificate files (an agent
/// certificate and a leaf each, real certificates issued by the lab), files only.
async fn inventory_row(lab: &Lab, base: &Path, plan: &Plan) -> Result<Row> {
    let n = plan.inventory_files.div_ceil(2);
    let fleet = Fleet::new(lab, base, &format!("i{n}"), n, plan, false)?;
    let admin = lab.admin_client()?;
    pki_ops::upsert_role(
        &admin,
        PKI_MOUNT,
        "bench-inventory",
        &pki_ops::RoleSpec::agent_client("inventory.prod.privsec.ch", "1h", "1h"),
        pki_ops::CreatePolicy::CreateIfMissing,
        false,
    )
    .await?;
    let req = IssueRequest {
        common_name: "inventory.prod.privsec.ch".into(),
        ttl: Some("1h".into()),
        ..Default::default()
    };
    let cert = admin
        .issue(PKI_MOUNT, "bench-inventory", &req)
        .await?
        .certificate;
    for (name, home) in &fleet.apps {
        for rel in [
            "vault/mtls/agent.crt".to_owned(),
            format!("tls/{name}.fullchain.pem"),
        ] {
            let path = home.join(rel);
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(&path, &cert)?;
        }
    }
    std::fs::write("/proc/self/clear_refs", "5")?;
    let t = Instant::now();
    let exit = fleet.rotate(&["inventory"]).await?;
    let took = t.elapsed();
    anyhow::ensure!(exit == rotate_cli::Exit::Ok, "inventory exited {exit:?}");
    Ok(Row {
        n,
        what: format!("`rotate inventory` of {} certificate files", 2 * n),
        rotate: took,
        baseline: None,
        floor: None,
        rss_mib: Some(crate::peak_rss_kib()? / 1024),
        note: "files only, no Vault".into(),
    })
}

/// N apps under one config, with their own homes and state directory.
struct Fleet<'l> {
    lab: &'l Lab,
    config: String,
    apps: Vec<(String, PathBuf)>,
    concurrency: usize,
    agent_concurrency: usize,
}

impl<'l> Fleet<'l> {
    fn new(
        lab: &'l Lab,
        base: &Path,
        tag: &str,
        n: usize,
        plan: &Plan,
        agents: bool,
    ) -> Result<Self> {
        let concurrency = plan.concurrency;
        let apps: Vec<(String, PathBuf)> = (0..n)
            .map(|i| {
                let name = format!("{tag}x{i}");
                (name.clone(), base.join("scale").join(tag).join(&name))
            })
            .collect();
        for (name, home) in &apps {
            std::fs::create_dir_all(home)?;
            if agents {
                lab.define_agent_unit(name, home);
            }
        }
        let config = crate::fleet_config(
            lab,
            base,
            &format!("scale-{tag}"),
            &apps,
            concurrency,
            plan.agent_concurrency,
        )?;
        Ok(Fleet {
            lab,
            config,
            apps,
            concurrency,
            agent_concurrency: plan.agent_concurrency,
        })
    }

    /// Runs `rotate <args>` in this process; its JSON report is left beside the config
    /// (`<config>.last.json`) for a look at where the time went.
    async fn rotate(&self, args: &[&str]) -> Result<rotate_cli::Exit> {
        let mut argv = vec!["rotate", "--config", &self.config, "-o", "json"];
        argv.extend_from_slice(args);
        let cli = <rotate_cli::Cli as clap::Parser>::parse_from(argv);
        let mut out = Vec::new();
        let exit = rotate_cli::run(cli, &mut out).await;
        std::fs::write(format!("{}.last.json", self.config), out)?;
        Ok(exit)
    }

    async fn rotate_ok(&self, args: &[&str]) -> Result<Duration> {
        let t = Instant::now();
        let exit = self.rotate(args).await?;
        anyhow::ensure!(
            exit == rotate_cli::Exit::Ok,
            "rotate {args:?} exited {exit:?}"
        );
        Ok(t.elapsed())
    }

    /// A full `plan` (every configured step) of a fleet nothing has run for yet.
    async fn plan_row(&self) -> Result<Row> {
        std::fs::write("/proc/self/clear_refs", "5")?;
        let t = Instant::now();
        let exit = self.rotate(&["plan"]).await?;
        let took = t.elapsed();
        anyhow::ensure!(exit == rotate_cli::Exit::Changes, "plan exited {exit:?}");
        Ok(Row {
            n: self.apps.len(),
            what: "`rotate plan`, every step, before any run".into(),
            rotate: took,
            baseline: None,
            floor: None,
            rss_mib: Some(crate::peak_rss_kib()? / 1024),
            note: "reads only".into(),
        })
    }

    /// Step 3 (a renewal: the fleet's first run is the warm-up), its floor, its baseline.
    async fn step3_row(&self, baseline_max: usize) -> Result<Row> {
        self.rotate_ok(&["run", "--step", "agents"]).await?;
        std::fs::write("/proc/self/clear_refs", "5")?;
        let mut took = Duration::ZERO;
        for _ in 0..2 {
            took += self.rotate_ok(&["run", "--step", "agents"]).await?;
        }
        let rss = crate::peak_rss_kib()? / 1024;
        let floor = (self.step3_floor().await? + self.step3_floor().await?) / 2;
        let baseline = if self.apps.len() <= baseline_max {
            Some(self.step3_baseline().await?)
        } else {
            None
        };
        Ok(Row {
            n: self.apps.len(),
            what: "step 3 (`run --step agents`), gates included".into(),
            rotate: took / 2,
            baseline,
            floor: Some(floor),
            rss_mib: Some(rss),
            note: if baseline.is_none() {
                format!("baseline not run above {baseline_max} apps (linear: see the smaller rows)")
            } else {
                String::new()
            },
        })
    }

    /// The Vault requests step 3 needs per app, bare over one keep-alive admin client with
    /// the same concurrency (keys and CSRs made beforehand, nothing written to disk, no
    /// check): read role, policy, mapping; write role, policy; sign; write mapping; a cert
    /// login over a new mTLS connection with the new certificate; revoke its token. Once
    /// per run: list auth methods, read the marker policy.
    async fn step3_floor(&self) -> Result<Duration> {
        let admin = self.lab.admin_client()?;
        let mut csrs = Vec::new();
        for (name, _) in &self.apps {
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
            let cn = format!("agent-{name}.prod.privsec.ch");
            let csr = build_csr(&key, &cn, &[], &[])?;
            csrs.push((name.clone(), cn, key, csr));
        }
        let concurrency = self.concurrency;
        let t = Instant::now();
        admin.list_auth().await?;
        admin.read_policy("marker-cert-auth").await?;
        let admin = &admin;
        let results: Vec<Result<()>> = futures_util::stream::iter(csrs.iter())
            .map(|(name, cn, key, csr)| async move {
                let role_name = format!("agent-mtls-{name}");
                let mapping_name = format!("agent-{name}");
                let policy_name = format!("pki-issue-{name}");
                let role = admin
                    .read_role(PKI_MOUNT, &role_name)
                    .await?
                    .context("role")?;
                let policy = admin.read_policy(&policy_name).await?.context("policy")?;
                let mapping = admin
                    .read_cert_role("cert", &mapping_name)
                    .await?
                    .context("mapping")?;
                admin.write_role(PKI_MOUNT, &role_name, role).await?;
                admin.write_policy(&policy_name, &policy).await?;
                let req = IssueRequest {
                    common_name: cn.clone(),
                    ttl: Some("720h".into()),
                    ..Default::default()
                };
                let issued = admin.sign(PKI_MOUNT, &role_name, csr, &req).await?;
                admin
                    .write_cert_role("cert", &mapping_name, &mapping)
                    .await?;
                let cfg = ClientConfig::new(&self.lab.addr)?
                    .ca_cert(&self.lab.paths.ca_bundle)
                    .tls_server_name(SERVER_NAME)
                    .client_identity("/floor/agent.crt", "/floor/agent.key")
                    .preload(
                        "/floor/agent.crt",
                        issued.certificate.clone().into_bytes().into(),
                    )
                    .preload("/floor/agent.key", key.pem().as_bytes().to_vec().into());
                let login = VaultClient::new(&cfg)?
                    .cert_login("cert", &mapping_name)
                    .await?;
                admin.revoke_accessor(&login.accessor).await?;
                Ok(())
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let took = t.elapsed();
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(took)
    }

    /// The seed's wrapper, per app one after another: `bao` for each Vault operation
    /// (auth list, role write, policy write, issue with a Vault-made key, mapping write),
    /// the files written, `openssl x509` to check the certificate, `bao login -method=cert`.
    async fn step3_baseline(&self) -> Result<Duration> {
        let t = Instant::now();
        for (name, home) in &self.apps {
            let dir = home.join("baseline");
            std::fs::create_dir_all(&dir)?;
            self.bao(&["auth", "list", "-format=json"], None)?;
            self.bao(
                &[
                    "write",
                    &format!("{PKI_MOUNT}/roles/agent-mtls-{name}"),
                    &format!("allowed_domains=agent-{name}.prod.privsec.ch"),
                    "allow_bare_domains=true",
                    "client_flag=true",
                    "server_flag=false",
                    "max_ttl=720h",
                    "ttl=720h",
                ],
                None,
            )?;
            let policy = format!(
                "path \"{PKI_MOUNT}/issue/nginx-{name}\" {{ capabilities = [\"update\"] }}\n"
            );
            self.bao(
                &["policy", "write", &format!("pki-issue-{name}"), "-"],
                Some(&policy),
            )?;
            let out = self.bao(
                &[
                    "write",
                    "-format=json",
                    &format!("{PKI_MOUNT}/issue/agent-mtls-{name}"),
                    &format!("common_name=agent-{name}.prod.privsec.ch"),
                    "ttl=720h",
                ],
                None,
            )?;
            let v: serde_json::Value = serde_json::from_slice(&out)?;
            let field = |k: &str| v["data"][k].as_str().unwrap_or_default().to_owned();
            let crt = dir.join("agent.crt");
            let key = dir.join("agent.key");
            rotate_tests::write_file(&key, field("private_key").as_bytes(), 0o600)?;
            rotate_tests::write_file(&crt, field("certificate").as_bytes(), 0o644)?;
            rotate_tests::write_file(&dir.join("ca.pem"), field("issuing_ca").as_bytes(), 0o644)?;
            self.bao(
                &[
                    "write",
                    &format!("auth/cert/certs/agent-{name}"),
                    &format!("certificate=@{}", dir.join("ca.pem").display()),
                    &format!("allowed_common_names=agent-{name}.prod.privsec.ch"),
                    &format!("token_policies=pki-issue-{name},marker-cert-auth"),
                ],
                None,
            )?;
            run_ok(
                std::process::Command::new("openssl")
                    .args(["x509", "-noout", "-subject", "-enddate", "-in"])
                    .arg(&crt),
            )?;
            self.bao(
                &[
                    "login",
                    "-method=cert",
                    "-no-store",
                    &format!("-client-cert={}", crt.display()),
                    &format!("-client-key={}", key.display()),
                    &format!("name=agent-{name}"),
                ],
                None,
            )?;
        }
        Ok(t.elapsed())
    }

    /// One `bao` process as the admin: its stdout.
    fn bao(&self, args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>> {
        use std::io::Write as _;
        let mut cmd = std::process::Command::new(&self.lab.bao);
        cmd.env_clear()
            .envs(self.lab.bao_env())
            .env("VAULT_TOKEN", self.lab.token())
            .env("HOME", "/nonexistent")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("run bao")?;
        let mut pipe = child.stdin.take().context("bao stdin")?;
        pipe.write_all(stdin.unwrap_or_default().as_bytes())?;
        drop(pipe);
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Step 4 with real agents (after steps 3 and 4 ran once), its floor (the agents'
    /// own: all restarted at once until each has rendered and its post-hook installed the
    /// leaf; stricter than adding step 4's bare Vault requests), its baseline (restart
    /// each, wait for its render, `openssl` checks, one app after another); and steps 3+4
    /// together against the sum of their floors.
    async fn step4_rows(&self, baseline_max: usize) -> Result<Vec<Row>> {
        self.rotate_ok(&["run", "--step", "agents"]).await?;
        self.rotate_ok(&["run", "--step", "leaf"]).await?;
        std::fs::write("/proc/self/clear_refs", "5")?;
        let step3 = self.rotate_ok(&["run", "--step", "agents"]).await?;
        let step4 = self.rotate_ok(&["run", "--step", "leaf"]).await?;
        let rss = crate::peak_rss_kib()? / 1024;
        let floor3 = self.step3_floor().await?;
        let floor4 = self.agents_floor().await?;
        let baseline = if self.apps.len() <= baseline_max {
            Some(self.step4_baseline().await?)
        } else {
            None
        };
        let n = self.apps.len();
        Ok(vec![
            Row {
                n,
                what: "step 4 (`run --step leaf`), real `bao agent`s, gates included".into(),
                rotate: step4,
                baseline,
                floor: Some(floor4),
                rss_mib: Some(rss),
                note: "floor: the agents restarted (all at once or 16 at a time, the faster) until each rendered".into(),
            },
            Row {
                n,
                what: "steps 3+4, real `bao agent`s, gates included".into(),
                rotate: step3 + step4,
                baseline: None,
                floor: Some(floor3 + floor4),
                rss_mib: Some(rss),
                note: "floor: step 3's bare requests + the agents' floor".into(),
            },
        ])
    }

    fn fullchain(&self, name: &str, home: &Path) -> PathBuf {
        home.join(format!("tls/{name}.fullchain.pem"))
    }

    fn restart(&self, name: &str) -> Result<()> {
        run_ok(
            std::process::Command::new(self.lab.paths.dir.join("bin/systemctl")).args([
                "--user",
                "restart",
                &format!("vault-agent-{name}.service"),
            ]),
        )
    }

    /// Waits until the leaf at `path` is no longer `before` (its bytes).
    async fn await_render(path: &Path, before: &[u8], limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        loop {
            if std::fs::read(path).is_ok_and(|now| now != before && !now.is_empty()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < until,
                "no new render at {}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The agents' own floor: the fastest of restarting them all at once and in waves of
    /// `[run] agent_concurrency` (on 2 cores, hundreds at once thrash), each restart
    /// followed by the wait for its render.
    async fn agents_floor(&self) -> Result<Duration> {
        let all = self.agents_in_waves(self.apps.len()).await?;
        let waves = self.agents_in_waves(self.agent_concurrency).await?;
        Ok(all.min(waves))
    }

    async fn agents_in_waves(&self, width: usize) -> Result<Duration> {
        let t = Instant::now();
        let results: Vec<Result<()>> = futures_util::stream::iter(self.apps.iter())
            .map(|(name, home)| async move {
                let path = self.fullchain(name, home);
                let before = std::fs::read(&path).unwrap_or_default();
                let name = name.clone();
                let me = self.lab.paths.dir.join("bin/systemctl");
                tokio::task::spawn_blocking(move || {
                    run_ok(std::process::Command::new(me).args([
                        "--user",
                        "restart",
                        &format!("vault-agent-{name}.service"),
                    ]))
                })
                .await??;
                Self::await_render(&path, &before, Duration::from_secs(180)).await
            })
            .buffer_unordered(width.max(1))
            .collect()
            .await;
        let took = t.elapsed();
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(took)
    }

    async fn step4_baseline(&self) -> Result<Duration> {
        let t = Instant::now();
        for (name, home) in &self.apps {
            let path = self.fullchain(name, home);
            let before = std::fs::read(&path).unwrap_or_default();
            self.restart(name)?;
            Self::await_render(&path, &before, Duration::from_secs(60)).await?;
            run_ok(
                std::process::Command::new("openssl")
                    .args([
                        "x509",
                        "-noout",
                        "-subject",
                        "-issuer",
                        "-checkend",
                        "3600",
                        "-in",
                    ])
                    .arg(&path),
            )?;
            run_ok(
                std::process::Command::new(self.lab.paths.dir.join("bin/systemctl")).args([
                    "--user",
                    "is-active",
                    &format!("vault-agent-{name}.service"),
                ]),
            )?;
        }
        Ok(t.elapsed())
    }

    fn stop_agents(&self) {
        for (name, _) in &self.apps {
            let _ = std::process::Command::new(self.lab.paths.dir.join("bin/systemctl"))
                .args(["--user", "stop", &format!("vault-agent-{name}.service")])
                .status();
        }
    }
}

fn run_ok(cmd: &mut std::process::Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
