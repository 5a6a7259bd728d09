//! The TOML configuration: the seed's topology, expressed as-is.
//!
//! See `rotate-cli/examples/prod.toml` for the production shape.

pub use crate::topology::kv_policy_name;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vault_client::ClientConfig;

/// A configuration problem, naming the file and the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// TOML's message (with line and column).
        message: String,
    },
    /// A value is invalid.
    #[error("invalid config {}: {setting}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting, e.g. `apps[1].name`.
        setting: String,
        /// Why.
        reason: String,
    },
    /// An app named on the command line is not in the config.
    #[error("unknown app {name:?} (configured: {known})")]
    UnknownApp {
        /// The name given.
        name: String,
        /// The configured names.
        known: String,
    },
    /// The file names programs or `cmd:` reloaders root will run, and someone other than
    /// root could have written it.
    #[error("config {}: {reason}", path.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Who else could have written it, and what to do.
        reason: String,
    },
    /// The command needs a config file and none was given.
    #[error("this command needs --config (or ROTATE_CONFIG): the topology to rotate")]
    Missing,
    /// The Vault client configuration is invalid.
    #[error(transparent)]
    Vault(#[from] vault_client::Error),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Environment name, e.g. `prod` (shown in every report).
    pub env: String,
    /// How to reach Vault.
    pub vault: VaultSection,
    /// The PKI mount and its issuer.
    pub pki: PkiSection,
    /// The admin's client certificate (step 1); absent: step 1 is not run.
    #[serde(default)]
    pub admin: Option<AdminSection>,
    /// The Vault listener's certificate (step 2); absent: step 2 is not run.
    #[serde(default)]
    pub listener: Option<ListenerSection>,
    /// Restarts after the rotations (step 6).
    #[serde(default)]
    pub restarts: Option<RestartsSection>,
    /// The final healthcheck (step 7, `rotate health`).
    #[serde(default)]
    pub health: HealthSection,
    /// Agent login certificates and cert auth mappings (step 3).
    #[serde(default)]
    pub agents: AgentsSection,
    /// App leaf certificates, agents and reloads (step 4).
    #[serde(default)]
    pub leaf: LeafSection,
    /// Programs to run instead of the defaults found on `PATH`.
    #[serde(default)]
    pub commands: CommandsSection,
    /// The apps.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// The proxy app, e.g. `proxyprod`.
    #[serde(default)]
    pub proxy: Option<ProxySection>,
    /// How runs are executed: state directory, concurrency.
    #[serde(default)]
    pub run: RunSection,
    /// The file this was loaded from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[vault]`: unset values fall back to the `VAULT_*` / `BAO_*` environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSection {
    /// Address, e.g. `https://127.0.0.1:22400`.
    pub addr: Option<String>,
    /// TLS server name (SNI), e.g. `vault.prod.privsec.ch`.
    pub tls_server_name: Option<String>,
    /// CA bundle clients use to verify the listener.
    pub ca_cert: Option<PathBuf>,
    /// Admin client certificate.
    pub client_cert: Option<PathBuf>,
    /// Admin client key.
    pub client_key: Option<PathBuf>,
    /// File holding the admin token (else `VAULT_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// How long a request rides out an unreachable or restarting Vault (refused, reset,
    /// no answer, a 5xx or 429 while a new leader is elected) before it fails, e.g.
    /// `"30s"`. Default: 30 s for a cluster (`[[listener.nodes]]`, comfortably above an
    /// election), else a few quick retries (about 1.5 s).
    #[serde(default)]
    pub retry_window: Option<String>,
}

/// `[admin]`: step 1, the admin's client certificate. Its files are `[vault]
/// client_cert` and `client_key` (one directory, owned by root, no symlinks) and, with
/// `write_ca`, `[vault] ca_cert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// PKI mount issuing it (default: `[pki] mount`). A mount whose CA the listener's
    /// `tls_client_ca_file` does not trust is refused by the gate, files untouched.
    pub mount: Option<String>,
    /// PKI role, e.g. `admin-mtls` (client certificates for exactly `common_name`).
    pub role: String,
    /// CN of the admin certificate.
    pub common_name: String,
    /// Certificate TTL.
    pub ttl: String,
    /// Role max TTL.
    pub max_ttl: String,
    /// How the key is made (a CSR by default: the key never leaves the host).
    pub key_mode: KeyMode,
    /// Create the role when missing.
    pub create_role: bool,
    /// Also write `[vault] ca_cert` with the PKI mount's CA chain.
    pub write_ca: bool,
    /// An env file to write: `export VAULT_CLIENT_CERT=... VAULT_CLIENT_KEY=...
    /// VAULT_CACERT=...` (+ `VAULT_ADDR`, `VAULT_TLS_SERVER_NAME` and the `BAO_*` twins).
    pub env_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            mount: None,
            role: "admin-mtls".into(),
            common_name: String::new(),
            ttl: "72h".into(),
            max_ttl: "720h".into(),
            key_mode: KeyMode::default(),
            create_role: true,
            write_ca: true,
            env_file: None,
        }
    }
}

/// `[listener]`: step 2, the Vault server's TLS certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// PKI role, e.g. `vault-server` (server certificates for exactly these names).
    #[serde(default = "default_listener_role")]
    pub role: String,
    /// CN; default `[vault] tls_server_name` (the SNI name clients verify).
    #[serde(default)]
    pub common_name: Option<String>,
    /// More DNS SANs.
    #[serde(default)]
    pub alt_names: Vec<String>,
    /// IP SANs, e.g. `["127.0.0.1"]`.
    #[serde(default)]
    pub ip_sans: Vec<String>,
    /// The server's `tls_cert_file` (certificate + chain), for a single server; a
    /// cluster sets it per node (`[[listener.nodes]]`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The server's `tls_key_file` (0600; same directory as `cert_file`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Owner of both files: the Vault server's user.
    #[serde(default = "default_listener_owner")]
    pub owner: String,
    /// Their group (default: the owner's primary group).
    #[serde(default)]
    pub group: Option<String>,
    /// Certificate TTL.
    #[serde(default = "default_listener_ttl")]
    pub ttl: String,
    /// Role max TTL.
    #[serde(default = "default_listener_ttl")]
    pub max_ttl: String,
    /// How the key is made.
    #[serde(default)]
    pub key_mode: KeyMode,
    /// Create the role when missing.
    #[serde(default = "yes")]
    pub create_role: bool,
    /// How the server loads the new files: `signal:<pid file>:HUP` (OpenBao reloads the
    /// listener certificate and key on SIGHUP), `podman-restart:<container>`, or
    /// `systemd:openbao.service` (`systemctl reload`: its `ExecReload` sends SIGHUP), or
    /// `cmd:...`. For a single server; a cluster sets it per node.
    #[serde(default)]
    pub reload: Option<String>,
    /// How long the gate waits for the new serial to be served.
    #[serde(default = "default_reload_timeout")]
    pub reload_timeout: String,
    /// CA bundles clients use that must verify the new chain before it is installed
    /// (besides `[vault] ca_cert` and each app's `vault/ca/ca.pem`, always checked when
    /// present), e.g. the proxy's chain.
    #[serde(default)]
    pub client_bundles: Vec<PathBuf>,
    /// The port the server process listens on, which a `signal:` reload checks before
    /// signalling the process its pid file names (default: the port of `[vault] addr`; set
    /// it when that address is a port mapping or a load balancer in front of it).
    #[serde(default)]
    pub server_port: Option<u16>,
    /// The server's `tls_client_ca_file`: the issuers its listener should accept client
    /// certificates from. SIGHUP never reloads it, so when set: step 6 (`[restarts]
    /// vault_when = "when-needed"`) restarts Vault if the running listener does not
    /// accept exactly the issuers it lists, and refuses to restart into a file that would
    /// not trust the admin or an agent certificate; `rotate verify` checks it.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The nodes of a raft cluster, each its own server with its own listener
    /// certificate (step 2 rotates them one at a time, each proven at its own address).
    /// Empty: one server, described by `cert_file`, `key_file` and `reload` above.
    #[serde(default)]
    pub nodes: Vec<NodeSection>,
}

/// `[[listener.nodes]]`: one server of a cluster. What it does not set comes from
/// `[listener]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Its name in reports and the journal, e.g. `vault-1`.
    pub name: String,
    /// Its own API address (not the load balancer's), e.g. `https://10.0.0.11:8200`: its
    /// gates handshake *this* server.
    pub addr: String,
    /// Its `tls_cert_file`.
    pub cert_file: PathBuf,
    /// Its `tls_key_file` (same directory).
    pub key_file: PathBuf,
    /// How it reloads (as `[listener] reload`), e.g. `signal:/run/openbao/vault-1.pid:HUP`.
    pub reload: String,
    /// Owner of its files (default `[listener] owner`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Their group (default `[listener] group`).
    #[serde(default)]
    pub group: Option<String>,
    /// DNS SANs besides `[listener]`'s, e.g. `vault-1.prod.privsec.ch`.
    #[serde(default)]
    pub alt_names: Vec<String>,
    /// Its IP SANs (default `[listener] ip_sans`).
    #[serde(default)]
    pub ip_sans: Option<Vec<String>>,
    /// The port its process listens on (default: the port of `addr`).
    #[serde(default)]
    pub server_port: Option<u16>,
    /// How step 6 restarts it when its listener must load its client CA file (a
    /// cluster restarts one node at a time, each back, unsealed and rejoined before the
    /// next), e.g. `systemd-restart:openbao.service` on its host, or `cmd:...`.
    #[serde(default)]
    pub restart: Option<String>,
}

/// One server's listener, resolved: a node of `[[listener.nodes]]` with `[listener]`'s
/// defaults, or the single server `[listener]` describes (named `listener`, reached at
/// `[vault] addr`). The only definition of where a node's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerNode {
    /// `listener` for a single server; the node's name in a cluster.
    pub name: String,
    /// Its own address; `None`: `[vault] addr`.
    pub addr: Option<String>,
    /// Its `tls_cert_file`.
    pub cert_file: PathBuf,
    /// Its `tls_key_file`.
    pub key_file: PathBuf,
    /// How it reloads.
    pub reload: String,
    /// The setting `reload` comes from (`listener.reload`, `listener.nodes[vault-1].reload`).
    pub reload_setting: String,
    /// Owner of its files.
    pub owner: String,
    /// Their group.
    pub group: Option<String>,
    /// Its DNS SANs besides the CN.
    pub alt_names: Vec<String>,
    /// Its IP SANs.
    pub ip_sans: Vec<String>,
    /// The port its process listens on, when not its address's.
    pub server_port: Option<u16>,
    /// How step 6 restarts it (a cluster's node; a single server uses `[restarts] vault`).
    pub restart: Option<String>,
}

