//! `sys/*`: health, seal status, init/unseal, mounts, auth methods, ACL policies.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{VaultClient, api_error, decode};
use crate::error::{Error, Result};
use crate::retry::Idempotency::{Idempotent, NonIdempotent};
use crate::transport::Method;

/// The body of `sys/health` (the same for every status code).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HealthBody {
    /// Whether the storage has been initialised.
    pub initialized: bool,
    /// Whether the server is sealed.
    pub sealed: bool,
    /// Whether this node is a standby.
    pub standby: bool,
    /// Whether this node is a performance standby.
    #[serde(default)]
    pub performance_standby: bool,
    /// Server version, e.g. `2.7.2`.
    #[serde(default)]
    pub version: String,
    /// Cluster name, once unsealed.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// Server clock, Unix seconds.
    #[serde(default)]
    pub server_time_utc: Option<i64>,
}

/// What the `sys/health` status code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// 200: initialised, unsealed, active.
    Active,
    /// 429: unsealed standby.
    Standby,
    /// 472: disaster-recovery secondary.
    DrSecondary,
    /// 473: performance standby.
    PerformanceStandby,
    /// 474: standby but not ready to serve.
    StandbyNotReady,
    /// 501: not initialised.
    NotInitialized,
    /// 503: sealed.
    Sealed,
}

impl HealthState {
    /// The state a `sys/health` status code stands for.
    pub fn from_status(code: u16) -> Option<Self> {
        Some(match code {
            200 => HealthState::Active,
            429 => HealthState::Standby,
            472 => HealthState::DrSecondary,
            473 => HealthState::PerformanceStandby,
            474 => HealthState::StandbyNotReady,
            501 => HealthState::NotInitialized,
            503 => HealthState::Sealed,
            _ => return None,
        })
    }
}

/// A parsed `sys/health` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The HTTP status code.
    pub status: u16,
    /// Its meaning.
    pub state: HealthState,
    /// The body.
    #[serde(flatten)]
    pub body: HealthBody,
}

/// `sys/seal-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SealStatus {
    /// Seal type, e.g. `shamir`.
    #[serde(rename = "type")]
    pub seal_type: String,
    /// Initialised?
    pub initialized: bool,
    /// Sealed?
    pub sealed: bool,
    /// Unseal threshold.
    pub t: u32,
    /// Number of key shares.
    pub n: u32,
    /// Unseal progress.
    pub progress: u32,
    /// Server version.
    #[serde(default)]
    pub version: String,
    /// Storage backend type.
    #[serde(default)]
    pub storage_type: Option<String>,
    /// Cluster name, once unsealed.
    #[serde(default)]
    pub cluster_name: Option<String>,
}

/// The answer of `sys/init`. Holds the root token and unseal keys: wiped on drop, never printed.
#[derive(Deserialize)]
pub struct InitResponse {
    /// Unseal keys (hex).
    pub keys: Vec<Zeroizing<String>>,
    /// Unseal keys (base64).
    #[serde(default)]
    pub keys_base64: Vec<Zeroizing<String>>,
    /// The initial root token.
    pub root_token: Zeroizing<String>,
}

impl std::fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitResponse")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("root_token", &"<redacted>")
            .finish()
    }
}

/// A secrets-engine or auth-method mount, as `sys/mounts` and `sys/auth` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct MountInfo {
    /// Engine or method type, e.g. `kv`, `pki`, `cert`.
    #[serde(rename = "type")]
    pub mount_type: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Accessor.
    #[serde(default)]
    pub accessor: String,
    /// Options, e.g. `{"version": "2"}` for KV v2.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
}

impl MountInfo {
    /// The KV version of a `kv` mount: `options.version` ("2" -> 2), 1 when absent.
    /// `None` for a mount that is not KV.
    pub fn kv_version(&self) -> Option<u32> {
        if self.mount_type != "kv" && self.mount_type != "generic" {
            return None;
        }
        let v = self.options.as_ref().and_then(|o| o.get("version"));
        Some(v.and_then(|v| v.parse().ok()).unwrap_or(1))
    }
}

