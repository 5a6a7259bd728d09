//! A 3-node OpenBao raft cluster on loopback, shaped like a production HA deployment:
//! every node its own mTLS-required listener with its own certificate (the SNI name plus
//! its own name), `retry_join` to its peers with the SNI name and a client certificate,
//! each node unsealed, `pki-prod` and KV mounted once through the leader.

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use vault_client::{ClientConfig, Method, PkiApi, SysApi, VaultClient};
use zeroize::Zeroizing;

use crate::lab::{KV_MOUNT, PKI_MOUNT, SERVER_NAME, bao_binary, spawn_tied};
use crate::pki::INTERMEDIATE_CN;
use crate::pki::{LabCa, write_file};

/// One server of the cluster.
pub struct Node {
    /// `vault-1`, `vault-2`, ...
    pub name: String,
    /// Its own API address, `https://127.0.0.1:<port>`.
    pub addr: String,
    /// Its API port.
    pub port: u16,
    /// Its listener's certificate chain file.
    pub cert: PathBuf,
    /// Its listener's key file.
    pub key: PathBuf,
    /// Its pid file (`signal:<pid file>:HUP` reloads it).
    pub pid_file: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Node {
    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }
}

/// A running cluster. Dropping it stops every node.
pub struct Cluster {
    /// Its directory.
    pub dir: PathBuf,
    /// The nodes, in the order they joined (the first initialised the cluster).
    pub nodes: Vec<Node>,
    /// The lab CA (the PKI mount's issuer is its intermediate).
    pub ca: LabCa,
    /// CA bundle clients trust.
    pub ca_bundle: PathBuf,
    /// Every listener's `tls_client_ca_file`.
    pub client_ca: PathBuf,
    /// Admin client certificate and key.
    pub admin_cert: PathBuf,
    /// See `admin_cert`.
    pub admin_key: PathBuf,
    /// Root token file (0600).
    pub token_file: PathBuf,
    /// The real `bao`.
    pub bao: PathBuf,
    unseal_key: Zeroizing<String>,
    token: Zeroizing<String>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Start `n` nodes in `dir` (wiped first), initialise and unseal the first, let the
    /// others join and unseal them, wait until every node is a raft voter, then mount
    /// `pki-prod` (the lab intermediate) and KV v2.
    pub async fn start(dir: &Path, n: usize) -> Result<Cluster> {
        let mut c = Cluster::create(dir, n)?;
        c.init_first().await?;
        for i in 0..n {
            c.unseal(i).await?;
        }
        c.wait_voters().await?;
        c.mount().await?;
        Ok(c)
    }

