//! PKI secrets engine: roles, issuance (`issue`, `sign`), issuers and the CA chain.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::client::VaultClient;
use crate::error::Result;
use crate::retry::Idempotency::{Idempotent, NonIdempotent};
use crate::transport::Method;

/// Parameters of `issue` / `sign`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IssueRequest {
    /// Common name.
    pub common_name: String,
    /// DNS SANs, comma separated on the wire.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "comma")]
    pub alt_names: Vec<String>,
    /// IP SANs.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "comma")]
    pub ip_sans: Vec<String>,
    /// Requested TTL, e.g. `720h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `pem` (default) or `pem_bundle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Exclude the CN from SANs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exclude_cn_from_sans: bool,
}

fn comma<S: serde::Serializer>(v: &[String], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(","))
}

/// A certificate Vault issued or signed. The private key (only from `issue`) is wiped on
/// drop and never printed.
#[derive(Clone, Deserialize)]
pub struct IssuedCert {
    /// The leaf certificate, PEM.
    pub certificate: String,
    /// The issuing CA certificate, PEM.
    pub issuing_ca: String,
    /// The chain above the leaf, PEM each.
    #[serde(default)]
    pub ca_chain: Vec<String>,
    /// The private key (PEM), present for `issue`, absent for `sign`.
    #[serde(default)]
    pub private_key: Option<Zeroizing<String>>,
    /// Key type, e.g. `rsa`, `ec`.
    #[serde(default)]
    pub private_key_type: Option<String>,
    /// Serial, `aa:bb:..` hex.
    pub serial_number: String,
    /// notAfter, Unix seconds.
    #[serde(default)]
    pub expiration: i64,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_number", &self.serial_number)
            .field("expiration", &self.expiration)
            .field("ca_chain", &self.ca_chain.len())
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// One issuer of a PKI mount.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IssuerInfo {
    /// Issuer id (UUID).
    pub issuer_id: String,
    /// Issuer name, may be empty.
    #[serde(default)]
    pub issuer_name: String,
    /// The issuer certificate, PEM.
    pub certificate: String,
    /// The chain from this issuer upward, PEM each.
    #[serde(default)]
    pub ca_chain: Vec<String>,
}

/// A stored certificate (`GET /:mount/cert/:serial`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CertRecord {
    /// PEM.
    #[serde(default)]
    pub certificate: String,
    /// Unix seconds of revocation; 0 = not revoked.
    #[serde(default)]
    pub revocation_time: i64,
}

/// PKI endpoints. The mount (e.g. `pki-prod`) is always explicit.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PkiApi: Send + Sync {
    /// `GET /:mount/roles/:name`: the role's parameters, `None` if absent.
    /// <https://openbao.org/api-docs/secret/pki/#read-role>
    async fn read_role(&self, mount: &str, name: &str) -> Result<Option<Map<String, Value>>>;

    /// `POST /:mount/roles/:name`: create or replace the role with `params`. Vault rebuilds
    /// the role from its defaults on every write: fields not given are reset, so an update
    /// must send the whole role (as `pki_ops::upsert_role` does).
    /// <https://openbao.org/api-docs/secret/pki/#createupdate-role>
    async fn write_role(&self, mount: &str, name: &str, params: Map<String, Value>) -> Result<()>;

    /// `DELETE /:mount/roles/:name`: remove a role.
    /// <https://openbao.org/api-docs/secret/pki/#delete-role>
    async fn delete_role(&self, mount: &str, name: &str) -> Result<()>;

    /// `POST /:mount/revoke`: revoke the certificate with `serial` (`aa:bb:..` hex).
    /// Revoking an already revoked certificate succeeds.
    /// <https://openbao.org/api-docs/secret/pki/#revoke-certificate>
    async fn revoke(&self, mount: &str, serial: &str) -> Result<()>;

    /// `GET /:mount/cert/:serial`: the stored certificate and its revocation time
    /// (0 = not revoked); `None` if unknown.
    /// <https://openbao.org/api-docs/secret/pki/#read-certificate-serial-number>
    async fn read_cert(&self, mount: &str, serial: &str) -> Result<Option<CertRecord>>;

    /// `LIST /:mount/certs`: the serials (`aa:bb:..` hex) of every certificate the mount
    /// stored (issued and not tidied away); empty when there are none.
    /// <https://openbao.org/api-docs/secret/pki/#list-certificates>
    async fn list_certs(&self, mount: &str) -> Result<Vec<String>>;

    /// `POST /:mount/issue/:role`: Vault generates the key and issues. Not idempotent.
    /// <https://openbao.org/api-docs/secret/pki/#generate-certificate-and-key>
    async fn issue(&self, mount: &str, role: &str, req: &IssueRequest) -> Result<IssuedCert>;

    /// `POST /:mount/sign/:role`: sign a locally generated CSR (PEM); the key stays on the host.
    /// <https://openbao.org/api-docs/secret/pki/#sign-certificate>
    async fn sign(
        &self,
        mount: &str,
        role: &str,
        csr_pem: &str,
        req: &IssueRequest,
    ) -> Result<IssuedCert>;

    /// `GET /:mount/cert/ca_chain`: the default issuer's chain, PEM (concatenated).
    /// <https://openbao.org/api-docs/secret/pki/#read-issuer-certificate>
    async fn read_ca_chain(&self, mount: &str) -> Result<String>;

    /// `LIST /:mount/issuers`: issuer ids.
    /// <https://openbao.org/api-docs/secret/pki/#list-issuers>
    async fn list_issuers(&self, mount: &str) -> Result<Vec<String>>;

    /// `GET /:mount/issuer/:ref`: one issuer (`default`, a name or an id).
    /// <https://openbao.org/api-docs/secret/pki/#read-issuer>
    async fn read_issuer(&self, mount: &str, issuer_ref: &str) -> Result<Option<IssuerInfo>>;

    /// `POST /:mount/config/ca`: import a PEM bundle (issuer certificate, key, chain).
    /// <https://openbao.org/api-docs/secret/pki/#import-ca-certificates-and-keys>
    async fn import_ca_bundle(&self, mount: &str, pem_bundle: &str) -> Result<()>;
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct Keys {
    #[serde(default)]
    keys: Vec<String>,
}

