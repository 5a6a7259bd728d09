//! `auth/token/lookup-self`: who am I, with which policies.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::client::VaultClient;
use crate::error::Result;
use crate::retry::Idempotency::Idempotent;
use crate::transport::Method;

/// What Vault knows about the calling token (the token itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct TokenInfo {
    /// Accessor.
    #[serde(default)]
    pub accessor: String,
    /// Display name, e.g. `cert-agent-ncprd1`.
    #[serde(default)]
    pub display_name: String,
    /// Policies attached to the token itself (including `default`).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Policies the token gets from its identity entity and groups.
    #[serde(default)]
    pub identity_policies: Vec<String>,
    /// Auth path that created it, e.g. `auth/cert/login`.
    #[serde(default)]
    pub path: String,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    /// Remaining TTL, seconds (0 = no expiry).
    #[serde(default)]
    pub ttl: i64,
}

/// Token endpoints.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TokenApi: Send + Sync {
    /// `GET /auth/token/lookup-self`.
    /// <https://openbao.org/api-docs/auth/token/#lookup-a-token-self>
    async fn lookup_self(&self) -> Result<TokenInfo>;

    /// `POST /auth/token/revoke-accessor`: revoke the token behind `accessor` (e.g. a
    /// gate's login token) without handling the token itself.
    /// <https://openbao.org/api-docs/auth/token/#revoke-a-token-accessor>
    async fn revoke_accessor(&self, accessor: &str) -> Result<()>;

    /// `POST /sys/capabilities-self`: what the calling token may do on each of `paths`.
    /// <https://openbao.org/api-docs/system/capabilities-self/>
    async fn capabilities_self(&self, paths: &[String]) -> Result<BTreeMap<String, Vec<String>>>;
}

/// Paths per `sys/capabilities-self` request: far below what OpenBao's JSON limits refuse
/// (a few hundred paths of a 200-app run already were), and few requests for 1,000 apps.
const CAPABILITY_PATHS_PER_REQUEST: usize = 200;

#[async_trait]
impl TokenApi for VaultClient {
    async fn lookup_self(&self) -> Result<TokenInfo> {
        #[derive(Deserialize)]
        struct D {
            data: TokenInfo,
        }
        let d: D = self
            .request_some(Method::Get, "auth/token/lookup-self", None, Idempotent)
            .await?;
        Ok(d.data)
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Post,
            "auth/token/revoke-accessor",
            Some(serde_json::json!({ "accessor": accessor })),
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn capabilities_self(&self, paths: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
        // OpenBao refuses a body with too many strings ("high complexity"): ask in chunks.
        let mut out = BTreeMap::new();
        for chunk in paths.chunks(CAPABILITY_PATHS_PER_REQUEST) {
            let v: serde_json::Value = self
                .request_some(
                    Method::Post,
                    "sys/capabilities-self",
                    Some(serde_json::json!({ "paths": chunk })),
                    Idempotent,
                )
                .await?;
            // The answer has one key per path (at the top level and under `data`).
            let data = v.get("data").unwrap_or(&v);
            for p in chunk {
                let caps = data
                    .get(p)
                    .and_then(|c| c.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(p.clone(), caps);
            }
        }
        Ok(out)
    }
}
