//! `rotate status`: is Vault reachable over mTLS, unsealed, and who are we.

use serde::Serialize;
use vault_client::{HealthState, SysApi, TokenApi};

/// What `rotate status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Where we connected.
    pub addr: String,
    /// The TLS server name verified (SNI).
    pub tls_server_name: Option<String>,
    /// `sys/health` state.
    pub state: HealthState,
    /// Initialised?
    pub initialized: bool,
    /// Sealed?
    pub sealed: bool,
    /// Server version.
    pub version: String,
    /// Seal type and storage, from `sys/seal-status`.
    pub seal_type: String,
    /// Storage backend.
    pub storage_type: Option<String>,
    /// Cluster name.
    pub cluster_name: Option<String>,
    /// The identity of our token, when one is configured and valid.
    pub identity: Option<Identity>,
    /// Each node of a cluster (`[[listener.nodes]]`), asked at its own address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    /// 0, or 6 when Vault is sealed or not initialised.
    pub exit_code: u8,
}

/// One node of a cluster as `sys/health` at its own address answers.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// `active`, `standby`, `sealed`, ..., or why it did not answer.
    pub state: String,
}

/// Each of `nodes` (name, address) asked `sys/health` at its own address with `base`'s
/// identity and TLS settings.
pub(crate) async fn node_states(
    base: &vault_client::ClientConfig,
    nodes: &[(String, String)],
) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for (name, addr) in nodes {
        let state = match vault_client::ClientConfig::new(addr) {
            Ok(fresh) => {
                let mut cfg = base.clone().retry(vault_client::RetryPolicy::none());
                cfg.addr = fresh.addr;
                match vault_client::VaultClient::new(&cfg) {
                    Ok(c) => match c.health().await {
                        Ok(h) => format!("{:?}", h.state).to_lowercase(),
                        Err(e) => format!("DOWN: {e}"),
                    },
                    Err(e) => format!("DOWN: {e}"),
                }
            }
            Err(e) => format!("bad address: {e}"),
        };
        out.push(NodeStatus {
            name: name.clone(),
            addr: addr.clone(),
            state,
        });
    }
    out
}

/// The token's identity (never the token).
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// Display name.
    pub display_name: String,
    /// Policies.
    pub policies: Vec<String>,
    /// Remaining TTL, seconds (0 = none).
    pub ttl: i64,
}

/// Query `sys/health`, `sys/seal-status` and, if `with_token`, `auth/token/lookup-self`.
pub async fn status<V: SysApi + TokenApi>(
    vault: &V,
    addr: &str,
    tls_server_name: Option<&str>,
    with_token: bool,
) -> vault_client::Result<StatusReport> {
    let health = vault.health().await?;
    let seal = vault.seal_status().await?;
    let identity = if with_token && !seal.sealed {
        let me = vault.lookup_self().await?;
        Some(Identity {
            display_name: me.display_name,
            policies: me.policies,
            ttl: me.ttl,
        })
    } else {
        None
    };
    Ok(StatusReport {
        addr: addr.to_owned(),
        tls_server_name: tls_server_name.map(str::to_owned),
        state: health.state,
        initialized: seal.initialized,
        sealed: seal.sealed,
        version: seal.version,
        seal_type: seal.seal_type,
        storage_type: seal.storage_type,
        cluster_name: seal.cluster_name,
        identity,
        nodes: Vec::new(),
        exit_code: 0,
    })
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(f, "Vault        {}", self.addr)?;
            if let Some(n) = &self.tls_server_name {
                writeln!(f, "TLS name     {n} (verified, sent as SNI)")?;
            }
            writeln!(f, "State        {:?}", self.state)?;
            writeln!(f, "Initialized  {}", self.initialized)?;
            writeln!(f, "Sealed       {}", self.sealed)?;
            writeln!(f, "Version      {}", self.version)?;
            writeln!(
                f,
                "Seal/storage {} / {}",
                self.seal_type,
                self.storage_type.as_deref().unwrap_or("?")
            )?;
            if let Some(c) = &self.cluster_name {
                writeln!(f, "Cluster      {c}")?;
            }
            if self.identity.is_none() {
                writeln!(
                    f,
                    "Identity     {}",
                    if self.sealed {
                        "not checked: Vault is sealed"
                    } else {
                        "none: no token (set [vault] token_file or VAULT_TOKEN, or `bao login`, which writes ~/.vault-token)"
                    }
                )?;
            }
            if let Some(id) = &self.identity {
                writeln!(
                    f,
                    "Identity     {} (policies: {}; ttl {})",
                    id.display_name,
                    id.policies.join(", "),
                    if id.ttl == 0 {
                        "none".to_string()
                    } else {
                        format!("{}s", id.ttl)
                    }
                )?;
            }
            for n in &self.nodes {
                writeln!(f, "Node         {} {} {}", n.name, n.addr, n.state)?;
            }
            Ok(())
        })
    }
}