impl ListenerSection {
    /// Its servers: every node, or the one server its own fields describe.
    pub fn servers(&self) -> Vec<ListenerNode> {
        if self.nodes.is_empty() {
            return vec![ListenerNode {
                name: "listener".into(),
                addr: None,
                cert_file: self.cert_file.clone().unwrap_or_default(),
                key_file: self.key_file.clone().unwrap_or_default(),
                reload: self.reload.clone().unwrap_or_default(),
                reload_setting: "listener.reload".into(),
                owner: self.owner.clone(),
                group: self.group.clone(),
                alt_names: self.alt_names.clone(),
                ip_sans: self.ip_sans.clone(),
                server_port: self.server_port,
                restart: None,
            }];
        }
        self.nodes
            .iter()
            .map(|n| {
                let mut alt_names = self.alt_names.clone();
                alt_names.extend(
                    n.alt_names
                        .iter()
                        .filter(|a| !self.alt_names.contains(a))
                        .cloned(),
                );
                ListenerNode {
                    name: n.name.clone(),
                    addr: Some(n.addr.clone()),
                    cert_file: n.cert_file.clone(),
                    key_file: n.key_file.clone(),
                    reload: n.reload.clone(),
                    reload_setting: format!("listener.nodes[{}].reload", n.name),
                    owner: n.owner.clone().unwrap_or_else(|| self.owner.clone()),
                    group: n.group.clone().or_else(|| self.group.clone()),
                    alt_names,
                    ip_sans: n.ip_sans.clone().unwrap_or_else(|| self.ip_sans.clone()),
                    server_port: n.server_port,
                    restart: n.restart.clone(),
                }
            })
            .collect()
    }
}

fn default_listener_role() -> String {
    "vault-server".into()
}
fn default_listener_owner() -> String {
    "root".into()
}
fn default_listener_ttl() -> String {
    "2160h".into()
}
fn default_reload_timeout() -> String {
    "15s".into()
}
fn yes() -> bool {
    true
}

/// `[restarts]`: step 6, the proxy stack, then the Vault unit or container.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartsSection {
    /// The proxy stack, restarted in this order (`podman-restart:proxyprod`, ...).
    #[serde(default)]
    pub proxy: Vec<String>,
    /// How to restart Vault (`systemd-restart:openbao.service`, `podman-restart:vault`,
    /// `cmd:...`).
    /// Needed when something SIGHUP does not reload changed (its `tls_client_ca_file`).
    #[serde(default)]
    pub vault: Option<String>,
    /// When step 6 restarts Vault: `when-needed` (the default: only when the running
    /// listener has not loaded `[listener] client_ca_file`; a listener certificate is
    /// reloaded by SIGHUP in step 2), `always`, or `never`.
    #[serde(default = "default_vault_when")]
    pub vault_when: VaultWhen,
}

/// `[restarts] vault_when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VaultWhen {
    /// When the running listener has not loaded `[listener] client_ca_file`.
    WhenNeeded,
    /// On every run that restarts.
    Always,
    /// Never.
    Never,
}

fn default_vault_when() -> VaultWhen {
    VaultWhen::WhenNeeded
}

/// `[health]`: step 7 and `rotate health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Healthy checks in a row required (each a new TLS connection + `sys/seal-status`).
    pub consecutive: u32,
    /// How long to keep retrying through a restart window.
    pub window: String,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            consecutive: 3,
            window: "60s".into(),
        }
    }
}

/// `[run]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// State directory (journal, lock); default `/var/lib/rotate/<env>`. One run at a
    /// time per state directory.
    pub state_dir: Option<PathBuf>,
    /// How many apps a step works on at once (reports keep config order).
    pub concurrency: usize,
    /// How many apps step 4 works on at once: it mostly waits on the agents (restart,
    /// render, post-hook, login), so its bound is what the agents and Vault can take at
    /// once, not the cores. Default 16.
    pub agent_concurrency: usize,
    /// Every run is `--if-due` (a scheduled renewer's config).
    pub if_due: bool,
    /// `--if-due` renews a certificate once less than this share of its lifetime is left.
    pub renew_share: f64,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            state_dir: None,
            concurrency: 4,
            agent_concurrency: 16,
            if_due: false,
            renew_share: 1.0 / 3.0,
        }
    }
}

/// `[pki]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiSection {
    /// Mount, e.g. `pki-prod`.
    pub mount: String,
    /// Expected issuer common name, e.g. `PrivSec Intermediate CA (prod)`.
    pub issuer_name: String,
}

/// How agent keys are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMode {
    /// Generate the key here (ECDSA P-256) and send a CSR to `pki/sign`: the key never
    /// leaves the host.
    #[default]
    CsrEcdsaP256,
    /// Like `csr-ecdsa-p256` with RSA 2048.
    CsrRsa2048,
    /// Let Vault generate the key (`pki/issue`).
    Vault,
}

/// `[agents]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// Domain of agent CNs: `agent-<app>.<domain>`.
    pub domain: String,
    /// Cert auth mount path (`auth/<mount>`).
    pub cert_auth_mount: String,
    /// Policy attached to every agent mapping besides `pki-issue-<app>`.
    pub marker_policy: String,
    /// Agent certificate TTL.
    pub ttl: String,
    /// Role max TTL.
    pub max_ttl: String,
    /// Token TTL of the mapping, seconds.
    pub token_ttl: u64,
    /// How keys are made.
    pub key_mode: KeyMode,
    /// Create missing PKI roles (else a missing role is an error).
    pub create_roles: bool,
    /// A mapping with constraints rotate does not manage (`allowed_organizational_units`,
    /// `token_bound_cidrs`, `required_extensions`, ...) is refused with the list; with
    /// `true` they are reset to their defaults (reported as drift).
    pub converge_unmanaged: bool,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            domain: String::new(),
            cert_auth_mount: "cert".into(),
            marker_policy: "marker-cert-auth".into(),
            ttl: "720h".into(),
            max_ttl: "720h".into(),
            token_ttl: 3600,
            key_mode: KeyMode::default(),
            create_roles: true,
            converge_unmanaged: false,
        }
    }
}

/// `[leaf]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeafSection {
    /// With `allow_subdomains`: the domains whose every subdomain `nginx-<app>` may issue
    /// for (the seed's broad form). Otherwise unused.
    pub allowed_domains: Vec<String>,
    /// The seed's broad role: any subdomain of `allowed_domains`, so any app's agent can
    /// mint a certificate for another app or for Vault's own name. Off by default (the
    /// role allows exactly `<app>.<cn_domain>`); `plan` warns when it is on.
    pub allow_subdomains: bool,
    /// Leaf CN: `<app>.<cn_domain>`.
    pub cn_domain: String,
    /// Leaf TTL the agent requests.
    pub ttl: String,
    /// Role max TTL.
    pub max_ttl: String,
    /// Gate: the leaf must have at least this much validity left.
    pub min_remaining: String,
    /// Gate: the leaf's total lifetime must not exceed this.
    pub max_lifetime: String,
    /// Policies removed from the agent mapping (e.g. a leftover `debug-policy`).
    pub remove_policies: Vec<String>,
    /// KV mount the agent may read (`--with-kv-access`).
    pub kv_mount: String,
    /// Attach `secret-agent-<app>-policy` (read `kv/data/<app>`, `kv/metadata/<app>`).
    pub kv_access: bool,
    /// Create `kv/<app>` if missing (never overwrite).
    pub kv_seed: bool,
    /// Containers with this label get SIGHUP after a render (`RELOAD_TLS_LABEL`); empty = none.
    pub reload_tls_label: String,
    /// How the post-hook reloads the proxy (`PROXY_RELOAD`, e.g. `podman:proxyprod`); empty = none.
    pub proxy_reload: String,
    /// How long to wait for the agent to render the new leaf after its restart.
    pub render_timeout: String,
    /// Time limit of each reload/restart command.
    pub command_timeout: String,
    /// After an undo restarts an agent on its previous config: how long it must keep
    /// running to count as running.
    pub settle: String,
}

impl Default for LeafSection {
    fn default() -> Self {
        LeafSection {
            allowed_domains: Vec::new(),
            allow_subdomains: false,
            cn_domain: String::new(),
            ttl: "24h".into(),
            max_ttl: "72h".into(),
            min_remaining: "1h".into(),
            max_lifetime: "72h".into(),
            remove_policies: vec!["debug-policy".into()],
            kv_mount: "kv".into(),
            kv_access: false,
            kv_seed: false,
            reload_tls_label: "tls=true".into(),
            proxy_reload: String::new(),
            render_timeout: "60s".into(),
            command_timeout: "30s".into(),
            settle: "5s".into(),
        }
    }
}

/// `[commands]`: program paths, e.g. `systemctl = "/usr/bin/systemctl"`,
/// `agent = "/usr/bin/vault"` (the agent binary whose version is compared with the server's).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CommandsSection {
    /// The Vault/OpenBao agent binary (`vault` or `bao`).
    pub agent: String,
    /// Overrides by program name (`systemctl`, `podman`, `runuser`, ...).
    #[serde(flatten)]
    pub overrides: std::collections::BTreeMap<String, String>,
}

impl Default for CommandsSection {
    fn default() -> Self {
        CommandsSection {
            agent: "vault".into(),
            overrides: Default::default(),
        }
    }
}

/// Programs `[commands]` may point elsewhere (besides `agent`).
pub(crate) const OVERRIDABLE: &[&str] = &["systemctl", "podman", "runuser"];

/// `[[apps]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App name, e.g. `ncprd1`.
    pub name: String,
    /// Home directory, e.g. `/home/ncprd1`.
    pub home: PathBuf,
    /// Owner of the app's files, and whose `systemctl --user` manager runs its agent;
    /// defaults to the app name (the seed's layout).
    #[serde(default)]
    pub user: Option<String>,
    /// Group of the app's files; defaults to `user`.
    #[serde(default)]
    pub group: Option<String>,
    /// User systemd unit of the agent; default `vault-agent-<app>.service`.
    #[serde(default)]
    pub unit: Option<String>,
}