/// `sys/*` endpoints.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SysApi: Send + Sync {
    /// `GET /sys/health` (unauthenticated). Every documented status (200, 429, 472, 473,
    /// 474, 501, 503) is an answer, not an error.
    /// <https://openbao.org/api-docs/system/health/>
    async fn health(&self) -> Result<Health>;

    /// `GET /sys/seal-status` (unauthenticated).
    /// <https://openbao.org/api-docs/system/seal-status/>
    async fn seal_status(&self) -> Result<SealStatus>;

    /// `PUT /sys/init`: initialise with `shares` Shamir keys, `threshold` needed.
    /// <https://openbao.org/api-docs/system/init/>
    async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse>;

    /// `PUT /sys/unseal` with one key share.
    /// <https://openbao.org/api-docs/system/unseal/>
    async fn unseal(&self, key: &str) -> Result<SealStatus>;

    /// `GET /sys/mounts`: secrets engines by path (with trailing `/`).
    /// <https://openbao.org/api-docs/system/mounts/#list-mounted-secrets-engines>
    async fn list_mounts(&self) -> Result<BTreeMap<String, MountInfo>>;

    /// `POST /sys/mounts/:path`: mount a secrets engine; `options` e.g. `{"version":"2"}`.
    /// <https://openbao.org/api-docs/system/mounts/#enable-secrets-engine>
    async fn enable_mount(
        &self,
        path: &str,
        engine: &str,
        options: BTreeMap<String, String>,
    ) -> Result<()>;

    /// `GET /sys/auth`: auth methods by path (with trailing `/`).
    /// <https://openbao.org/api-docs/system/auth/#list-auth-methods>
    async fn list_auth(&self) -> Result<BTreeMap<String, MountInfo>>;

    /// `POST /sys/auth/:path`: enable an auth method of `method` type at `path`, with
    /// `description` (shown by `sys/auth`; e.g. who enabled it).
    /// <https://openbao.org/api-docs/system/auth/#enable-auth-method>
    async fn enable_auth(&self, path: &str, method: &str, description: &str) -> Result<()>;

    /// `GET /sys/policies/acl/:name`: the policy text, `None` if absent.
    /// <https://openbao.org/api-docs/system/policies/#read-acl-policy>
    async fn read_policy(&self, name: &str) -> Result<Option<String>>;

    /// `PUT /sys/policies/acl/:name`: create or replace the policy.
    /// <https://openbao.org/api-docs/system/policies/#create-update-acl-policy>
    async fn write_policy(&self, name: &str, policy: &str) -> Result<()>;

    /// `DELETE /sys/policies/acl/:name`: remove an ACL policy (absent is not an error).
    /// <https://openbao.org/api-docs/system/policies/#delete-acl-policy>
    async fn delete_policy(&self, name: &str) -> Result<()>;

    /// `DELETE /sys/auth/:path`: disable an auth method (absent is not an error).
    /// <https://openbao.org/api-docs/system/auth/#disable-auth-method>
    async fn disable_auth(&self, path: &str) -> Result<()>;

    /// `GET /sys/storage/raft/autopilot/state`: the raft cluster as autopilot sees it;
    /// `None` when the storage is not raft.
    /// <https://openbao.org/api-docs/system/storage/raftautopilot/>
    async fn raft_autopilot_state(&self) -> Result<Option<AutopilotState>>;

    /// `GET /sys/leader`: whether this node leads, and the active node's address.
    /// <https://openbao.org/api-docs/system/leader/>
    async fn leader(&self) -> Result<Leader>;
}

/// `sys/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Leader {
    /// HA is enabled (a cluster).
    #[serde(default)]
    pub ha_enabled: bool,
    /// The node that answered is the active one.
    #[serde(default)]
    pub is_self: bool,
    /// The active node's API address (empty while none is elected).
    #[serde(default)]
    pub leader_address: String,
}

/// `sys/storage/raft/autopilot/state`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AutopilotState {
    /// Every server healthy.
    pub healthy: bool,
    /// How many voters may fail with the cluster still keeping a quorum.
    pub failure_tolerance: u32,
    /// The leader's node id.
    #[serde(default)]
    pub leader: String,
    /// Every server, by node id.
    #[serde(default)]
    pub servers: BTreeMap<String, AutopilotServer>,
}

/// One server in [`AutopilotState`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AutopilotServer {
    /// Node id.
    #[serde(default)]
    pub id: String,
    /// Its cluster address.
    #[serde(default)]
    pub address: String,
    /// `alive`, `left`, `failed`.
    #[serde(default)]
    pub node_status: String,
    /// `leader`, `voter`, `non-voter`.
    #[serde(default)]
    pub status: String,
    /// Heartbeats and replication keep up.
    #[serde(default)]
    pub healthy: bool,
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

fn trim(path: &str) -> &str {
    path.trim_matches('/')
}

#[async_trait]
impl SysApi for VaultClient {
    async fn health(&self) -> Result<Health> {
        let path = "sys/health";
        let answers = [200, 429, 472, 473, 474, 501, 503];
        let resp = self
            .send_accepting(Method::Get, path, None, Idempotent, &answers)
            .await?;
        let Some(state) = HealthState::from_status(resp.status) else {
            return Err(api_error(Method::Get, path, &resp));
        };
        let body =
            decode::<HealthBody>(Method::Get, path, &resp)?.ok_or_else(|| Error::Decode {
                method: "GET".into(),
                path: path.into(),
                reason: format!("empty body with status {}", resp.status),
            })?;
        Ok(Health {
            status: resp.status,
            state,
            body,
        })
    }

    async fn seal_status(&self) -> Result<SealStatus> {
        self.request_some(Method::Get, "sys/seal-status", None, Idempotent)
            .await
    }

    async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse> {
        let body = json!({"secret_shares": shares, "secret_threshold": threshold});
        self.request_some(Method::Put, "sys/init", Some(body), NonIdempotent)
            .await
    }

