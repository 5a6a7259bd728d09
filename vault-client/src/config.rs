//! Client configuration: from a builder or from the standard `VAULT_*` / `BAO_*` environment.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Everything needed to build a [`crate::VaultClient`].
///
/// Paths are read when the client is built; a configured file that cannot be read or
/// parsed is an error, never silently dropped.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base address, e.g. `https://127.0.0.1:22400`.
    pub addr: Url,
    /// PEM CA bundle to trust (`VAULT_CACERT`). When set (or `ca_path`), only these CAs are trusted.
    pub ca_cert: Option<PathBuf>,
    /// Directory of PEM CA certificates (`VAULT_CAPATH`).
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate for mTLS (`VAULT_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for mTLS (`VAULT_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// Name to verify the server certificate against and send as SNI
    /// (`VAULT_TLS_SERVER_NAME`), while connecting to `addr`.
    pub tls_server_name: Option<String>,
    /// Token sent as `X-Vault-Token` (`VAULT_TOKEN`).
    pub token: Option<Zeroizing<String>>,
    /// Namespace sent as `X-Vault-Namespace` (`VAULT_NAMESPACE`).
    pub namespace: Option<String>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout, per attempt.
    pub request_timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Contents of some of the files above, read by the caller (e.g. through a directory
    /// fd without following symlinks, from a tree another user controls): used instead
    /// of reading those paths, which still name the files in errors. See
    /// [`ClientConfig::preload`].
    preloaded: Vec<(PathBuf, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr.as_str())
            .field("ca_cert", &self.ca_cert)
            .field("ca_path", &self.ca_path)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("tls_server_name", &self.tls_server_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field(
                "preloaded",
                &self.preloaded.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The default address, as the Vault CLI uses.
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";

impl ClientConfig {
    /// A configuration for `addr` with defaults for everything else.
    pub fn new(addr: &str) -> Result<Self> {
        Ok(ClientConfig {
            addr: parse_addr("addr", addr)?,
            ca_cert: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            token: None,
            namespace: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            preloaded: Vec::new(),
        })
    }

    /// Read the standard environment: `VAULT_ADDR`, `VAULT_CACERT`, `VAULT_CAPATH`,
    /// `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`, `VAULT_TLS_SERVER_NAME`, `VAULT_TOKEN`,
    /// `VAULT_NAMESPACE`, `VAULT_SKIP_VERIFY`. A `BAO_*` twin wins over its `VAULT_*` name,
    /// as in the `bao` CLI. Empty values count as unset.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`ClientConfig::from_env`], reading variables through `lookup` (for tests and
    /// for tools that keep their own environment maps).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |suffix: &str| -> Option<(String, String)> {
            ["BAO_", "VAULT_"].iter().find_map(|prefix| {
                let name = format!("{prefix}{suffix}");
                lookup(&name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let mut cfg = match get("ADDR") {
            Some((name, v)) => ClientConfig {
                addr: parse_addr(&name, &v)?,
                ..ClientConfig::new(DEFAULT_ADDR)?
            },
            None => ClientConfig::new(DEFAULT_ADDR)?,
        };
        if let Some((name, v)) = get("SKIP_VERIFY") {
            // A rotation tool exists to prove trust; skipping verification would make every gate a lie.
            if !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "f") {
                return Err(Error::Config {
                    setting: name,
                    reason: format!(
                        "is {v:?}: TLS verification cannot be disabled; set VAULT_CACERT to the CA bundle instead"
                    ),
                });
            }
        }
        cfg.ca_cert = get("CACERT").map(|(_, v)| PathBuf::from(v));
        cfg.ca_path = get("CAPATH").map(|(_, v)| PathBuf::from(v));
        cfg.client_cert = get("CLIENT_CERT").map(|(_, v)| PathBuf::from(v));
        cfg.client_key = get("CLIENT_KEY").map(|(_, v)| PathBuf::from(v));
        cfg.tls_server_name = get("TLS_SERVER_NAME").map(|(_, v)| v.trim().to_owned());
        cfg.namespace = get("NAMESPACE").map(|(_, v)| v.trim().to_owned());
        if let Some((name, v)) = get("TOKEN") {
            cfg.token = Some(clean_token(&name, &v)?);
        }
        Ok(cfg)
    }

    /// Set the CA bundle file.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Set the client certificate and key files for mTLS.
    pub fn client_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Use `contents` as what `path` holds (a CA bundle, client certificate or key set
    /// here) instead of reading the path when the client is built: for a caller that
    /// read it safely itself, e.g. root reading an agent's key through a directory fd
    /// that follows no symlink. Errors still name `path`; [`crate::VaultClient::reconnect`]
    /// uses the same contents. Key bytes are zeroized on drop.
    pub fn preload(mut self, path: impl Into<PathBuf>, contents: Zeroizing<Vec<u8>>) -> Self {
        let path = path.into();
        self.preloaded.retain(|(p, _)| *p != path);
        self.preloaded.push((path, contents));
        self
    }

    /// The preloaded contents of `path`, if any.
    pub(crate) fn preloaded(&self, path: &std::path::Path) -> Option<&[u8]> {
        self.preloaded
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.as_slice())
    }

    /// Verify the server as `name` (and send it as SNI) while connecting to `addr`.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Set the token. Surrounding whitespace (a trailing newline from a file) is removed;
    /// a token with inner whitespace or control characters is rejected.
    pub fn token(mut self, token: &str) -> Result<Self> {
        self.token = Some(clean_token("token", token)?);
        Ok(self)
    }

    /// Set the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Set the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
}

fn parse_addr(setting: &str, value: &str) -> Result<Url> {
    let url = Url::parse(value.trim()).map_err(|e| Error::Config {
        setting: setting.to_owned(),
        reason: format!("{value:?} is not a URL: {e}"),
    })?;
    if url.scheme() != "https" {
        return Err(Error::Config {
            setting: setting.to_owned(),
            reason: format!(
                "{value:?}: scheme must be https, not {} (plain http would send the token in cleartext)",
                url.scheme()
            ),
        });
    }
    if url.host_str().is_none() {
        return Err(Error::Config {
            setting: setting.to_owned(),
            reason: format!("{value:?} has no host"),
        });
    }
    Ok(url)
}

pub(crate) fn clean_token(setting: &str, token: &str) -> Result<Zeroizing<String>> {
    let t = token.trim();
    if t.is_empty() {
        return Err(Error::Config {
            setting: setting.to_owned(),
            reason: "token is empty".into(),
        });
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Config {
            setting: setting.to_owned(),
            reason: "token contains whitespace or control characters".into(),
        });
    }
    Ok(Zeroizing::new(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<ClientConfig> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn bao_twin_wins_and_empty_means_unset() {
        let c = cfg(&[
            ("VAULT_ADDR", "https://10.0.0.1:8200"),
            ("BAO_ADDR", "https://127.0.0.1:22400"),
            ("VAULT_TLS_SERVER_NAME", "vault.prod.privsec.ch"),
            ("BAO_TLS_SERVER_NAME", ""),
            ("VAULT_SKIP_VERIFY", ""),
            ("VAULT_NAMESPACE", "team"),
        ])
        .unwrap();
        assert_eq!(c.addr.as_str(), "https://127.0.0.1:22400/");
        assert_eq!(c.tls_server_name.as_deref(), Some("vault.prod.privsec.ch"));
        assert_eq!(c.namespace.as_deref(), Some("team"));
        assert!(c.ca_cert.is_none());
    }

    #[test]
    fn token_trailing_newline_is_trimmed_and_never_printed() {
        let c = cfg(&[("VAULT_TOKEN", "s.abc\n")]).unwrap();
        assert_eq!(c.token.as_ref().unwrap().as_str(), "s.abc");
        assert!(!format!("{c:?}").contains("s.abc"));
        let err = cfg(&[("VAULT_TOKEN", "s.a bc")]).unwrap_err();
        assert!(err.to_string().contains("VAULT_TOKEN"), "{err}");
    }

    #[test]
    fn skip_verify_is_refused_unless_false() {
        let err = cfg(&[("VAULT_SKIP_VERIFY", "1")]).unwrap_err();
        assert!(err.to_string().contains("VAULT_SKIP_VERIFY"), "{err}");
        assert!(cfg(&[("VAULT_SKIP_VERIFY", "false")]).is_ok());
    }

    #[test]
    fn bad_addr_names_the_variable() {
        let err = cfg(&[("VAULT_ADDR", "127.0.0.1:22400")]).unwrap_err();
        assert!(err.to_string().contains("VAULT_ADDR"), "{err}");
        let err = cfg(&[("BAO_ADDR", "ftp://x")]).unwrap_err();
        assert!(err.to_string().contains("BAO_ADDR"), "{err}");
        let err = cfg(&[("VAULT_ADDR", "http://127.0.0.1:8200")]).unwrap_err();
        assert!(err.to_string().contains("cleartext"), "{err}");
    }
}