fn m(mount: &str) -> &str {
    mount.trim_matches('/')
}

#[async_trait]
impl PkiApi for VaultClient {
    async fn read_role(&self, mount: &str, name: &str) -> Result<Option<Map<String, Value>>> {
        let d: Option<Data<_>> = self
            .request_opt(
                Method::Get,
                &format!("{}/roles/{name}", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data))
    }

    async fn write_role(&self, mount: &str, name: &str, params: Map<String, Value>) -> Result<()> {
        self.request::<Value>(
            Method::Post,
            &format!("{}/roles/{name}", m(mount)),
            Some(Value::Object(params)),
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn delete_role(&self, mount: &str, name: &str) -> Result<()> {
        self.request::<Value>(
            Method::Delete,
            &format!("{}/roles/{name}", m(mount)),
            None,
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn revoke(&self, mount: &str, serial: &str) -> Result<()> {
        self.request::<Value>(
            Method::Post,
            &format!("{}/revoke", m(mount)),
            Some(serde_json::json!({ "serial_number": serial })),
            Idempotent,
        )
        .await?;
        Ok(())
    }

    async fn read_cert(&self, mount: &str, serial: &str) -> Result<Option<CertRecord>> {
        let d: Option<Data<CertRecord>> = self
            .request_opt(
                Method::Get,
                &format!("{}/cert/{serial}", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data))
    }

    async fn list_certs(&self, mount: &str) -> Result<Vec<String>> {
        let d: Option<Data<Keys>> = self
            .request_opt(
                Method::List,
                &format!("{}/certs", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data.keys).unwrap_or_default())
    }

    async fn issue(&self, mount: &str, role: &str, req: &IssueRequest) -> Result<IssuedCert> {
        let body = serde_json::to_value(req).unwrap_or_default();
        let d: Data<_> = self
            .request_some(
                Method::Post,
                &format!("{}/issue/{role}", m(mount)),
                Some(body),
                NonIdempotent,
            )
            .await?;
        Ok(d.data)
    }

    async fn sign(
        &self,
        mount: &str,
        role: &str,
        csr_pem: &str,
        req: &IssueRequest,
    ) -> Result<IssuedCert> {
        let mut body = serde_json::to_value(req).unwrap_or_default();
        if let Value::Object(o) = &mut body {
            o.insert("csr".into(), json!(csr_pem));
        }
        let d: Data<_> = self
            .request_some(
                Method::Post,
                &format!("{}/sign/{role}", m(mount)),
                Some(body),
                NonIdempotent,
            )
            .await?;
        Ok(d.data)
    }

    async fn read_ca_chain(&self, mount: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct C {
            // A string here (OpenBao), an array on the issuer endpoints.
            #[serde(default)]
            ca_chain: Option<Value>,
            certificate: String,
        }
        let d: Data<C> = self
            .request_some(
                Method::Get,
                &format!("{}/cert/ca_chain", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(match d.data.ca_chain {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => d.data.certificate,
        })
    }

    async fn list_issuers(&self, mount: &str) -> Result<Vec<String>> {
        let d: Option<Data<Keys>> = self
            .request_opt(
                Method::List,
                &format!("{}/issuers", m(mount)),
                None,
                Idempotent,
            )
            .await?;
        Ok(d.map(|d| d.data.keys).unwrap_or_default())
    }

    async fn read_issuer(&self, mount: &str, issuer_ref: &str) -> Result<Option<IssuerInfo>> {
        let path = format!("{}/issuer/{issuer_ref}", m(mount));
        // OpenBao answers an unknown reference with a 500, not a 404: that answer is
        // final (not retried) and means "none"; any other 500 is an error.
        let resp = self
            .send_accepting(Method::Get, &path, None, Idempotent, &[500])
            .await?;
        let unknown = resp.status == 500
            && resp
                .body
                .windows(b"unable to find PKI issuer".len())
                .any(|w| w == b"unable to find PKI issuer");
        if unknown || resp.status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&resp.status) {
            return Err(crate::client::api_error(Method::Get, &path, &resp));
        }
        let d: Option<Data<IssuerInfo>> = crate::client::decode(Method::Get, &path, &resp)?;
        Ok(d.map(|d| d.data))
    }

    async fn import_ca_bundle(&self, mount: &str, pem_bundle: &str) -> Result<()> {
        self.request::<Value>(
            Method::Post,
            &format!("{}/config/ca", m(mount)),
            Some(json!({ "pem_bundle": pem_bundle })),
            Idempotent,
        )
        .await?;
        Ok(())
    }
}
