//! The cert auth method: mappings (`auth/<mount>/certs/<name>`) and login.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::client::VaultClient;
use crate::error::{Error, Result};
use crate::retry::Idempotency::{Idempotent, NonIdempotent};
use crate::transport::Method;

/// A cert auth mapping ("certificate role"): which CA and names it accepts, which policies
/// the token gets.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CertRole {
    /// PEM CA certificate(s) a client certificate must chain to.
    #[serde(default)]
    pub certificate: String,
    /// Common names (globs) accepted; empty accepts any.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub allowed_common_names: Vec<String>,
    /// Policies attached to the token.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub token_policies: Vec<String>,
    /// Token TTL in seconds (0 = system default).
    #[serde(default)]
    pub token_ttl: u64,
    /// Token max TTL in seconds (0 = system default).
    #[serde(default)]
    pub token_max_ttl: u64,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Every other field Vault returns, kept so a read-modify-write loses nothing.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The `auth` block of a login answer. The token is wiped on drop and never printed.
#[derive(Clone, Deserialize)]
pub struct AuthInfo {
    /// The token.
    pub client_token: Zeroizing<String>,
    /// Token accessor (not secret).
    #[serde(default)]
    pub accessor: String,
    /// All policies of the token (including `default`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub policies: Vec<String>,
    /// The policies attached by the mapping.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub token_policies: Vec<String>,
    /// Policies the token gets from an identity entity or group (not from the mapping).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub identity_policies: Vec<String>,
    /// Metadata, e.g. `cert_name`, `common_name`, `serial_number` (decimal).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// TTL in seconds.
    #[serde(default)]
    pub lease_duration: u64,
    /// Renewable?
    #[serde(default)]
    pub renewable: bool,
}

impl std::fmt::Debug for AuthInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInfo")
            .field("client_token", &"<redacted>")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("token_policies", &self.token_policies)
            .field("identity_policies", &self.identity_policies)
            .field("metadata", &self.metadata)
            .field("lease_duration", &self.lease_duration)
            .finish()
    }
}

/// Cert auth endpoints. The mount (usually `cert`) is always explicit.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait CertAuthApi: Send + Sync {
    /// `GET /auth/:mount/certs/:name`: the mapping, `None` if absent.
    /// <https://openbao.org/api-docs/auth/cert/#read-ca-certificate-role>
    async fn read_cert_role(&self, mount: &str, name: &str) -> Result<Option<CertRole>>;

    /// `POST /auth/:mount/certs/:name`: create or replace the mapping.
    /// <https://openbao.org/api-docs/auth/cert/#create-ca-certificate-role>
    async fn write_cert_role(&self, mount: &str, name: &str, role: &CertRole) -> Result<()>;

    /// `LIST /auth/:mount/certs`: mapping names.
    /// <https://openbao.org/api-docs/auth/cert/#list-certificate-roles>
    async fn list_cert_roles(&self, mount: &str) -> Result<Vec<String>>;

    /// `DELETE /auth/:mount/certs/:name`.
    /// <https://openbao.org/api-docs/auth/cert/#delete-certificate-role>
    async fn delete_cert_role(&self, mount: &str, name: &str) -> Result<()>;

    /// `POST /auth/:mount/login`: log in with the client certificate this client presents,
    /// against the mapping `name`, or against every mapping when `name` is empty (what an
    /// agent without a `name` does). Not idempotent (creates a token).
    /// <https://openbao.org/api-docs/auth/cert/#login-with-tls-certificate-method>
    async fn cert_login(&self, mount: &str, name: &str) -> Result<AuthInfo>;
}

fn m(mount: &str) -> &str {
    mount.trim_matches('/')
}

#[async_trait]
impl CertAuthApi for VaultClient {
    async fn read_cert_role(&self, mount: &str, name: &str) -> Result<Option<CertRole>> {
        #[derive(Deserialize)]
        struct D {
            data: CertRole,
        }
        let d: Option<D> = self
            .request_opt(
                Method::Get,
                &format!("auth/{}/certs/{name}", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data))
    }

    async fn write_cert_role(&self, mount: &str, name: &str, role: &CertRole) -> Result<()> {
        let mut body = serde_json::to_value(role).unwrap_or_default();
        if let Value::Object(o) = &mut body {
            // Vault takes lists as arrays or comma strings; arrays keep names with commas intact.
            o.retain(|_, v| !v.is_null());
        }
        self.request::<Value>(
            Method::Post,
            &format!("auth/{}/certs/{name}", m(mount)),
            Some(body),
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn list_cert_roles(&self, mount: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct D {
            data: K,
        }
        #[derive(Deserialize)]
        struct K {
            #[serde(default)]
            keys: Vec<String>,
        }
        let d: Option<D> = self
            .request_opt(
                Method::List,
                &format!("auth/{}/certs", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data.keys).unwrap_or_default())
    }

    async fn delete_cert_role(&self, mount: &str, name: &str) -> Result<()> {
        self.request::<Value>(
            Method::Delete,
            &format!("auth/{}/certs/{name}", m(mount)),
            None,
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn cert_login(&self, mount: &str, name: &str) -> Result<AuthInfo> {
        #[derive(Deserialize)]
        struct L {
            auth: Option<AuthInfo>,
        }
        let path = format!("auth/{}/login", m(mount));
        let body = if name.is_empty() {
            json!({})
        } else {
            json!({ "name": name })
        };
        let l: L = self
            .request_some(Method::Post, &path, Some(body), NonIdempotent)
            .await?;
        l.auth.ok_or_else(|| Error::Decode {
            method: "POST".into(),
            path,
            reason: "login answer has no auth block".into(),
        })
    }
}