impl AppConfig {
    /// The agent's user unit.
    pub fn unit(&self) -> String {
        self.unit
            .clone()
            .unwrap_or_else(|| format!("vault-agent-{}.service", self.name))
    }
    /// The user owning the app's files: `user`, defaulting to the app name.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.name)
    }
    /// The group, defaulting to the user's primary group.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// `[proxy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Proxy app name, e.g. `proxyprod`.
    pub name: String,
    /// The proxy's home (the tree its trust material lives in); needed for step 5.
    #[serde(default)]
    pub home: Option<PathBuf>,
    /// Its user (default: `name`): owner of the files written there.
    #[serde(default)]
    pub user: Option<String>,
    /// The CA bundle the proxy uses to verify Vault and the apps, relative to `home`,
    /// e.g. `tls/vault-ca.pem`. With it, step 5 (proxy CA chain) runs.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// How the proxy picks the bundle up, e.g. `podman:proxyprod` (the write-up's
    /// `PROXY_RELOAD`); empty: no reload (step 6 may restart it).
    #[serde(default)]
    pub reload: String,
    /// The proxy's client certificate, relative to `home`: what it presents upstream,
    /// e.g. nginx's `proxy_ssl_certificate` towards Vault's mTLS listener. With
    /// `client_key`, step 5 issues it (and the gate proves the listener accepts it).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key, relative to `home` (0600, owned by the proxy user).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// PKI role issuing it (default `proxy-mtls-<name>`: client certificates for exactly
    /// `client_cn`).
    #[serde(default)]
    pub client_role: Option<String>,
    /// Its CN (default `proxy-<name>.<agents.domain>`).
    #[serde(default)]
    pub client_cn: Option<String>,
    /// Its TTL (and the role's max TTL).
    #[serde(default = "default_proxy_client_ttl")]
    pub client_ttl: String,
    /// An address of the proxy that forwards `/v1/` to Vault, e.g.
    /// `https://127.0.0.1:8443`: the gate asks `sys/seal-status` through it until Vault
    /// answers (proving the reloaded proxy verifies Vault and Vault accepts the proxy).
    #[serde(default)]
    pub probe: Option<String>,
    /// The name the probe verifies the proxy as (and sends as SNI).
    #[serde(default)]
    pub probe_server_name: Option<String>,
    /// The CA bundle the probe verifies the proxy with (default: `[vault] ca_cert`).
    #[serde(default)]
    pub probe_ca: Option<PathBuf>,
    /// How long the gate keeps probing after the reload.
    #[serde(default = "default_reload_timeout")]
    pub probe_timeout: String,
    /// How the proxy verifies with its bundle: `openssl` (the default: nginx, HAProxy;
    /// the chain must end at a self-signed root in the bundle) or `go` (any certificate
    /// of the bundle is an anchor).
    #[serde(default)]
    pub trust: ProxyTrust,
}

/// `[proxy] trust`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyTrust {
    /// OpenSSL's default verification.
    #[default]
    Openssl,
    /// Go's.
    Go,
}

impl ProxyTrust {
    /// As pki-ops names it.
    pub fn model(self) -> pki_ops::TrustModel {
        match self {
            ProxyTrust::Openssl => pki_ops::TrustModel::SelfSignedRoot,
            ProxyTrust::Go => pki_ops::TrustModel::AnyCertificate,
        }
    }
}

fn default_proxy_client_ttl() -> String {
    "720h".into()
}

/// The proxy's client identity (`[proxy] client_cert` + `client_key`), resolved.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// Certificate, relative to the proxy's home.
    pub cert: PathBuf,
    /// Key, relative to the proxy's home.
    pub key: PathBuf,
    /// PKI role.
    pub role: String,
    /// CN.
    pub cn: String,
}

