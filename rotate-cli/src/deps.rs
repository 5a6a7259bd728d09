//! What the steps need from the outside world, as narrow traits: the admin's Vault
//! capabilities, and a way to build a *fresh* client from new certificate files (the gates).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use vault_client::{
    CertAuthApi, ClientConfig, Handshake, KvApi, PkiApi, Reconnect, SysApi, TokenApi, VaultClient,
};
use zeroize::Zeroizing;

/// `sys/*` and token endpoints of one client: what the admin identity gate asks.
pub trait AdminApi: SysApi + TokenApi {}
impl<T: SysApi + TokenApi> AdminApi for T {}

/// Builds brand-new clients (own connection, no shared pool) from given files: what an
/// agent, or the admin with new files, would be. The gates prove effects through these.
#[cfg_attr(any(test, feature = "test-kit"), mockall::automock)]
#[async_trait]
pub trait GateConnector: Send + Sync {
    /// A fresh client for the cert login gate, presenting an identity read into memory
    /// (an agent's files, read through its home without following symlinks).
    fn connect(&self, id: &TlsIdentity) -> vault_client::Result<Box<dyn CertAuthApi>>;

    /// A client reaching Vault like the admin (same TLS identity) but sending `token`, to
    /// look up a token someone else obtained (e.g. the agent's sink).
    fn token_client(&self, token: &str) -> vault_client::Result<Box<dyn TokenApi>>;

