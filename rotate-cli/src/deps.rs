//! What the steps need from the outside world, as narrow traits: the admin's Vault
//! capabilities, and a way to build a *fresh* client from new certificate files (the gates).

use std::path::Path;

use vault_client::{CertAuthApi, ClientConfig, KvApi, PkiApi, SysApi, TokenApi, VaultClient};

/// Builds a brand-new client (own connection pool, no token) presenting `cert`/`key` and
/// trusting only `ca`: what an agent with those files would be.
#[cfg_attr(test, mockall::automock)]
pub trait GateConnector: Send + Sync {
    /// A fresh client for the cert login gate.
    fn connect(
        &self,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn CertAuthApi>>;

    /// A client reaching Vault like the admin (same TLS identity) but sending `token`, to
    /// look up a token someone else obtained (e.g. the agent's sink).
    fn token_client(&self, token: &str) -> vault_client::Result<Box<dyn TokenApi>>;
}

/// The real [`GateConnector`]: the admin's address and TLS server name, new files.
#[derive(Debug, Clone)]
pub struct FreshClients {
    base: ClientConfig,
}

impl FreshClients {
    /// Fresh clients that reach Vault like `base` does (address, SNI name, timeouts).
    pub fn new(base: &ClientConfig) -> Self {
        let mut base = base.clone();
        base.token = None;
        FreshClients { base }
    }
}

impl GateConnector for FreshClients {
    fn connect(
        &self,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> vault_client::Result<Box<dyn CertAuthApi>> {
        let mut cfg = self.base.clone().ca_cert(ca).client_identity(cert, key);
        // Only the app's CA bundle: the gate proves *it* verifies the listener.
        cfg.ca_path = None;
        Ok(Box::new(VaultClient::new(&cfg)?))
    }

    fn token_client(&self, token: &str) -> vault_client::Result<Box<dyn TokenApi>> {
        let cfg = self.base.clone().token(token)?;
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
    /// Fresh clients for gates.
    pub gate: &'a dyn GateConnector,
}

impl<'a> Vault<'a> {
    /// Every capability from one client.
    pub fn from_client(client: &'a VaultClient, gate: &'a dyn GateConnector) -> Self {
        Vault {
            sys: client,
            pki: client,
            cert: client,
            token: client,
            kv: client,
            gate,
        }
    }
}
