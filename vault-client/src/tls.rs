//! TLS material: CA bundles, client identities, and the rustls configuration built from them.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ClientConfig;
use crate::error::{Error, Result};

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// What `path` holds: its preloaded contents in `cfg`, else the file.
fn contents(cfg: &ClientConfig, what: &str, path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    match cfg.preloaded(path) {
        Some(c) => Ok(zeroize::Zeroizing::new(c.to_vec())),
        None => read(what, path).map(zeroize::Zeroizing::new),
    }
}

fn bad(what: &str, path: &Path, reason: impl Into<String>) -> Error {
    Error::BadPem {
        what: what.to_owned(),
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Parse every `CERTIFICATE` block of a PEM file; at least one is required.
pub fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(what, path, &read(what, path)?)
}

/// Parse every `CERTIFICATE` block of `pem` (the contents of `path`).
fn parse_certs(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(what, path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(what, path, "no PEM CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Parse the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(what, path, &zeroize::Zeroizing::new(read(what, path)?))
}

/// Parse the first private key of `pem` (the contents of `path`).
fn parse_key(what: &str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| bad(what, path, format!("malformed PEM: {e}")))?
        .ok_or_else(|| bad(what, path, "no PEM PRIVATE KEY block found"))
}

fn add_all(
    store: &mut RootCertStore,
    what: &str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<()> {
    for c in certs {
        store
            .add(c)
            .map_err(|e| bad(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

/// Build the rustls configuration: only the configured CAs are trusted when any are
/// configured (else the platform's roots); the client identity is presented when set.
pub(crate) fn rustls_config(cfg: &ClientConfig) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            setting: "tls".into(),
            reason: e.to_string(),
        })?;

    let builder = if cfg.ca_cert.is_some() || cfg.ca_path.is_some() {
        let mut store = RootCertStore::empty();
        if let Some(path) = &cfg.ca_cert {
            let what = "CA bundle (VAULT_CACERT)";
            let certs = parse_certs(what, path, &contents(cfg, what, path)?)?;
            add_all(&mut store, what, path, certs)?;
        }
        if let Some(dir) = &cfg.ca_path {
            let what = "CA directory (VAULT_CAPATH)";
            let entries = std::fs::read_dir(dir).map_err(|source| Error::ReadFile {
                what: what.into(),
                path: dir.clone(),
                source,
            })?;
            let mut found = 0;
            for entry in entries {
                let entry = entry.map_err(|source| Error::ReadFile {
                    what: what.into(),
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.is_file() {
                    let certs = load_certs("CA file in VAULT_CAPATH", &path)?;
                    found += certs.len();
                    add_all(&mut store, what, &path, certs)?;
                }
            }
            if found == 0 {
                return Err(bad(what, dir, "no CA certificate files in directory"));
            }
        }
        builder.with_root_certificates(store)
    } else {
        let verifier =
            rustls_platform_verifier::Verifier::new(provider).map_err(|e| Error::Config {
                setting: "tls".into(),
                reason: format!("platform trust store unavailable: {e}"),
            })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };

    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let what = "client certificate (VAULT_CLIENT_CERT)";
            let chain = parse_certs(what, cert, &contents(cfg, what, cert)?)?;
            let what = "client key (VAULT_CLIENT_KEY)";
            let key_der = parse_key(what, key, &contents(cfg, what, key)?)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                bad(
                    "client key (VAULT_CLIENT_KEY)",
                    key,
                    format!("unusable with certificate {}: {e}", cert.display()),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(Error::Config {
                setting: "VAULT_CLIENT_KEY".into(),
                reason: "VAULT_CLIENT_CERT is set but VAULT_CLIENT_KEY is not".into(),
            });
        }
        (None, Some(_)) => {
            return Err(Error::Config {
                setting: "VAULT_CLIENT_CERT".into(),
                reason: "VAULT_CLIENT_KEY is set but VAULT_CLIENT_CERT is not".into(),
            });
        }
    };
    Ok(config)
}
