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
    /// Policies.
    #[serde(default)]
    pub policies: Vec<String>,
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
}

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
}
