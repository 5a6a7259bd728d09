//! KV version 2 secrets engine: read, write (with check-and-set), metadata.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::VaultClient;
use crate::error::Result;
use crate::retry::Idempotency::{Idempotent, NonIdempotent};
use crate::transport::Method;

/// Version metadata of one KV v2 secret version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct KvVersion {
    /// Version number.
    pub version: u64,
    /// Creation time (RFC 3339).
    #[serde(default)]
    pub created_time: String,
    /// Deletion time, empty if not deleted.
    #[serde(default)]
    pub deletion_time: String,
    /// Destroyed?
    #[serde(default)]
    pub destroyed: bool,
}

/// A KV v2 secret. `Debug` shows the keys, never the values.
#[derive(Clone, Deserialize)]
pub struct KvSecret {
    /// The key/value data.
    pub data: Map<String, Value>,
    /// This version's metadata.
    pub metadata: KvVersion,
}

impl std::fmt::Debug for KvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSecret")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// Metadata of a KV v2 secret (all versions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct KvMetadata {
    /// Current version number.
    pub current_version: u64,
    /// Oldest kept version.
    #[serde(default)]
    pub oldest_version: u64,
    /// Creation time (RFC 3339).
    #[serde(default)]
    pub created_time: String,
    /// Last update time (RFC 3339).
    #[serde(default)]
    pub updated_time: String,
}

/// KV v2 endpoints. The mount (e.g. `kv`) is always explicit; `path` is the secret's path
/// inside the mount (`ncprd1`, not `kv/data/ncprd1`).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait KvApi: Send + Sync {
    /// `GET /:mount/data/:path`: the latest version, `None` if absent or deleted.
    /// <https://openbao.org/api-docs/secret/kv/kv-v2/#read-secret-version>
    async fn kv2_read(&self, mount: &str, path: &str) -> Result<Option<KvSecret>>;

    /// `POST /:mount/data/:path`: write a new version. `cas = Some(0)` writes only if the
    /// secret does not exist (Vault refuses otherwise), which makes "seed if missing" atomic.
    /// <https://openbao.org/api-docs/secret/kv/kv-v2/#create-update-secret>
    async fn kv2_write(
        &self,
        mount: &str,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<KvVersion>;

    /// `GET /:mount/metadata/:path`: `None` if the secret never existed.
    /// <https://openbao.org/api-docs/secret/kv/kv-v2/#read-secret-metadata>
    async fn kv2_read_metadata(&self, mount: &str, path: &str) -> Result<Option<KvMetadata>>;

    /// `DELETE /:mount/metadata/:path`: delete a KV v2 secret, every version and its
    /// metadata.
    /// <https://openbao.org/api-docs/secret/kv/kv-v2/#delete-metadata-and-all-versions>
    async fn kv2_delete_metadata(&self, mount: &str, path: &str) -> Result<()>;
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

fn m(mount: &str) -> &str {
    mount.trim_matches('/')
}

#[async_trait]
impl KvApi for VaultClient {
    async fn kv2_read(&self, mount: &str, path: &str) -> Result<Option<KvSecret>> {
        #[derive(Deserialize)]
        struct Raw {
            data: Option<Map<String, Value>>,
            metadata: KvVersion,
        }
        let d: Option<Data<Raw>> = self
            .request_opt(
                Method::Get,
                &format!("{}/data/{path}", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.and_then(|d| {
            d.data.data.map(|data| KvSecret {
                data,
                metadata: d.data.metadata,
            })
        }))
    }

    async fn kv2_write(
        &self,
        mount: &str,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<KvVersion> {
        let mut body = json!({ "data": data });
        if let Some(cas) = cas {
            body["options"] = json!({ "cas": cas });
        }
        let d: Data<_> = self
            .request_some(
                Method::Post,
                &format!("{}/data/{path}", m(mount)),
                Some(body),
                NonIdempotent,
            )
            .await?;
        Ok(d.data)
    }

    async fn kv2_read_metadata(&self, mount: &str, path: &str) -> Result<Option<KvMetadata>> {
        let d: Option<Data<_>> = self
            .request_opt(
                Method::Get,
                &format!("{}/metadata/{path}", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data))
    }

    async fn kv2_delete_metadata(&self, mount: &str, path: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Delete,
            &format!("{}/metadata/{path}", m(mount)),
            None,
            Idempotent,
        )
        .await?;
        Ok(())
    }
}