    fn create(dir: &Path, n: usize) -> Result<Cluster> {
        let bao = bao_binary()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("ca"))?;
        std::fs::create_dir_all(dir.join("admin"))?;
        let dir = dir.canonicalize()?;
        let ca = LabCa::generate()?;
        let ca_bundle = dir.join("ca/ca.pem");
        let client_ca = dir.join("ca/client-ca.pem");
        write_file(&ca_bundle, ca.bundle_pem().as_bytes(), 0o644)?;
        write_file(&client_ca, ca.bundle_pem().as_bytes(), 0o644)?;
        let day = time::Duration::days(1);
        let admin = ca.leaf("admin.prod.privsec.ch", &[], &[], false, day * 30)?;
        let (admin_cert, admin_key) = (dir.join("admin/admin.crt"), dir.join("admin/admin.key"));
        write_file(&admin_cert, admin.cert_pem.as_bytes(), 0o644)?;
        write_file(&admin_key, admin.key_pem.as_bytes(), 0o600)?;
        // What a node presents to its peers to join (their listeners require a client
        // certificate too).
        let join = ca.leaf("raft-join.prod.privsec.ch", &[], &[], false, day * 365)?;
        let (join_cert, join_key) = (dir.join("ca/join.crt"), dir.join("ca/join.key"));
        write_file(&join_cert, join.cert_pem.as_bytes(), 0o644)?;
        write_file(&join_key, join.key_pem.as_bytes(), 0o600)?;

        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("vault-{}", i + 1);
            let nd = dir.join(&name);
            std::fs::create_dir_all(nd.join("data"))?;
            std::fs::create_dir_all(nd.join("tls"))?;
            let own = format!("{name}.prod.privsec.ch");
            let leaf = ca.leaf(
                SERVER_NAME,
                &[SERVER_NAME, &own],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                true,
                day * 90,
            )?;
            let (cert, key) = (nd.join("tls/tls.crt"), nd.join("tls/tls.key"));
            let chain = format!("{}{}", leaf.cert_pem, ca.intermediate_pem());
            write_file(&cert, chain.as_bytes(), 0o644)?;
            write_file(&key, leaf.key_pem.as_bytes(), 0o600)?;
            let joins: String = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (p, _))| {
                    format!(
                        r#"
  retry_join {{
    leader_api_addr = "https://127.0.0.1:{p}"
    leader_tls_servername = "{SERVER_NAME}"
    leader_ca_cert_file = "{ca}"
    leader_client_cert_file = "{cert}"
    leader_client_key_file = "{key}"
  }}"#,
                        ca = ca_bundle.display(),
                        cert = join_cert.display(),
                        key = join_key.display(),
                    )
                })
                .collect();
            let config = nd.join("bao.hcl");
            let pid_file = nd.join("bao.pid");
            let text = format!(
                r#"# OpenBao cluster node {name} (generated).
ui = false
pid_file = "{pid}"
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"

storage "raft" {{
  path = "{data}"
  node_id = "{name}"
  performance_multiplier = 1{joins}
}}

listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
  tls_client_ca_file = "{client_ca}"
  tls_require_and_verify_client_cert = true
}}
"#,
                pid = pid_file.display(),
                data = nd.join("data").display(),
                cert = cert.display(),
                key = key.display(),
                client_ca = client_ca.display(),
            );
            write_file(&config, text.as_bytes(), 0o644)?;
            nodes.push(Node {
                name,
                addr: format!("https://127.0.0.1:{port}"),
                port: *port,
                cert,
                key,
                pid_file,
                config,
                log: nd.join("bao.log"),
                child: Mutex::new(None),
            });
        }
        let c = Cluster {
            token_file: dir.join("admin/token"),
            dir,
            nodes,
            ca,
            ca_bundle,
            client_ca,
            admin_cert,
            admin_key,
            bao,
            unseal_key: Zeroizing::new(String::new()),
            token: Zeroizing::new(String::new()),
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Start node `i`'s server (sealed, when it was initialised before). It is spawned by
    /// a thread that lives as long as the process: the server dies with the process, not
    /// with the caller's thread.
    pub fn spawn(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&self.bao);
        cmd.arg("server")
            .arg(format!("-config={}", node.config.display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("keeper-{}", node.name))
            .spawn(move || {
                let _ = tx.send(spawn_tied(&mut cmd));
                loop {
                    std::thread::park();
                }
            })?;
        let child = rx
            .recv()
            .context("keeper thread died")?
            .with_context(|| format!("start {}", node.name))?;
        *node.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "{} not listening after 20 s; log:\n{}",
                    node.name,
                    node.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A command that restarts node `i` the way a unit restart with auto-unseal would
    /// (`<dir>/bin/restart-vault-N`, for `restart = "cmd:..."`): the node is stopped,
    /// started and unsealed by a thread of this process (so it stays tied to it), woken
    /// by the request file the script creates and waits on. Each restart is logged to
    /// `<dir>/restarts.log` as `<name> down <ms>` / `<name> up <ms>` (ms since the epoch).
    pub fn restart_command(&'static self, i: usize) -> Result<PathBuf> {
        let node = &self.nodes[i];
        let req = self.dir.join(format!("{}/restart.request", node.name));
        let script = self.dir.join(format!("bin/restart-{}", node.name));
        std::fs::create_dir_all(self.dir.join("bin"))?;
        if script.exists() {
            return Ok(script);
        }
        write_file(
            &script,
            format!(
                "#!/bin/sh\n# Restart {name} (auto-unsealed).\nreq='{req}'\n: > \"$req\"\ni=0\nwhile [ -e \"$req\" ]; do\n  sleep 0.05; i=$((i + 1))\n  [ $i -gt 1200 ] && {{ echo '{name} did not restart' >&2; exit 1; }}\ndone\nexit 0\n",
                name = node.name,
                req = req.display()
            )
            .as_bytes(),
            0o755,
        )?;
        let log = self.dir.join("restarts.log");
        std::thread::Builder::new()
            .name(format!("restarts-{}", node.name))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let ms = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis()
                };
                let note = |what: &str| {
                    use std::io::Write as _;
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                    {
                        let _ = writeln!(f, "{} {what} {}", self.nodes[i].name, ms());
                    }
                };
                loop {
                    if req.exists() {
                        note("down");
                        self.kill(i);
                        let back = self.spawn(i).and_then(|()| rt.block_on(self.unseal(i)));
                        if let Err(e) = back {
                            eprintln!("restart of {} failed: {e:#}", self.nodes[i].name);
                        }
                        note("up");
                        let _ = std::fs::remove_file(&req);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })?;
        Ok(script)
    }

    /// SIGKILL node `i` (it comes back sealed when started again).
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.nodes[i]
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client of node `i` as the admin (with the root token when `token`).
    pub fn client(&self, i: usize, token: bool) -> Result<VaultClient> {
        let mut cfg = ClientConfig::new(&self.nodes[i].addr)?
            .ca_cert(&self.ca_bundle)
            .client_identity(&self.admin_cert, &self.admin_key)
            .tls_server_name(SERVER_NAME);
        if token {
            cfg = cfg.token(&self.token)?;
        }
        Ok(VaultClient::new(&cfg)?)
    }

    /// A `rotate` config for this cluster in `dir`: Vault at `addr` (a node, or the
    /// balancer), step 2 over every node (own address, files, pid file), `apps` run as
    /// root with homes under `dir`.
    pub fn rotate_config(&self, dir: &Path, addr: &str, apps: &[&str]) -> Result<PathBuf> {
        let c = self;
        std::fs::create_dir_all(dir)?;
        let dir = &dir.canonicalize()?;
        let d = |p: &Path| p.display().to_string();
        let mut nodes = String::new();
        for n in &c.nodes {
            nodes.push_str(&format!(
                r#"
[[listener.nodes]]
name = "{name}"
addr = "{addr}"
cert_file = "{cert}"
key_file = "{key}"
reload = "signal:{pid}:HUP"
alt_names = ["{name}.prod.privsec.ch"]
"#,
                name = n.name,
                addr = n.addr,
                cert = d(&n.cert),
                key = d(&n.key),
                pid = d(&n.pid_file),
            ));
        }
        let text = format!(
            r#"env = "cluster"

[vault]
addr = "{addr}"
tls_server_name = "{SERVER_NAME}"
ca_cert = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
token_file = "{token}"

[pki]
mount = "{PKI_MOUNT}"
issuer_name = "{INTERMEDIATE_CN}"

[agents]
domain = "prod.privsec.ch"

[leaf]
kv_mount = "{KV_MOUNT}"
allowed_domains = ["int.privsec.ch", "prod.privsec.ch"]
cn_domain = "int.privsec.ch"
ttl = "24h"
reload_tls_label = ""
render_timeout = "30s"

[commands]
agent = "{bao}"
# The fake systemctl of `rotate_tests::Units::start(dir)` (agents as real processes).
systemctl = "{systemctl}"

[run]
state_dir = "{state}"

[listener]
role = "vault-server"
ip_sans = ["127.0.0.1"]
owner = "root"
reload_timeout = "10s"
{nodes}{apps}"#,
            apps = apps
                .iter()
                .map(|a| {
                    let h = dir.join("home").join(a);
                    let _ = std::fs::create_dir_all(&h);
                    format!(
                        "\n[[apps]]\nname = \"{a}\"\nhome = \"{}\"\nuser = \"root\"\n",
                        d(&h)
                    )
                })
                .collect::<String>(),
            ca = d(&c.ca_bundle),
            cert = d(&c.admin_cert),
            key = d(&c.admin_key),
            token = d(&c.token_file),
            state = d(&dir.join("state")),
            bao = d(&c.bao),
            systemctl = d(&dir.join("bin/systemctl")),
        );
        let path = dir.join("rotate.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The root token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Cluster {
    async fn init_first(&mut self) -> Result<()> {
        let first = self.client(0, false)?;
        let init = first.init(1, 1).await.context("sys/init on vault-1")?;
        let key = init
            .keys
            .first()
            .context("sys/init returned no unseal key")?;
        self.unseal_key = key.clone();
        self.token = init.root_token.clone();
        write_file(&self.token_file, init.root_token.as_bytes(), 0o600)?;
        Ok(())
    }

    /// `pki-prod` with the lab intermediate, and KV v2, through the leader.
    async fn mount(&self) -> Result<()> {
        let leader = self.leader().await.context("no active node")?;
        let admin = self.client(leader, true)?;
        admin
            .enable_mount(PKI_MOUNT, "pki", Default::default())
            .await
            .context("mount pki-prod")?;
        admin
            .request::<serde_json::Value>(
                Method::Post,
                &format!("sys/mounts/{PKI_MOUNT}/tune"),
                Some(json!({"max_lease_ttl": "87600h"})),
                vault_client::Idempotency::Idempotent,
            )
            .await
            .context("tune pki-prod")?;
        admin
            .import_ca_bundle(PKI_MOUNT, &self.ca.import_bundle_pem())
            .await
            .context("import the intermediate into pki-prod")?;
        admin
            .enable_mount(
                KV_MOUNT,
                "kv",
                [("version".to_owned(), "2".to_owned())].into(),
            )
            .await
            .context("mount kv (v2)")?;
        Ok(())
    }

    /// Unseal node `i` with the cluster's key; wait until it answers (active or standby).
    pub async fn unseal(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let anon = self.client(i, false)?;
        let start = Instant::now();
        loop {
            // A joining node accepts the key only once it has joined.
            let _ = anon.unseal(&self.unseal_key).await;
            match anon.seal_status().await {
                Ok(s) if !s.sealed => return Ok(()),
                _ if start.elapsed() > Duration::from_secs(30) => {
                    bail!(
                        "{} still sealed after 30 s; log:\n{}",
                        node.name,
                        node.log_tail()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The index of the active node, as the nodes themselves say (`sys/health` 200).
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if let Ok(c) = self.client(i, false)
                && let Ok(h) = c.health().await
                && h.status == 200
            {
                return Some(i);
            }
        }
        None
    }

    /// Wait until autopilot counts every node as a healthy voter (it promotes a joined
    /// node only after its stabilization time), i.e. the cluster tolerates the loss of
    /// a minority.
    pub async fn wait_voters(&self) -> Result<()> {
        let start = Instant::now();
        let want = (self.nodes.len() as u32 - 1) / 2;
        let mut last = String::new();
        loop {
            if let Some(l) = self.leader().await {
                match self.client(l, true)?.raft_autopilot_state().await {
                    Ok(Some(s))
                        if s.healthy
                            && s.failure_tolerance >= want
                            && s.servers.len() == self.nodes.len()
                            && s.servers.values().all(|v| v.status != "non-voter") =>
                    {
                        return Ok(());
                    }
                    other => last = format!("{other:?}"),
                }
            }
            if start.elapsed() > Duration::from_secs(90) {
                bail!(
                    "the cluster is not {} healthy voters after 90 s (last autopilot state: {last}); logs:\n{}",
                    self.nodes.len(),
                    self.nodes
                        .iter()
                        .map(|n| n.log_tail())
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