    /// A fresh client presenting `cert`/`key`, trusting only `ca`, sending the admin's
    /// token: the admin identity those files would give.
    fn admin_client(
        &self,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn AdminApi>>;

    /// A raw TLS handshake on a new connection (what `openssl s_client -servername`
    /// sees), presenting `identity` (cert, key) and trusting only `ca`, then
    /// `sys/seal-status` on it.
    async fn handshake(
        &self,
        identity: Option<(PathBuf, PathBuf)>,
        ca: &Path,
        timeout: Duration,
    ) -> vault_client::Result<Handshake>;

    /// [`GateConnector::handshake`] presenting an identity read into memory (and
    /// trusting its CA bundle).
    async fn handshake_as(
        &self,
        id: &TlsIdentity,
        timeout: Duration,
    ) -> vault_client::Result<Handshake>;

    /// The same connector reaching `addr` (one node of a cluster) instead of the admin's
    /// address, with the same TLS server name: for gates that must see what *that*
    /// server serves.
    fn at(&self, addr: &str) -> vault_client::Result<Box<dyn GateConnector>>;

    /// An anonymous client of Vault *through a proxy* at `addr` (which forwards `/v1/`),
    /// verifying the proxy as `server_name` with `ca`.
    fn through_proxy(
        &self,
        addr: &str,
        server_name: Option<String>,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn SysApi>>;
}

/// Whether something accepts TCP connections at `addr` (`https://host:port`) within 2 s.
pub(crate) async fn listening(addr: &str) -> bool {
    let Ok(cfg) = vault_client::ClientConfig::new(addr) else {
        return false;
    };
    let (Some(host), Some(port)) = (cfg.addr.host_str(), cfg.addr.port_or_known_default()) else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

/// A gate connector to one server: the admin's own ([`GateConnector`] as given), or one
/// made for a node's address ([`GateConnector::at`]).
pub(crate) enum NodeGate<'a> {
    /// The admin's address.
    Admin(&'a dyn GateConnector),
    /// A node's own address.
    Node(Box<dyn GateConnector>),
}

impl<'a> NodeGate<'a> {
    /// `gate`, reaching `addr` when given.
    pub(crate) fn new(
        gate: &'a dyn GateConnector,
        addr: Option<&str>,
    ) -> vault_client::Result<Self> {
        Ok(match addr {
            None => NodeGate::Admin(gate),
            Some(a) => NodeGate::Node(gate.at(a)?),
        })
    }

    /// The connector.
    pub(crate) fn get(&self) -> &dyn GateConnector {
        match self {
            NodeGate::Admin(g) => *g,
            NodeGate::Node(g) => g.as_ref(),
        }
    }
}

/// A client identity (certificate, key) and the CA bundle to trust, each read into
/// memory with the path it came from (which errors name).
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate.
    pub cert: (PathBuf, Zeroizing<Vec<u8>>),
    /// The key (zeroized on drop).
    pub key: (PathBuf, Zeroizing<Vec<u8>>),
    /// The CA bundle.
    pub ca: (PathBuf, Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert", &self.cert.0)
            .field("key", &self.key.0)
            .field("ca", &self.ca.0)
            .finish()
    }
}

/// The real [`GateConnector`]: the admin's address and TLS server name, new files.
#[derive(Debug, Clone)]
pub struct FreshClients {
    base: ClientConfig,
    admin: ClientConfig,
}

impl FreshClients {
    /// Fresh clients that reach Vault like `base` does (address, SNI name, timeouts).
    pub fn new(base: &ClientConfig) -> Self {
        let admin = base.clone();
        let mut base = base.clone();
        base.token = None;
        FreshClients { base, admin }
    }

    /// `cfg` presenting `id` and trusting its CA bundle, all from memory.
    fn with_identity(cfg: ClientConfig, id: &TlsIdentity) -> ClientConfig {
        let mut cfg = Self::with_files(cfg, &id.cert.0, &id.key.0, &id.ca.0);
        for (path, contents) in [&id.cert, &id.key, &id.ca] {
            cfg = cfg.preload(path, contents.clone());
        }
        cfg
    }

    fn with_files(mut cfg: ClientConfig, cert: &Path, key: &Path, ca: &Path) -> ClientConfig {
        cfg = cfg.ca_cert(ca).client_identity(cert, key);
        // Only the given CA bundle: the gate proves *it* verifies the listener.
        cfg.ca_path = None;
        cfg
    }
}

#[async_trait]
impl GateConnector for FreshClients {
    fn connect(&self, id: &TlsIdentity) -> vault_client::Result<Box<dyn CertAuthApi>> {
        let cfg = Self::with_identity(self.base.clone(), id);
        Ok(Box::new(VaultClient::new(&cfg)?))
    }

    fn token_client(&self, token: &str) -> vault_client::Result<Box<dyn TokenApi>> {
        let cfg = self.base.clone().token(token)?;
        Ok(Box::new(VaultClient::new(&cfg)?))
    }

    fn admin_client(
        &self,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn AdminApi>> {
        let cfg = Self::with_files(self.admin.clone(), cert, key, ca);
        Ok(Box::new(VaultClient::new(&cfg)?))
    }

    async fn handshake(
        &self,
        identity: Option<(PathBuf, PathBuf)>,
        ca: &Path,
        timeout: Duration,
    ) -> vault_client::Result<Handshake> {
        let mut cfg = self.base.clone().ca_cert(ca);
        cfg.ca_path = None;
        cfg.client_cert = None;
        cfg.client_key = None;
        if let Some((cert, key)) = identity {
            cfg = cfg.client_identity(cert, key);
        }
        vault_client::tls_handshake(&cfg, timeout).await
    }

    async fn handshake_as(
        &self,
        id: &TlsIdentity,
        timeout: Duration,
    ) -> vault_client::Result<Handshake> {
        let cfg = Self::with_identity(self.base.clone(), id);
        vault_client::tls_handshake(&cfg, timeout).await
    }

    fn at(&self, addr: &str) -> vault_client::Result<Box<dyn GateConnector>> {
        let addr = ClientConfig::new(addr)?.addr;
        let mut c = self.clone();
        c.base.addr = addr.clone();
        c.admin.addr = addr;
        Ok(Box::new(c))
    }

    fn through_proxy(
        &self,
        addr: &str,
        server_name: Option<String>,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn SysApi>> {
        let mut cfg = ClientConfig::new(addr)?.ca_cert(ca);
        cfg.tls_server_name = server_name;
        cfg.connect_timeout = self.base.connect_timeout;
        cfg.request_timeout = self.base.request_timeout;
        Ok(Box::new(VaultClient::new(&cfg)?))
    }
}

/// The admin's view of Vault, one trait object per capability (all the same client in
/// production; mocks in unit tests).
#[derive(Clone, Copy)]
pub struct Vault<'a> {
    /// `sys/*`.
    pub sys: &'a dyn SysApi,
    /// PKI.
    pub pki: &'a dyn PkiApi,
    /// Cert auth.
    pub cert: &'a dyn CertAuthApi,
    /// Tokens.
    pub token: &'a dyn TokenApi,
    /// KV v2.
    pub kv: &'a dyn KvApi,
    /// Switches the admin client to the identity files on disk (after step 1 replaced
    /// them, or its undo restored them).
    pub identity: &'a dyn Reconnect,
    /// Fresh clients for gates.
    pub gate: &'a dyn GateConnector,
}

impl<'a> Vault<'a> {
    /// A gate connector reaching the active node. A standby forwards requests, but not
    /// the client certificate of a cert login (OpenBao answers 400 "no client certificate
    /// supplied"), so a login gate must reach the active node itself: the address
    /// `sys/leader` names, for a `cluster` always (a load balancer may route the next
    /// connection elsewhere), else when the admin's address answered from a standby.
    /// While a leader is being elected, waits for one (up to `within`).
    pub(crate) async fn active_gate(&self, cluster: bool, within: Duration) -> NodeGate<'a> {
        let until = tokio::time::Instant::now() + within;
        loop {
            match self.sys.leader().await {
                // A standby may still name the leader that just died: wait for the next.
                Ok(l)
                    if l.ha_enabled
                        && !l.leader_address.is_empty()
                        && !listening(&l.leader_address).await
                        && tokio::time::Instant::now() < until =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(l) if l.ha_enabled && !l.leader_address.is_empty() => {
                    if (cluster || !l.is_self)
                        && let Ok(g) = NodeGate::new(self.gate, Some(&l.leader_address))
                    {
                        return g;
                    }
                    return NodeGate::Admin(self.gate);
                }
                Ok(l) if l.ha_enabled && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => return NodeGate::Admin(self.gate),
            }
        }
    }

    /// Every capability from one client.
    pub fn from_client(client: &'a VaultClient, gate: &'a dyn GateConnector) -> Self {
        Vault {
            sys: client,
            pki: client,
            cert: client,
            token: client,
            kv: client,
            identity: client,
            gate,
        }
    }
}