impl ProxySection {
    /// Its user.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.name)
    }

    /// Its client identity, when configured; `domain` is `[agents] domain`.
    pub fn identity(&self, domain: &str) -> Option<ProxyIdentity> {
        Some(ProxyIdentity {
            cert: self.client_cert.clone()?,
            key: self.client_key.clone()?,
            role: self
                .client_role
                .clone()
                .unwrap_or_else(|| format!("proxy-mtls-{}", self.name)),
            cn: self
                .client_cn
                .clone()
                .unwrap_or_else(|| format!("proxy-{}.{domain}", self.name)),
        })
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Config::parse(&text, path)?;
        cfg.check_trusted_source()?;
        Ok(cfg)
    }

    /// The config decides what root runs, where it writes and whom it sends the admin
    /// token to: it and every directory above it must be written by nobody but root (or
    /// the user running rotate, when that is not root).
    fn check_trusted_source(&self) -> Result<(), ConfigError> {
        let path = std::path::absolute(&self.source).unwrap_or_else(|_| self.source.clone());
        let me = nix::unistd::geteuid().as_raw();
        hooks::check_trusted(&path, (me != 0).then_some(me)).map_err(|e| {
            ConfigError::Untrusted {
                path: self.source.clone(),
                reason: format!(
                    "it decides what root runs and where the admin token goes, so {e}; `chown root` it and `chmod go-w` it and its directories"
                ),
            }
        })
    }

    /// Every reloader the config names, with its setting.
    pub(crate) fn reloaders(
        &self,
    ) -> impl Iterator<Item = (String, Result<hooks::Reloader, hooks::Error>)> + '_ {
        let mut v: Vec<(String, String)> = Vec::new();
        for n in self.listener.iter().flat_map(ListenerSection::servers) {
            if let Some(r) = &n.restart {
                v.push((format!("listener.nodes[{}].restart", n.name), r.clone()));
            }
            v.push((n.reload_setting, n.reload));
        }
        if let Some(p) = self.proxy.as_ref().filter(|p| !p.reload.is_empty()) {
            v.push(("proxy.reload".into(), p.reload.clone()));
        }
        if let Some(r) = &self.restarts {
            for (i, spec) in r.proxy.iter().enumerate() {
                v.push((format!("restarts.proxy[{i}]"), spec.clone()));
            }
            if let Some(vault) = &r.vault {
                v.push(("restarts.vault".into(), vault.clone()));
            }
        }
        v.into_iter().map(|(k, s)| {
            let parsed = s.parse();
            (k, parsed)
        })
    }

    /// Parse and validate `text` (from `path`, for messages; relative paths in the file
    /// are resolved against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.source = path.to_owned();
        // Relative paths in the file are relative to its directory, made absolute here (a
        // relative `--config` included), so nothing depends on the working directory.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = absolute.parent().unwrap_or(Path::new("/")).to_owned();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut cfg.vault.ca_cert,
            &mut cfg.vault.client_cert,
            &mut cfg.vault.client_key,
            &mut cfg.vault.token_file,
            &mut cfg.run.state_dir,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        if let Some(a) = &mut cfg.admin
            && let Some(p) = &mut a.env_file
        {
            abs(p);
        }
        if let Some(l) = &mut cfg.listener {
            for f in [&mut l.cert_file, &mut l.key_file].into_iter().flatten() {
                abs(f);
            }
            for n in &mut l.nodes {
                abs(&mut n.cert_file);
                abs(&mut n.key_file);
            }
            if let Some(f) = &mut l.client_ca_file {
                abs(f);
            }
            for b in &mut l.client_bundles {
                abs(b);
            }
        }
        for app in &mut cfg.apps {
            abs(&mut app.home);
        }
        if let Some(h) = cfg.proxy.as_mut().and_then(|p| p.home.as_mut()) {
            abs(h);
        }
        cfg.complete();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fills what follows from `[agents] domain` when it is not set: `[leaf] cn_domain`
    /// (the domain), `[leaf] allowed_domains` (the CN domain), `[admin] common_name`
    /// (`admin.<domain>`). No name of anyone's deployment is a default.
    pub fn complete(&mut self) {
        let domain = self.agents.domain.clone();
        if self.leaf.cn_domain.is_empty() {
            self.leaf.cn_domain.clone_from(&domain);
        }
        if self.leaf.allowed_domains.is_empty() && !self.leaf.cn_domain.is_empty() {
            self.leaf.allowed_domains = vec![self.leaf.cn_domain.clone()];
        }
        if let Some(a) = &mut self.admin
            && a.common_name.is_empty()
            && !domain.is_empty()
        {
            a.common_name = format!("admin.{domain}");
        }
    }

    fn invalid(&self, setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// Every check [`Config::parse`] makes, for a config built in code: names, durations,
    /// paths (homes one inside another, files inside a tenant's tree), sections that
    /// belong together. A bad duration is an error here, never silently 0 s.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.agents.domain.is_empty() && (!self.apps.is_empty() || self.proxy.is_some()) {
            return Err(self.invalid(
                "agents.domain",
                "not set: agents log in as agent-<app>.<domain> (and the leaf and admin names follow from it unless set); e.g. domain = \"prod.example.com\"",
            ));
        }
        if self
            .admin
            .as_ref()
            .is_some_and(|a| a.common_name.is_empty())
        {
            return Err(self.invalid(
                "admin.common_name",
                "not set (nor [agents] domain, which would give admin.<domain>)",
            ));
        }
        self.validate_names()?;
        self.check_aliases()?;
        if !name_ok(&self.pki.mount) {
            return Err(self.invalid(
                "pki.mount",
                format!("{:?} is not a mount name", self.pki.mount),
            ));
        }
        self.validate_durations()?;
        self.validate_tls_steps()?;
        self.validate_lifetimes()?;
        self.validate_programs()?;
        if !name_ok(&self.agents.cert_auth_mount) {
            return Err(self.invalid("agents.cert_auth_mount", "not a mount name"));
        }
        self.validate_run()?;
        self.validate_apps()?;
        self.validate_common_names()
    }

    /// `[leaf]` and `[agents]`: every duration parses.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        for (setting, v) in [
            ("leaf.ttl", &self.leaf.ttl),
            ("leaf.max_ttl", &self.leaf.max_ttl),
            ("leaf.min_remaining", &self.leaf.min_remaining),
            ("leaf.max_lifetime", &self.leaf.max_lifetime),
            ("leaf.render_timeout", &self.leaf.render_timeout),
            ("leaf.command_timeout", &self.leaf.command_timeout),
            ("leaf.settle", &self.leaf.settle),
            ("agents.ttl", &self.agents.ttl),
            ("agents.max_ttl", &self.agents.max_ttl),
        ] {
            if pki_ops::parse_duration_secs(v).is_none() {
                return Err(self.invalid(
                    setting,
                    format!("{v:?} is not a duration (e.g. 24h, 30m, 90s)"),
                ));
            }
        }
        Ok(())
    }

    /// `[commands]` overrides only known programs; `[leaf] proxy_reload` is a reloader
    /// the app user can run.
    fn validate_programs(&self) -> Result<(), ConfigError> {
        for name in self.commands.overrides.keys() {
            if !OVERRIDABLE.contains(&name.as_str()) {
                return Err(self.invalid(
                    format!("commands.{name}"),
                    format!("unknown program; one of: agent, {}", OVERRIDABLE.join(", ")),
                ));
            }
        }
        if !self.leaf.proxy_reload.is_empty() {
            match self.leaf.proxy_reload.parse::<hooks::Reloader>() {
                Err(e) => return Err(self.invalid("leaf.proxy_reload", e.to_string())),
                Ok(hooks::Reloader::Systemd { .. }) => {
                    return Err(self.invalid(
                        "leaf.proxy_reload",
                        "the post-hook runs as the app user, which cannot manage a system unit: use systemd-user:, or restart it in [restarts] proxy",
                    ));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// `[run]`: a renewal share strictly between 0 and 1, a concurrency of at least 1.
    fn validate_run(&self) -> Result<(), ConfigError> {
        if !(self.run.renew_share > 0.0 && self.run.renew_share < 1.0) {
            return Err(self.invalid(
                "run.renew_share",
                format!(
                    "{} must be between 0 and 1 (e.g. 0.33)",
                    self.run.renew_share
                ),
            ));
        }
        if self.run.concurrency == 0 {
            return Err(self.invalid("run.concurrency", "must be at least 1"));
        }
        if self.run.agent_concurrency == 0 {
            return Err(self.invalid("run.agent_concurrency", "must be at least 1"));
        }
        Ok(())
    }

    /// `[[apps]]`: a safe home of its own, a plain user name, a plain name that appears
    /// once.
    fn validate_apps(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut homes = std::collections::BTreeMap::new();
        for (i, app) in self.apps.iter().enumerate() {
            hooks::check_safe_path("home", &app.home)
                .map_err(|e| self.invalid(format!("apps[{i}].home"), e.to_string()))?;
            if let Some(other) = homes.insert(app.home.clone(), &app.name) {
                return Err(self.invalid(
                    format!("apps[{i}].home"),
                    format!(
                        "{} is also the home of app {other:?}: each app needs its own",
                        app.home.display()
                    ),
                ));
            }
            if let Some(u) = &app.user
                && !name_ok(u)
            {
                return Err(self.invalid(
                    format!("apps[{i}].user"),
                    format!("{u:?} is not a user name"),
                ));
            }
            if !name_ok(&app.name) {
                return Err(self.invalid(
                    format!("apps[{i}].name"),
                    format!("{:?}: use letters, digits, '-' or '_'", app.name),
                ));
            }
            if !seen.insert(&app.name) {
                return Err(self.invalid(
                    format!("apps[{i}].name"),
                    format!("{:?} appears twice", app.name),
                ));
            }
        }
        Ok(())
    }

    /// Every name that becomes part of a Vault API path or of a file or unit name, with
    /// one validator ([`vault_client::check_name`]) and an error naming the setting.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let mut names: Vec<(String, &str)> = vec![
            ("env".into(), &self.env),
            ("pki.mount".into(), &self.pki.mount),
            (
                "agents.cert_auth_mount".into(),
                &self.agents.cert_auth_mount,
            ),
            ("agents.marker_policy".into(), &self.agents.marker_policy),
            ("leaf.kv_mount".into(), &self.leaf.kv_mount),
        ];
        for (i, p) in self.leaf.remove_policies.iter().enumerate() {
            names.push((format!("leaf.remove_policies[{i}]"), p));
        }
        if let Some(a) = &self.admin {
            names.push(("admin.role".into(), &a.role));
        }
        if let Some(l) = &self.listener {
            names.push(("listener.role".into(), &l.role));
        }
        if let Some(p) = &self.proxy {
            names.push(("proxy.name".into(), &p.name));
            if let Some(r) = &p.client_role {
                names.push(("proxy.client_role".into(), r));
            }
        }
        for (i, a) in self.apps.iter().enumerate() {
            names.push((format!("apps[{i}].name"), &a.name));
        }
        for (setting, value) in names {
            vault_client::check_name(value).map_err(|reason| self.invalid(setting, reason))?;
        }
        // Mount paths may nest (`team/kv`) and carry slashes at their ends (`kv/`).
        let mut mounts: Vec<(&str, &str)> = vec![
            ("pki.mount", &self.pki.mount),
            ("agents.cert_auth_mount", &self.agents.cert_auth_mount),
            ("leaf.kv_mount", &self.leaf.kv_mount),
        ];
        if let Some(m) = self.admin.as_ref().and_then(|a| a.mount.as_deref()) {
            mounts.push(("admin.mount", m));
        }
        for (setting, value) in mounts {
            vault_client::check_mount(value).map_err(|reason| self.invalid(setting, reason))?;
        }
        Ok(())
    }

    /// Every file the run writes, or reads as a secret, is its own file: two settings
    /// naming one file (by path, symlinks resolved, or by device and inode when it exists)
    /// would have one step overwrite another's secret (e.g. the env file over the token).
    /// And nothing root keeps lies inside a tree an app or the proxy owns, nor one such
    /// tree inside another: those users can swap anything there.
    fn check_aliases(&self) -> Result<(), ConfigError> {
        let mut root_files: Vec<(String, &Path)> = Vec::new();
        let v = &self.vault;
        for (setting, p) in [
            ("vault.token_file", &v.token_file),
            ("vault.client_cert", &v.client_cert),
            ("vault.client_key", &v.client_key),
            ("vault.ca_cert", &v.ca_cert),
        ] {
            if let Some(p) = p {
                root_files.push((setting.into(), p));
            }
        }
        if let Some(f) = self.admin.as_ref().and_then(|a| a.env_file.as_deref()) {
            root_files.push(("admin.env_file".into(), f));
        }
        if let Some(l) = &self.listener {
            for (setting, f) in [
                ("listener.cert_file", &l.cert_file),
                ("listener.key_file", &l.key_file),
            ] {
                if let Some(f) = f {
                    root_files.push((setting.into(), f));
                }
            }
            for n in &l.nodes {
                root_files.push((
                    format!("listener.nodes[{}].cert_file", n.name),
                    &n.cert_file,
                ));
                root_files.push((format!("listener.nodes[{}].key_file", n.name), &n.key_file));
            }
            if let Some(f) = &l.client_ca_file {
                root_files.push(("listener.client_ca_file".into(), f));
            }
        }
        let mut files: Vec<(String, PathBuf, Option<FileId>)> = root_files
            .iter()
            .map(|(s, p)| (s.clone(), resolve(p), identity(p)))
            .collect();
        if let Some(p) = &self.proxy
            && let Some(home) = &p.home
        {
            for (setting, rel) in [
                ("proxy.ca_bundle", &p.ca_bundle),
                ("proxy.client_cert", &p.client_cert),
                ("proxy.client_key", &p.client_key),
            ] {
                if let Some(rel) = rel {
                    files.push((setting.into(), normalize(&home.join(rel)), None));
                }
            }
        }
        for (i, (a, pa, ia)) in files.iter().enumerate() {
            for (b, pb, ib) in &files[..i] {
                let same_inode = matches!((ia, ib), (Some(x), Some(y)) if x == y);
                if pa == pb || same_inode {
                    return Err(self.invalid(
                        a.clone(),
                        format!(
                            "names the same file as {b} ({}): each must be its own file",
                            pa.display()
                        ),
                    ));
                }
            }
        }
        // Trees other users own: app homes and the proxy's home.
        let mut trees: Vec<(String, PathBuf)> = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("apps[{i}].home"), resolve(&a.home)))
            .collect();
        if let Some(h) = self.proxy.as_ref().and_then(|p| p.home.as_ref()) {
            trees.push(("proxy.home".into(), resolve(h)));
        }
        // In component order a tree's subtrees come right after it: if any two are one
        // inside the other, two neighbours are (n log n, for thousands of apps). The
        // error names the later one in the config.
        let mut order: Vec<usize> = (0..trees.len()).collect();
        order.sort_by(|&x, &y| trees[x].1.cmp(&trees[y].1).then(x.cmp(&y)));
        for pair in order.windows(2) {
            if trees[pair[1]].1.starts_with(&trees[pair[0]].1) {
                let (first, later) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                let ((a, ta), (b, tb)) = (&trees[later], &trees[first]);
                return Err(self.invalid(
                    a.clone(),
                    format!(
                        "{} and {b} ({}) are one inside the other: each app needs its own tree",
                        ta.display(),
                        tb.display()
                    ),
                ));
            }
        }
        let mut kept: Vec<(String, PathBuf)> = root_files
            .iter()
            .map(|(s, p)| (s.clone(), resolve(p)))
            .collect();
        kept.push(("run.state_dir".into(), resolve(&self.state_dir())));
        for (setting, p) in &kept {
            if let Some((tree, t)) = trees.iter().find(|(_, t)| p.starts_with(t)) {
                return Err(self.invalid(
                    setting.clone(),
                    format!(
                        "{} lies inside {tree} ({}), which another user owns and can swap: keep it in a directory only root can write",
                        p.display(),
                        t.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What is accepted at load must work at run time: waits longer than nothing,
    /// certificates that live long enough for their gates, TTLs within their maximum, a
    /// listener certificate for the name clients verify.
    fn validate_lifetimes(&self) -> Result<(), ConfigError> {
        let secs = |v: &str| pki_ops::parse_duration_secs(v).unwrap_or(0);
        let mut waits: Vec<(&str, &str)> = vec![
            ("leaf.render_timeout", &self.leaf.render_timeout),
            ("leaf.command_timeout", &self.leaf.command_timeout),
            ("health.window", &self.health.window),
        ];
        if let Some(l) = &self.listener {
            waits.push(("listener.reload_timeout", &l.reload_timeout));
        }
        if let Some(w) = &self.vault.retry_window {
            waits.push(("vault.retry_window", w));
        }
        if let Some(p) = &self.proxy {
            waits.push(("proxy.probe_timeout", &p.probe_timeout));
        }
        for (setting, v) in waits {
            if secs(v) <= 0 {
                return Err(self.invalid(setting, format!("{v:?}: must be longer than 0s")));
            }
        }
        // A certificate must outlive its own gate (Vault backdates notBefore 30 s).
        const MIN_TTL: i64 = 300;
        type Ttl<'s> = (&'s str, &'s str, Option<(&'s str, &'s str)>);
        let mut ttls: Vec<Ttl<'_>> = vec![
            (
                "agents.ttl",
                &self.agents.ttl,
                Some(("agents.max_ttl", &self.agents.max_ttl)),
            ),
            (
                "leaf.ttl",
                &self.leaf.ttl,
                Some(("leaf.max_ttl", &self.leaf.max_ttl)),
            ),
        ];
        if let Some(a) = &self.admin {
            ttls.push(("admin.ttl", &a.ttl, Some(("admin.max_ttl", &a.max_ttl))));
        }
        if let Some(l) = &self.listener {
            ttls.push((
                "listener.ttl",
                &l.ttl,
                Some(("listener.max_ttl", &l.max_ttl)),
            ));
        }
        if let Some(p) = &self.proxy {
            ttls.push(("proxy.client_ttl", &p.client_ttl, None));
        }
        for (setting, ttl, max) in ttls {
            if secs(ttl) < MIN_TTL {
                return Err(self.invalid(
                    setting,
                    format!("{ttl:?} is shorter than 5m: the certificate would expire before its gate proves it"),
                ));
            }
            if let Some((max_setting, max)) = max
                && secs(ttl) > secs(max)
            {
                return Err(self.invalid(
                    setting,
                    format!("{ttl:?} is longer than {max_setting} {max:?}: Vault would cut it"),
                ));
            }
        }
        let leaf = &self.leaf;
        if secs(&leaf.ttl) <= secs(&leaf.min_remaining) {
            return Err(self.invalid(
                "leaf.ttl",
                format!(
                    "{:?} is not longer than leaf.min_remaining {:?}: every new leaf would fail its gate",
                    leaf.ttl, leaf.min_remaining
                ),
            ));
        }
        if secs(&leaf.ttl) > secs(&leaf.max_lifetime) {
            return Err(self.invalid(
                "leaf.ttl",
                format!(
                    "{:?} is longer than leaf.max_lifetime {:?}: every new leaf would fail its gate",
                    leaf.ttl, leaf.max_lifetime
                ),
            ));
        }
        if let (Some(l), Some(sni)) = (&self.listener, &self.vault.tls_server_name)
            && let Some(cn) = &l.common_name
            && !cn.eq_ignore_ascii_case(sni)
            && !l.alt_names.iter().any(|a| a.eq_ignore_ascii_case(sni))
        {
            return Err(self.invalid(
                "listener.common_name",
                format!(
                    "{cn:?} is not [vault] tls_server_name {sni:?}, which clients verify the listener as: make it the CN or add it to alt_names"
                ),
            ));
        }
        Ok(())
    }

    /// Every certificate rotate issues has a common name no other has: an undo revokes
    /// what a run issued by common name, and must never reach another's (an app called
    /// `agent-x` would have the leaf name of app `x`'s agent when both domains agree).
    fn validate_common_names(&self) -> Result<(), ConfigError> {
        let mut names: Vec<(String, String)> = Vec::new();
        if let Some(a) = &self.admin {
            names.push((
                "admin.common_name".into(),
                a.common_name.to_ascii_lowercase(),
            ));
        }
        if let Some(cn) = self.listener_cn() {
            names.push(("listener.common_name".into(), cn.to_ascii_lowercase()));
        }
        for (i, app) in self.apps.iter().enumerate() {
            names.push((
                format!("apps[{i}] (agent certificate)"),
                format!("agent-{}.{}", app.name, self.agents.domain).to_ascii_lowercase(),
            ));
            names.push((
                format!("apps[{i}] (leaf)"),
                format!("{}.{}", app.name, self.leaf.cn_domain).to_ascii_lowercase(),
            ));
        }
        if let Some(id) = self
            .proxy
            .as_ref()
            .and_then(|p| p.identity(&self.agents.domain))
        {
            names.push(("proxy.client_cn".into(), id.cn.to_ascii_lowercase()));
        }
        for (i, (a, cn)) in names.iter().enumerate() {
            if let Some((b, _)) = names[..i].iter().find(|(_, other)| other == cn) {
                return Err(self.invalid(
                    a.clone(),
                    format!("its common name {cn} is also {b}'s: each certificate rotate issues needs its own name"),
                ));
            }
        }
        Ok(())
    }

    /// The address agents and the admin reach Vault at: `[vault] addr`, else the
    /// environment's (`VAULT_ADDR`/`BAO_ADDR`, as the admin client reads it).
    pub fn vault_addr(&self) -> String {
        match &self.vault.addr {
            Some(a) => a.clone(),
            None => ClientConfig::from_env()
                .map(|c| c.addr.to_string())
                .unwrap_or_else(|_| vault_client::DEFAULT_ADDR.to_owned()),
        }
    }

    /// The TLS server name clients verify: `[vault] tls_server_name`, else the
    /// environment's.
    pub fn vault_server_name(&self) -> Option<String> {
        self.vault.tls_server_name.clone().or_else(|| {
            ClientConfig::from_env()
                .ok()
                .and_then(|c| c.tls_server_name)
        })
    }

    /// The sections of steps 1, 2, 5, 6 and 7 (`[admin]`, `[listener]`, `[proxy]`,
    /// `[restarts]`, `[health]`): durations, one directory per pair, reloaders.
    fn validate_tls_steps(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.admin {
            self.validate_admin(a)?;
        }
        if let Some(p) = &self.proxy {
            self.validate_proxy(p)?;
        }
        if let Some(r) = &self.restarts {
            self.validate_restarts(r)?;
        }
        self.tls_duration("health.window", &self.health.window)?;
        if self.health.consecutive == 0 {
            return Err(self.invalid("health.consecutive", "must be at least 1"));
        }
        if let Some(l) = &self.listener {
            self.validate_listener(l)?;
        }
        Ok(())
    }

    /// `v` parses as a duration; else an error naming `setting`.
    fn tls_duration(&self, setting: &str, v: &str) -> Result<(), ConfigError> {
        match pki_ops::parse_duration_secs(v) {
            Some(_) => Ok(()),
            None => Err(self.invalid(setting, format!("{v:?} is not a duration (e.g. 72h)"))),
        }
    }

    /// `[admin]`: durations, and a `[vault]` client pair (and CA bundle) it can replace.
    fn validate_admin(&self, a: &AdminSection) -> Result<(), ConfigError> {
        self.tls_duration("admin.ttl", &a.ttl)?;
        self.tls_duration("admin.max_ttl", &a.max_ttl)?;
        let (Some(cert), Some(key)) = (&self.vault.client_cert, &self.vault.client_key) else {
            return Err(self.invalid(
                "vault.client_cert",
                "[admin] rotates the admin's client certificate: set [vault] client_cert and client_key",
            ));
        };
        if cert.parent() != key.parent() {
            return Err(self.invalid(
                "vault.client_key",
                "must be in the same directory as client_cert (the pair is replaced together)",
            ));
        }
        if a.write_ca && self.vault.ca_cert.is_none() {
            return Err(self.invalid(
                "admin.write_ca",
                "needs [vault] ca_cert (the bundle to write)",
            ));
        }
        Ok(())
    }

    /// `[proxy]`: its files, durations, probe, home and reloader.
    fn validate_proxy(&self, p: &ProxySection) -> Result<(), ConfigError> {
        self.validate_proxy_files(p)?;
        self.tls_duration("proxy.client_ttl", &p.client_ttl)?;
        self.tls_duration("proxy.probe_timeout", &p.probe_timeout)?;
        if let Some(u) = &p.probe {
            vault_client::ClientConfig::new(u)
                .map_err(|e| self.invalid("proxy.probe", e.to_string()))?;
        }
        if let Some(ca) = &p.probe_ca
            && !ca.is_absolute()
        {
            return Err(self.invalid(
                "proxy.probe_ca",
                format!("{} must be an absolute path", ca.display()),
            ));
        }
        if p.probe.is_some() && p.probe_ca.is_none() && self.vault.ca_cert.is_none() {
            return Err(self.invalid(
                "proxy.probe_ca",
                "the probe verifies the proxy with it (or [vault] ca_cert): set one",
            ));
        }
        if let Some(h) = &p.home {
            hooks::check_safe_path("home", h)
                .map_err(|e| self.invalid("proxy.home", e.to_string()))?;
        }
        if !p.reload.is_empty() {
            p.reload
                .parse::<hooks::Reloader>()
                .map_err(|e| self.invalid("proxy.reload", e.to_string()))?;
        }
        Ok(())
    }

    /// `[proxy]` files: plain paths under its home, a whole client pair, three different
    /// files, and the CA bundle step 5 needs.
    fn validate_proxy_files(&self, p: &ProxySection) -> Result<(), ConfigError> {
        for (setting, rel) in [
            ("proxy.ca_bundle", &p.ca_bundle),
            ("proxy.client_cert", &p.client_cert),
            ("proxy.client_key", &p.client_key),
        ] {
            let Some(b) = rel else { continue };
            if p.home.is_none() {
                return Err(self.invalid(
                    "proxy.home",
                    format!("step 5 ({setting}) needs the proxy's home"),
                ));
            }
            if b.is_absolute()
                || b.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(self.invalid(
                    setting,
                    format!(
                        "{} must be a plain path relative to proxy.home",
                        b.display()
                    ),
                ));
            }
        }
        match (&p.client_cert, &p.client_key) {
            (Some(_), None) => {
                return Err(self.invalid("proxy.client_key", "client_cert needs client_key"));
            }
            (None, Some(_)) => {
                return Err(self.invalid("proxy.client_cert", "client_key needs client_cert"));
            }
            (Some(c), Some(k))
                if c == k || p.ca_bundle.as_ref().is_some_and(|b| b == c || b == k) =>
            {
                return Err(self.invalid(
                    "proxy.client_key",
                    "client_cert, client_key and ca_bundle must be three different files",
                ));
            }
            _ => {}
        }
        if (p.client_cert.is_some() || p.probe.is_some()) && p.ca_bundle.is_none() {
            return Err(self.invalid(
                "proxy.ca_bundle",
                "step 5 (client identity, probe) needs the proxy's CA bundle",
            ));
        }
        Ok(())
    }

    /// `[restarts]`: reloaders that parse, a Vault restart that is no signal, and one set
    /// when it must always run.
    fn validate_restarts(&self, r: &RestartsSection) -> Result<(), ConfigError> {
        for (i, spec) in r.proxy.iter().enumerate() {
            spec.parse::<hooks::Reloader>()
                .map_err(|e| self.invalid(format!("restarts.proxy[{i}]"), e.to_string()))?;
        }
        if let Some(v) = &r.vault {
            match v.parse::<hooks::Reloader>() {
                Err(e) => return Err(self.invalid("restarts.vault", e.to_string())),
                Ok(hooks::Reloader::Signal { .. }) => {
                    return Err(self.invalid(
                        "restarts.vault",
                        "a signal does not restart Vault (SIGHUP leaves tls_client_ca_file as it was): use systemd-restart:<unit>, podman-restart:<container> or cmd:",
                    ));
                }
                Ok(_) => {}
            }
        }
        let node_restarts = self
            .listener
            .iter()
            .flat_map(|l| &l.nodes)
            .any(|n| n.restart.is_some());
        if r.vault_when == VaultWhen::Always && r.vault.is_none() && !node_restarts {
            return Err(self.invalid(
                "restarts.vault_when",
                "\"always\" needs restarts.vault (or, for a cluster, restart on its nodes)",
            ));
        }
        Ok(())
    }

    /// `[listener]`: durations, one directory for two files, a SIGHUP reloader, a name
    /// clients verify, IP addresses.
    fn validate_listener(&self, l: &ListenerSection) -> Result<(), ConfigError> {
        self.tls_duration("listener.ttl", &l.ttl)?;
        self.tls_duration("listener.max_ttl", &l.max_ttl)?;
        self.tls_duration("listener.reload_timeout", &l.reload_timeout)?;
        self.validate_listener_shape(l)?;
        for n in l.servers() {
            self.validate_server(&n)?;
        }
        if l.common_name.is_none() && self.vault.tls_server_name.is_none() {
            return Err(self.invalid(
                "listener.common_name",
                "set it, or [vault] tls_server_name (the SNI name clients verify)",
            ));
        }
        for ip in &l.ip_sans {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                self.invalid("listener.ip_sans", format!("{ip:?} is not an IP address"))
            })?;
        }
        Ok(())
    }

    /// One server (`cert_file`, `key_file`, `reload`) or nodes, never both; nodes named
    /// uniquely, each at its own address with its own files.
    fn validate_listener_shape(&self, l: &ListenerSection) -> Result<(), ConfigError> {
        let single = [
            ("listener.cert_file", l.cert_file.is_some()),
            ("listener.key_file", l.key_file.is_some()),
            ("listener.reload", l.reload.is_some()),
        ];
        if !l.nodes.is_empty() {
            if let Some((setting, _)) = single.iter().find(|(_, set)| *set) {
                return Err(self.invalid(
                    *setting,
                    "set per node in [[listener.nodes]] (a cluster), not in [listener]",
                ));
            }
        } else if let Some((setting, _)) = single.iter().find(|(_, set)| !*set) {
            return Err(self.invalid(
                *setting,
                "missing: set cert_file, key_file and reload (one server), or [[listener.nodes]] (a cluster)",
            ));
        }
        if !l.nodes.is_empty() && self.restarts.as_ref().is_some_and(|r| r.vault.is_some()) {
            return Err(self.invalid(
                "restarts.vault",
                "a cluster restarts its nodes one at a time: set restart per node in [[listener.nodes]]",
            ));
        }
        for (i, n) in l.nodes.iter().enumerate() {
            let setting = format!("listener.nodes[{i}]");
            if let Some(r) = &n.restart {
                r.parse::<hooks::Reloader>()
                    .map_err(|e| self.invalid(format!("{setting}.restart"), e.to_string()))?;
            }
            if !name_ok(&n.name) || n.name == "listener" {
                return Err(self.invalid(
                    format!("{setting}.name"),
                    format!(
                        "{:?}: letters, digits, '-' or '_', and not \"listener\"",
                        n.name
                    ),
                ));
            }
            ClientConfig::new(&n.addr)
                .map_err(|e| self.invalid(format!("{setting}.addr"), e.to_string()))?;
            if let Some(o) = l.nodes[..i].iter().find(|o| {
                o.name == n.name
                    || o.addr == n.addr
                    || o.cert_file == n.cert_file
                    || o.key_file == n.key_file
            }) {
                return Err(self.invalid(
                    setting,
                    format!("{} shares its name, address or files with node {}: each node is its own server", n.name, o.name),
                ));
            }
            for ip in n.ip_sans.iter().flatten() {
                ip.parse::<std::net::IpAddr>().map_err(|_| {
                    self.invalid(
                        format!("{setting}.ip_sans"),
                        format!("{ip:?} is not an IP address"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// One server's files (one directory, two files) and its SIGHUP reloader.
    fn validate_server(&self, n: &ListenerNode) -> Result<(), ConfigError> {
        let at = |field: &str| match n.reload_setting.strip_suffix(".reload") {
            Some(prefix) => format!("{prefix}.{field}"),
            None => format!("listener.{field}"),
        };
        if n.cert_file.parent() != n.key_file.parent() {
            return Err(self.invalid(
                at("key_file"),
                "must be in the same directory as cert_file (the pair is replaced together)",
            ));
        }
        if n.cert_file == n.key_file {
            return Err(self.invalid(at("key_file"), "is the same file as cert_file"));
        }
        match n.reload.parse::<hooks::Reloader>() {
            Err(e) => return Err(self.invalid(n.reload_setting.clone(), e.to_string())),
            Ok(hooks::Reloader::Signal { signal, .. })
                if signal.strip_prefix("SIG").unwrap_or(&signal) != "HUP" =>
            {
                return Err(self.invalid(
                    n.reload_setting.clone(),
                    format!(
                        "SIG{signal} is not how the server reloads its listener certificate: use signal:<pid file>:HUP"
                    ),
                ));
            }
            Ok(_) => {}
        }
        Ok(())
    }

    /// The steps a plain `run` performs, in order: 1 and 2 when `[admin]` / `[listener]`
    /// are configured, then 3 and 4.
    pub fn default_steps(&self) -> Vec<crate::step_id::StepId> {
        use crate::step_id::StepId;
        let mut v = Vec::new();
        if self.admin.is_some() {
            v.push(StepId::Admin);
        }
        if self.listener.is_some() {
            v.push(StepId::Listener);
        }
        v.extend([StepId::Agents, StepId::Leaf]);
        if self.proxy.as_ref().is_some_and(|p| p.ca_bundle.is_some()) {
            v.push(StepId::Proxy);
        }
        if self.restarts.is_some() {
            v.push(StepId::Restarts);
        }
        if self.vault.client_cert.is_some() && self.vault.ca_cert.is_some() {
            v.push(StepId::Health);
        }
        v
    }

    /// The PKI mount issuing the admin certificate.
    pub fn admin_mount(&self) -> &str {
        self.admin
            .as_ref()
            .and_then(|a| a.mount.as_deref())
            .unwrap_or(&self.pki.mount)
    }

    /// The listener certificate's CN (the SNI name clients verify).
    pub fn listener_cn(&self) -> Option<&str> {
        let l = self.listener.as_ref()?;
        l.common_name
            .as_deref()
            .or(self.vault.tls_server_name.as_deref())
    }

    /// The apps selected by `names` (all when empty), in config order; an unknown name is
    /// an error listing the configured ones.
    pub fn select_apps(&self, names: &[String]) -> Result<Vec<&AppConfig>, ConfigError> {
        for n in names {
            if !self.apps.iter().any(|a| &a.name == n) {
                return Err(ConfigError::UnknownApp {
                    name: n.clone(),
                    known: self
                        .apps
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(self
            .apps
            .iter()
            .filter(|a| names.is_empty() || names.contains(&a.name))
            .collect())
    }

    /// A duration setting, validated at load time.
    pub fn duration(&self, value: &str) -> std::time::Duration {
        std::time::Duration::from_secs(
            pki_ops::parse_duration_secs(value).unwrap_or(0).max(0) as u64
        )
    }

    /// The program to run for `name` (`systemctl`, `podman`, ...): its `[commands]`
    /// override, else the name (found on `PATH`).
    pub fn program(&self, name: &str) -> String {
        self.commands
            .overrides
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    /// What a `signal:` reloader of the Vault server must find behind its pid file before
    /// root signals it: a `bao`, `vault` or `openbao` executable (or one named like
    /// `[commands] agent`) listening on `[listener] server_port`, by default the port of
    /// `[vault] addr`.
    pub fn vault_process(&self) -> hooks::ExpectProcess {
        let single = self
            .listener
            .as_ref()
            .and_then(|l| l.servers().into_iter().next());
        match single {
            Some(n) => self.server_process(&n),
            None => self.process_on(self.vault.addr.as_deref(), None),
        }
    }

    /// What a `signal:` reloader of server `n` must find behind its pid file: a Vault
    /// executable listening on its `server_port`, by default its address's port.
    pub fn server_process(&self, n: &ListenerNode) -> hooks::ExpectProcess {
        let configured = n
            .server_port
            .or_else(|| self.listener.as_ref().and_then(|l| l.server_port));
        self.process_on(n.addr.as_deref().or(self.vault.addr.as_deref()), configured)
    }

    fn process_on(&self, addr: Option<&str>, configured: Option<u16>) -> hooks::ExpectProcess {
        let addr = match addr {
            Some(a) => ClientConfig::new(a).ok(),
            None => ClientConfig::from_env().ok(),
        };
        let mut exe_names: Vec<String> = ["bao", "vault", "openbao"].map(String::from).into();
        if let Some(n) = Path::new(&self.commands.agent).file_name() {
            let n = n.to_string_lossy().into_owned();
            if !exe_names.contains(&n) {
                exe_names.push(n);
            }
        }
        hooks::ExpectProcess {
            exe_names,
            listens_on: configured.or_else(|| addr.and_then(|c| c.addr.port_or_known_default())),
        }
    }

    /// The state directory of this environment.
    pub fn state_dir(&self) -> PathBuf {
        self.run
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/rotate/{}", self.env)))
    }

    /// The admin's Vault client configuration: the environment (`VAULT_*`/`BAO_*`, then
    /// `~/.vault-token`), overlaid with `[vault]`, as the `rotate` command reads it.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        self.client_config_from(true)
    }

    /// The admin's Vault client configuration from `[vault]` alone (`environment`
    /// false: nothing of the process's environment or home is read), or as
    /// [`Config::client_config`].
    pub fn client_config_from(&self, environment: bool) -> Result<ClientConfig, ConfigError> {
        let mut cfg = match environment {
            true => self.vault.client_config()?,
            false => self.vault.client_config_alone()?,
        };
        if environment
            && cfg.token.is_none()
            && let Some(token) = home_token()?
        {
            cfg = cfg.token(&token)?;
        }
        Ok(match self.retry_window() {
            Some(w) => cfg.retry(vault_client::RetryPolicy::window(w)),
            None => cfg,
        })
    }

    /// Whether Vault is a cluster of several servers (`[[listener.nodes]]`).
    pub fn is_cluster(&self) -> bool {
        self.listener.as_ref().is_some_and(|l| l.nodes.len() > 1)
    }

    /// How long a step waits out a failover (a leader election): [`Config::retry_window`],
    /// else 5 s.
    pub fn failover_window(&self) -> std::time::Duration {
        self.retry_window()
            .unwrap_or(std::time::Duration::from_secs(5))
    }

    /// `[vault] retry_window`, or 30 s for a cluster; `None`: the client's default.
    pub fn retry_window(&self) -> Option<std::time::Duration> {
        match &self.vault.retry_window {
            Some(w) => Some(self.duration(w)),
            None if self.listener.as_ref().is_some_and(|l| !l.nodes.is_empty()) => {
                Some(std::time::Duration::from_secs(30))
            }
            None => None,
        }
    }
}

/// The token `bao login` leaves in `~/.vault-token` (as `bao` itself falls back to it),
/// when no other is set: only a regular file of the caller's own that nobody else may
/// write (else an error naming it: root must not use a token someone else planted).
pub(crate) fn home_token() -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => token_file_of_caller(&Path::new(&home).join(".vault-token")),
        None => Ok(None),
    }
}

/// The token in `path` if it exists and is the caller's own regular file, not writable by
/// group or others; `None` if absent or empty.
fn token_file_of_caller(path: &Path) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let refuse = |reason: &str| {
        ConfigError::from(vault_client::Error::Config {
            setting: path.display().to_string(),
            reason: format!("{reason}: refusing the token in it (set [vault] token_file)"),
        })
    };
    // Checked and read through one descriptor: never a symlink, never a FIFO that blocks,
    // and no swap between the check and the read.
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(refuse("not a regular file"));
        }
        Err(source) => return Err(token_read_error(path, source)),
    };
    let meta = file.metadata().map_err(|e| token_read_error(path, e))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(refuse("owned by another user or writable by others"));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| token_read_error(path, e))?;
    let token = zeroize::Zeroizing::new(text.trim().to_owned());
    Ok((!token.is_empty()).then_some(token))
}

fn token_read_error(path: &Path, source: std::io::Error) -> ConfigError {
    ConfigError::from(vault_client::Error::ReadFile {
        what: "token file (~/.vault-token)".into(),
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `s` is a plain name: not empty, only ASCII letters, digits, '-' or '_'.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `p` with `.` and `..` folded away, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `p` with its symlinks resolved as far as it exists (the rest folded lexically).
fn resolve(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// Device and inode.
type FileId = (u64, u64);

/// Device and inode of an existing file (followed through symlinks).
fn identity(p: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl VaultSection {
    /// The environment (`VAULT_*`/`BAO_*`), overlaid with the values set here.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        self.overlay(ClientConfig::from_env()?)
    }

    /// The values set here alone: no environment variable is read.
    pub fn client_config_alone(&self) -> Result<ClientConfig, ConfigError> {
        self.overlay(ClientConfig::from_lookup(|_| None)?)
    }

    /// `cfg` (from the environment) overlaid with the values set here: a value set here
    /// replaces the environment's, and `ca_cert` replaces `VAULT_CAPATH` too.
    fn overlay(&self, mut cfg: ClientConfig) -> Result<ClientConfig, ConfigError> {
        if let Some(addr) = &self.addr {
            let fresh = ClientConfig::new(addr)?;
            cfg.addr = fresh.addr;
        }
        if let Some(n) = &self.tls_server_name {
            cfg.tls_server_name = Some(n.clone());
        }
        if let Some(p) = &self.ca_cert {
            // Exactly this bundle: a `VAULT_CAPATH` in the environment must not widen it.
            cfg.ca_cert = Some(p.clone());
            cfg.ca_path = None;
        }
        match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => cfg = cfg.client_identity(c, k),
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(vault_client::Error::Config {
                    setting: "[vault] client_cert / client_key".into(),
                    reason: "set both or neither (half an identity would silently fall back to the environment's)".into(),
                }
                .into());
            }
        }
        if let Some(tf) = &self.token_file {
            let token = zeroize::Zeroizing::new(std::fs::read_to_string(tf).map_err(|source| {
                vault_client::Error::ReadFile {
                    what: "token file ([vault] token_file)".into(),
                    path: tf.clone(),
                    source,
                }
            })?);
            cfg = cfg.token(&token)?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD: &str = include_str!("../examples/prod.toml");

    const CLUSTER: &str = include_str!("../examples/cluster.toml");

    #[test]
    fn no_default_names_a_deployment_the_names_follow_from_the_agents_domain() {
        let p = Path::new("/etc/rotate/x.toml");
        let base = "env = \"x\"\n[vault]\naddr = \"https://vault.example.org:8200\"\n[pki]\nmount = \"pki\"\nissuer_name = \"CA\"\n";
        let app = "\n[[apps]]\nname = \"web\"\nhome = \"/srv/web\"\n";
        let err = Config::parse(&format!("{base}{app}"), p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agents.domain") && err.contains("not set"),
            "{err}"
        );
        let mut c = Config::parse(
            &format!("{base}[agents]\ndomain = \"example.org\"\n{app}"),
            p,
        )
        .unwrap();
        assert_eq!(c.leaf.cn_domain, "example.org");
        assert_eq!(c.leaf.allowed_domains, ["example.org"]);
        c.admin = Some(AdminSection::default());
        c.complete();
        assert_eq!(c.admin.unwrap().common_name, "admin.example.org");
        let (agents, leaf, admin) = (
            AgentsSection::default(),
            LeafSection::default(),
            AdminSection::default(),
        );
        assert!(
            [agents.domain, leaf.cn_domain, admin.common_name]
                .iter()
                .all(String::is_empty)
                && leaf.allowed_domains.is_empty(),
            "a default names no deployment"
        );
    }

    #[test]
    fn homes_one_inside_another_are_refused_naming_the_later_one_and_neighbours_are_not() {
        let with = |extra: &str| {
            Config::parse(
                &format!("{PROD}{extra}"),
                Path::new("/etc/rotate/prod.toml"),
            )
        };
        let app = |name: &str, home: &str| {
            format!("\n[[apps]]\nname = \"{name}\"\nhome = \"{home}\"\nuser = \"{name}\"\n")
        };
        // A name that merely starts like another home is no nesting.
        with(&app("ncprd1x", "/home/ncprd1-x")).unwrap();
        let e = with(&(app("a", "/srv/z") + &app("b", "/srv/a") + &app("c", "/srv/z/inner")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps[4].home") && e.contains("/srv/z/inner") && e.contains("apps[2].home"),
            "{e}"
        );
        let e = with(&app("dup", "/home/ncprd1")).unwrap_err().to_string();
        assert!(
            e.contains("apps[2].home") && e.contains("apps[0].home"),
            "{e}"
        );
    }

    #[test]
    fn home_token_is_read_only_from_the_callers_own_unshared_regular_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".vault-token");
        assert!(
            token_file_of_caller(&path).unwrap().is_none(),
            "absent: none"
        );
        std::fs::write(&path, "s.abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            token_file_of_caller(&path).unwrap().unwrap().as_str(),
            "s.abc"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = token_file_of_caller(&path).unwrap_err().to_string();
        assert!(
            e.contains(".vault-token") && e.contains("writable by others"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        let e = token_file_of_caller(&path).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, " \n").unwrap();
        assert!(
            token_file_of_caller(&path).unwrap().is_none(),
            "empty: none"
        );
    }

    /// The 3-node example: three servers, each at its own address with its own files and
    /// reloader; agents and the admin at the balancer; a failover window.
    #[test]
    fn cluster_example_resolves_every_node() {
        let c = Config::parse(CLUSTER, Path::new("/etc/rotate/cluster.toml")).unwrap();
        assert!(c.is_cluster());
        let servers = c.listener.as_ref().unwrap().servers();
        let names: Vec<_> = servers.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["vault-1", "vault-2", "vault-3"]);
        let n2 = &servers[1];
        assert_eq!(n2.addr.as_deref(), Some("https://10.20.0.12:8200"));
        assert_eq!(n2.reload_setting, "listener.nodes[vault-2].reload");
        assert_eq!(n2.owner, "openbao");
        assert_eq!(n2.ip_sans, ["10.20.0.12"]);
        assert_eq!(n2.alt_names, ["vault-2.prod.privsec.ch"]);
        assert_eq!(c.server_process(n2).listens_on, Some(8200));
        assert_eq!(c.retry_window(), Some(std::time::Duration::from_secs(30)));
        let reloaders: Vec<String> = c.reloaders().map(|(s, _)| s).collect();
        assert!(reloaders.contains(&"listener.nodes[vault-3].reload".to_owned()));
    }

    /// A cluster's nodes and a single server's files never mix; nodes are their own.
    #[test]
    fn cluster_shape_errors_name_the_setting() {
        let with = |needle: &str, replace: &str| {
            let text = CLUSTER.replacen(needle, replace, 1);
            Config::parse(&text, Path::new("/etc/rotate/cluster.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = with("[listener]\n", "[listener]\ncert_file = \"/opt/x.crt\"\n");
        assert!(
            e.contains("listener.cert_file") && e.contains("per node"),
            "{e}"
        );
        let e = with("https://10.20.0.12:8200", "https://10.20.0.11:8200");
        assert!(e.contains("vault-2") && e.contains("vault-1"), "{e}");
        let e = with("name = \"vault-3\"", "name = \"listener\"");
        assert!(e.contains("listener.nodes[2].name"), "{e}");
    }

    #[test]
    fn prod_example_expresses_the_seed_topology() {
        let c = Config::parse(PROD, Path::new("/etc/rotate/prod.toml")).unwrap();
        assert_eq!(c.env, "prod");
        assert_eq!(c.vault.addr.as_deref(), Some("https://127.0.0.1:22400"));
        assert_eq!(
            c.vault.tls_server_name.as_deref(),
            Some("vault.prod.privsec.ch")
        );
        assert_eq!(c.pki.mount, "pki-prod");
        assert_eq!(c.pki.issuer_name, "PrivSec Intermediate CA (prod)");
        let names: Vec<_> = c.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["ncprd1", "resume2me"]);
        let a = &c.apps[0];
        assert_eq!(
            crate::topology::home_path(a, crate::topology::rel::agent_key()),
            Path::new("/home/ncprd1/vault/mtls/agent.key")
        );
        assert_eq!(
            crate::topology::home_path(a, crate::topology::rel::agent_cert()),
            Path::new("/home/ncprd1/vault/mtls/agent.crt")
        );
        assert_eq!(
            crate::topology::home_path(a, crate::topology::rel::ca_file()),
            Path::new("/home/ncprd1/vault/ca/ca.pem")
        );
        assert_eq!(a.unit(), "vault-agent-ncprd1.service");
        assert_eq!(a.user(), "ncprd1");
        assert_eq!(c.proxy.unwrap().name, "proxyprod");
    }

    #[test]
    fn prod_example_expresses_steps_1_and_2() {
        let c = Config::parse(PROD, Path::new("/etc/rotate/prod.toml")).unwrap();
        let a = c.admin.as_ref().unwrap();
        assert_eq!(a.role, "admin-mtls");
        assert_eq!(c.admin_mount(), "pki-prod");
        let l = c.listener.as_ref().unwrap();
        assert_eq!(c.listener_cn(), Some("vault.prod.privsec.ch"));
        assert_eq!(l.ip_sans, ["127.0.0.1"]);
        assert_eq!(l.owner, "openbao");
        use crate::step_id::StepId::*;
        assert_eq!(
            c.default_steps(),
            [Admin, Listener, Agents, Leaf, Proxy, Restarts, Health]
        );
        let p = c.proxy.as_ref().unwrap();
        assert_eq!(p.ca_bundle.as_deref(), Some(Path::new("tls/vault-ca.pem")));
        assert_eq!(p.reload, "podman:proxyprod");
    }

    #[test]
    fn steps_1_and_2_settings_are_checked_naming_the_setting() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            (
                PROD.replace(
                    "reload = \"signal:/run/openbao/openbao.pid:HUP\"",
                    "reload = \"carrier-pigeon\"",
                ),
                "listener.reload",
            ),
            (
                PROD.replace(
                    "key_file = \"/opt/openbao/tls/tls.key\"",
                    "key_file = \"/etc/tls.key\"",
                ),
                "listener.key_file",
            ),
            (
                PROD.replace("ip_sans = [\"127.0.0.1\"]", "ip_sans = [\"localhost\"]"),
                "listener.ip_sans",
            ),
            (PROD.replace("ttl = \"72h\"", "ttl = \"soon\""), "admin.ttl"),
            (
                PROD.replace(
                    "client_key = \"/root/.vault-sec/prod/admin.key\"",
                    "client_key = \"/tmp/admin.key\"",
                ),
                "vault.client_key",
            ),
        ];
        for (text, setting) in cases {
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid config /etc/rotate/prod.toml: {setting}:")),
                "{setting}: {err}"
            );
        }
        // Without the sections, steps 1 and 2 are absent from a plain run.
        let bare = PROD.split("# Step 1:").next().unwrap().to_owned()
            + PROD
                .split("[agents]")
                .nth(1)
                .map(|r| format!("[agents]{r}"))
                .unwrap()
                .as_str();
        let c = Config::parse(&bare, p).unwrap();
        assert!(c.admin.is_none() && c.listener.is_none());
        use crate::step_id::StepId::*;
        assert_eq!(c.default_steps(), [Agents, Leaf, Proxy, Restarts, Health]);
    }

    #[test]
    fn proxy_and_restart_settings_are_checked_naming_the_setting() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            (
                PROD.replace(
                    "client_key = \"tls/proxy-client.key\"",
                    "client_key = \"tls/vault-ca.pem\"",
                ),
                "proxy.client_key",
            ),
            (
                PROD.replace(
                    "client_key = \"tls/proxy-client.key\"",
                    "client_key = \"../proxy-client.key\"",
                ),
                "proxy.client_key",
            ),
            (
                PROD.replace("client_key = \"tls/proxy-client.key\"\n", ""),
                "proxy.client_key",
            ),
            (
                PROD.replace(
                    "probe = \"https://127.0.0.1:8443\"",
                    "probe = \"http://127.0.0.1:8443\"",
                ),
                "proxy.probe",
            ),
            (
                PROD.replace(
                    "[leaf]\n",
                    "[leaf]\nproxy_reload = \"systemd:nginx.service\"\n",
                ),
                "leaf.proxy_reload",
            ),
            (
                PROD.replace(
                    "probe_server_name = ",
                    "probe_ca = \"ca.pem\"\nprobe_server_name = ",
                ),
                "proxy.probe_ca",
            ),
        ];
        for (text, setting) in cases {
            assert_ne!(text, PROD, "{setting}: the example changed");
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid config /etc/rotate/prod.toml: {setting}:")),
                "{setting}: {err}"
            );
        }
    }

    #[test]
    fn names_that_reach_vault_paths_are_validated_naming_the_setting() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            ("env = \"prod\"", "env = \"../../x\"", "env"),
            (
                "name = \"proxyprod\"",
                "name = \"../roles/x\"",
                "proxy.name",
            ),
            (
                "role = \"admin-mtls\" ",
                "role = \"../certs/agent-x\" ",
                "admin.role",
            ),
            (
                "role = \"vault-server\" ",
                "role = \"a/b\" ",
                "listener.role",
            ),
            (
                "marker_policy = \"marker-cert-auth\"",
                "marker_policy = \"..\"",
                "agents.marker_policy",
            ),
            (
                "cert_auth_mount = \"cert\"",
                "cert_auth_mount = \"cert/certs\"",
                "agents.cert_auth_mount",
            ),
            (
                "mount = \"pki-prod\"",
                "mount = \"pki-prod/../sys\"",
                "pki.mount",
            ),
        ];
        for (from, to, setting) in cases {
            let text = PROD.replacen(from, to, 1);
            assert_ne!(text, PROD, "{setting}: the example changed");
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid config /etc/rotate/prod.toml: {setting}:")),
                "{setting}: {err}"
            );
        }
        let text = PROD.replace("[leaf]\n", "[leaf]\nremove_policies = [\"x?y\"]\n");
        let err = Config::parse(&text, p).unwrap_err().to_string();
        assert!(err.contains("leaf.remove_policies[0]"), "{err}");
    }

    #[test]
    fn two_settings_naming_one_file_are_refused_naming_both() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            (
                "env_file = \"/root/.vault-sec/prod/env.sh\"",
                "env_file = \"/root/.vault-sec/prod/token\"",
                "admin.env_file",
                "vault.token_file",
            ),
            (
                "env_file = \"/root/.vault-sec/prod/env.sh\"",
                "env_file = \"/root/.vault-sec/prod/../prod/admin.key\"",
                "admin.env_file",
                "vault.client_key",
            ),
            (
                "client_ca_file = \"/opt/openbao/tls/client-ca.pem\"",
                "client_ca_file = \"/opt/openbao/tls/tls.key\"",
                "listener.client_ca_file",
                "listener.key_file",
            ),
        ];
        for (from, to, a, b) in cases {
            let text = PROD.replace(from, to);
            assert_ne!(text, PROD);
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{a}: names the same file as {b}")),
                "{a}/{b}: {err}"
            );
        }
        // A hard link is the same file under another name.
        let t = tempfile::tempdir().unwrap();
        let token = t.path().join("token");
        std::fs::write(&token, "s.x").unwrap();
        std::fs::hard_link(&token, t.path().join("env.sh")).unwrap();
        let text = PROD
            .replace("/root/.vault-sec/prod/token", &token.display().to_string())
            .replace(
                "/root/.vault-sec/prod/env.sh",
                &t.path().join("env.sh").display().to_string(),
            );
        let err = Config::parse(&text, p).unwrap_err().to_string();
        assert!(
            err.contains("admin.env_file: names the same file as vault.token_file"),
            "{err}"
        );
    }

    #[test]
    fn nothing_root_keeps_may_lie_in_a_tenant_tree() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            (
                "state_dir = \"/var/lib/rotate/prod\"",
                "state_dir = \"/home/ncprd1/state\"",
                "run.state_dir",
            ),
            (
                "token_file = \"/root/.vault-sec/prod/token\"",
                "token_file = \"/home/proxyprod/token\"",
                "vault.token_file",
            ),
            (
                "home = \"/home/resume2me\"",
                "home = \"/home/ncprd1/r\"",
                "apps[1].home",
            ),
            (
                "home = \"/home/proxyprod\"",
                "home = \"/home\"",
                "proxy.home",
            ),
        ];
        for (from, to, setting) in cases {
            let text = PROD.replace(from, to);
            assert_ne!(text, PROD, "{setting}");
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(err.contains(&format!("{setting}: ")), "{setting}: {err}");
        }
    }

    #[test]
    fn only_reload_signals_reach_the_vault_server() {
        let p = Path::new("/etc/rotate/prod.toml");
        let kill = PROD.replace("openbao.pid:HUP", "openbao.pid:KILL");
        let err = Config::parse(&kill, p).unwrap_err().to_string();
        assert!(err.contains("listener.reload"), "{err}");
        let usr1 = PROD.replace("openbao.pid:HUP", "openbao.pid:USR1");
        let err = Config::parse(&usr1, p).unwrap_err().to_string();
        assert!(
            err.contains("listener.reload") && err.contains("HUP"),
            "{err}"
        );
        let restart = PROD.replace(
            "vault = \"systemd-restart:openbao.service\"",
            "vault = \"signal:/run/openbao/openbao.pid:HUP\"",
        );
        let err = Config::parse(&restart, p).unwrap_err().to_string();
        assert!(
            err.contains("restarts.vault") && err.contains("does not restart"),
            "{err}"
        );
        let c = Config::parse(PROD, p).unwrap();
        let expect = c.vault_process();
        assert_eq!(expect.listens_on, Some(22400));
        assert!(expect.exe_names.contains(&"bao".to_string()));
    }

    #[test]
    fn a_config_another_user_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = t.path().join("rotate.toml");
        let text = PROD.replace("podman:proxyprod\"", "cmd:nginx -s reload\"");
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Config::load(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("writable by others"), "{err}");
        // Without cmd: too: it says where root writes and whom it sends the token to.
        std::fs::write(&path, PROD).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Untrusted { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Config::load(&path).unwrap();
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file_wherever_rotate_runs() {
        let c = Config::parse(
            &PROD.replace("/etc/vault-sec/prod/ca.pem", "ca/ca.pem"),
            Path::new("conf/prod.toml"),
        )
        .unwrap();
        let ca = c.vault.ca_cert.unwrap();
        assert!(
            ca.is_absolute() && ca.ends_with("conf/ca/ca.pem"),
            "{}",
            ca.display()
        );
    }

    #[test]
    fn the_environment_never_widens_the_configured_ca_bundle() {
        let mut c = Config::parse(PROD, Path::new("/etc/rotate/prod.toml")).unwrap();
        c.vault.token_file = None;
        let env = ClientConfig::from_lookup(|k| match k {
            "VAULT_CAPATH" => Some("/home/ncprd1/cas".into()),
            "VAULT_CACERT" => Some("/tmp/evil.pem".into()),
            _ => None,
        })
        .unwrap();
        let cfg = c.vault.overlay(env).unwrap();
        assert_eq!(cfg.ca_path, None);
        assert_eq!(
            cfg.ca_cert.as_deref(),
            Some(Path::new("/etc/vault-sec/prod/ca.pem"))
        );
    }

    #[test]
    fn values_that_would_fail_at_run_time_are_refused_at_load() {
        let p = Path::new("/etc/rotate/prod.toml");
        let cases = [
            ("window = \"60s\"", "window = \"0s\"", "health.window"),
            (
                "reload_timeout = \"15s\"",
                "reload_timeout = \"0s\"",
                "listener.reload_timeout",
            ),
            ("ttl = \"72h\"", "ttl = \"1s\"", "admin.ttl"),
            ("ttl = \"2160h\"", "ttl = \"9000h\"", "listener.ttl"),
            (
                "ip_sans = [\"127.0.0.1\"]",
                "ip_sans = [\"127.0.0.1\"]\ncommon_name = \"vault.example.org\"",
                "listener.common_name",
            ),
            ("renew_share = 0.33", "renew_share = 1.5", "run.renew_share"),
            ("concurrency = 4", "concurrency = 0", "run.concurrency"),
            (
                "[leaf]\n",
                "[leaf]\nttl = \"30m\"\nmin_remaining = \"1h\"\n",
                "leaf.ttl",
            ),
        ];
        for (from, to, setting) in cases {
            let text = PROD.replacen(from, to, 1);
            assert_ne!(text, PROD, "{setting}: the example changed");
            let err = Config::parse(&text, p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid config /etc/rotate/prod.toml: {setting}:")),
                "{setting}: {err}"
            );
        }
    }

    #[test]
    fn two_certificates_with_one_common_name_are_refused() {
        let p = Path::new("/etc/rotate/prod.toml");
        let text = PROD.replace(
            "cn_domain = \"int.privsec.ch\"",
            "cn_domain = \"prod.privsec.ch\"",
        ) + "\n[[apps]]\nname = \"agent-ncprd1\"\nhome = \"/home/agent-ncprd1\"\n";
        let err = Config::parse(&text, p).unwrap_err().to_string();
        assert!(
            err.contains("agent-ncprd1.prod.privsec.ch")
                && err.contains("apps[0] (agent certificate)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_app_lists_the_known_ones() {
        let c = Config::parse(PROD, Path::new("/etc/rotate/prod.toml")).unwrap();
        let err = c.select_apps(&["ncprd2".into()]).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown app \"ncprd2\" (configured: ncprd1, resume2me)"
        );
        assert_eq!(c.select_apps(&[]).unwrap().len(), 2);
    }

    #[test]
    fn bad_files_name_the_file_and_setting() {
        let p = Path::new("/etc/rotate/x.toml");
        let err = Config::parse("env = 1", p).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid config /etc/rotate/x.toml:"),
            "{err}"
        );
        let dup = PROD.replace("name = \"resume2me\"", "name = \"ncprd1\"");
        let err = Config::parse(&dup, p).unwrap_err().to_string();
        assert!(
            err.contains("apps[1].name") && err.contains("twice"),
            "{err}"
        );
        let shared = PROD.replace("/home/resume2me", "/home/ncprd1");
        let err = Config::parse(&shared, p).unwrap_err().to_string();
        assert!(
            err.contains("apps[1].home") && err.contains("ncprd1"),
            "two apps sharing a home are refused: {err}"
        );
        let crafted = PROD.replace("/home/resume2me", "/home/resume2me/$(id)");
        let err = Config::parse(&crafted, p).unwrap_err().to_string();
        assert!(err.contains("apps[1].home"), "{err}");
        let spaced = PROD.replace("/home/resume2me", "/home/resume 2me");
        let err = Config::parse(&spaced, p).unwrap_err().to_string();
        assert!(err.contains("apps[1].home"), "{err}");
        let typo = PROD.replace("[proxy]", "[proxy]\nnmae = 1");
        let err = Config::parse(&typo, p).unwrap_err().to_string();
        assert!(err.contains("nmae"), "unknown keys are refused: {err}");
    }
}