    async fn unseal(&self, key: &str) -> Result<SealStatus> {
        let body = json!({ "key": key });
        self.request_some(Method::Put, "sys/unseal", Some(body), Idempotent)
            .await
    }

    async fn list_mounts(&self) -> Result<BTreeMap<String, MountInfo>> {
        let d: Data<_> = self
            .request_some(Method::Get, "sys/mounts", None, Idempotent)
            .await?;
        Ok(d.data)
    }

    async fn enable_mount(
        &self,
        path: &str,
        engine: &str,
        options: BTreeMap<String, String>,
    ) -> Result<()> {
        let body = json!({"type": engine, "options": options});
        self.request::<serde_json::Value>(
            Method::Post,
            &format!("sys/mounts/{}", trim(path)),
            Some(body),
            NonIdempotent,
        )
        .await?;
        Ok(())
    }

    async fn list_auth(&self) -> Result<BTreeMap<String, MountInfo>> {
        let d: Data<_> = self
            .request_some(Method::Get, "sys/auth", None, Idempotent)
            .await?;
        Ok(d.data)
    }

    async fn enable_auth(&self, path: &str, method: &str, description: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Post,
            &format!("sys/auth/{}", trim(path)),
            Some(json!({ "type": method, "description": description })),
            NonIdempotent,
        )
        .await?;
        Ok(())
    }

    async fn read_policy(&self, name: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct P {
            policy: String,
        }
        let d: Option<Data<P>> = self
            .request_opt(
                Method::Get,
                &format!("sys/policies/acl/{name}"),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data.policy))
    }

    async fn write_policy(&self, name: &str, policy: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Put,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": policy })),
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn delete_policy(&self, name: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Delete,
            &format!("sys/policies/acl/{name}"),
            None,
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn disable_auth(&self, path: &str) -> Result<()> {
        self.request::<serde_json::Value>(
            Method::Delete,
            &format!("sys/auth/{}", path.trim_matches('/')),
            None,
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn leader(&self) -> Result<Leader> {
        self.request_some(Method::Get, "sys/leader", None, Idempotent)
            .await
    }

    async fn raft_autopilot_state(&self) -> Result<Option<AutopilotState>> {
        let v: Option<serde_json::Value> = match self
            .request(
                Method::Get,
                "sys/storage/raft/autopilot/state",
                None,
                Idempotent,
            )
            .await
        {
            Ok(v) => v,
            // Not raft storage (or no autopilot): nothing to report.
            Err(e) if matches!(e.status(), Some(400 | 404 | 405 | 501)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(v) = v else { return Ok(None) };
        let data = v.get("data").cloned().unwrap_or(v);
        serde_json::from_value(data)
            .map(Some)
            .map_err(|e| Error::Decode {
                method: "GET".into(),
                path: "sys/storage/raft/autopilot/state".into(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_version_from_options() {
        let m = |t: &str, v: Option<&str>| MountInfo {
            mount_type: t.into(),
            description: String::new(),
            accessor: String::new(),
            options: v.map(|v| BTreeMap::from([("version".to_string(), v.to_string())])),
        };
        assert_eq!(m("kv", Some("2")).kv_version(), Some(2));
        assert_eq!(m("kv", Some("1")).kv_version(), Some(1));
        assert_eq!(m("kv", None).kv_version(), Some(1));
        assert_eq!(m("pki", None).kv_version(), None);
    }

    #[tokio::test]
    async fn health_parses_the_body_of_every_documented_status() {
        use crate::transport::{HttpResponse, MockTransport};
        use std::sync::Arc;
        for (code, state, sealed, standby) in [
            (200, HealthState::Active, false, false),
            (429, HealthState::Standby, false, true),
            (472, HealthState::DrSecondary, false, false),
            (473, HealthState::PerformanceStandby, false, true),
            (474, HealthState::StandbyNotReady, false, true),
            (501, HealthState::NotInitialized, true, false),
            (503, HealthState::Sealed, true, false),
        ] {
            let body = format!(
                r#"{{"initialized":{},"sealed":{sealed},"standby":{standby},"version":"2.7.2"}}"#,
                code != 501
            );
            let mut t = MockTransport::new();
            t.expect_send().times(1).returning(move |_| {
                Ok(HttpResponse {
                    status: code,
                    body: Zeroizing::new(body.clone().into_bytes()),
                })
            });
            let c = VaultClient::with_transport(Arc::new(t), crate::RetryPolicy::default());
            let h = c.health().await.unwrap();
            assert_eq!((h.status, h.state), (code, state));
            assert_eq!((h.body.sealed, h.body.standby), (sealed, standby));
            assert_eq!(h.body.initialized, code != 501);
            assert_eq!(h.body.version, "2.7.2");
        }
    }

    #[test]
    fn every_documented_health_code_has_a_state() {
        for code in [200, 429, 472, 473, 474, 501, 503] {
            assert!(HealthState::from_status(code).is_some(), "{code}");
        }
        assert_eq!(HealthState::from_status(500), None);
    }
}
