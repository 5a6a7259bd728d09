//! Issuance: Vault-made key (`issue`) or a local key and CSR (`sign`), then self-checks.

use openssl::x509::X509;
use serde::Serialize;
use vault_client::{IssueRequest, PkiApi};
use zeroize::Zeroizing;

use crate::csr::{build_csr, parse_ip_sans};
use crate::error::{Error, Result};
use crate::keygen::{KeyAlgorithm, PrivateKey};
use crate::x509::check::{key_matches_cert_labeled, load_certs};
use crate::x509::inspect::CertInfo;

/// Who makes the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueMode {
    /// Vault generates the key (`POST /:mount/issue/:role`); it travels back over TLS.
    VaultKey,
    /// The key is generated here and only a CSR goes to Vault (`POST /:mount/sign/:role`).
    Csr(KeyAlgorithm),
}

/// A freshly issued certificate with its key and chain. `Debug` never shows the key.
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedMaterial {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The issuing CA and the chain above it, PEM, deduplicated, without the leaf.
    pub chain_pem: String,
    /// The private key, PEM, wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// Serial as Vault prints it (`aa:bb:..`).
    pub serial_hex: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// What the leaf says.
    pub info: CertInfo,
}

impl IssuedMaterial {
    /// Leaf followed by the chain: the content of a `fullchain.pem`.
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.chain_pem)
    }
}

impl std::fmt::Debug for IssuedMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedMaterial")
            .field("subject_cn", &self.info.subject_cn)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Issues a certificate from `mount/roles/role` for `req`, then checks that the
/// returned certificate is for `req.common_name` ([`Error::CnMismatch`]) and that the key
/// belongs to it ([`Error::KeyMismatch`]), any failure after issuance wrapped in
/// [`Error::Rejected`] with the serial to revoke. In [`IssueMode::Csr`] the key is
/// generated here and never sent to Vault.
pub async fn issue_cert(
    api: &dyn PkiApi,
    mount: &str,
    role: &str,
    req: &IssueRequest,
    mode: IssueMode,
) -> Result<IssuedMaterial> {
    let role_path = format!("{mount}/roles/{role}");
    let (issued, key_pem) = match mode {
        IssueMode::VaultKey => {
            let issued = api
                .issue(mount, role, req)
                .await
                .map_err(Error::vault(format!(
                    "issue {} from {role_path}",
                    req.common_name
                )))?;
            let Some(key) = issued.private_key.clone() else {
                return Err(Error::Rejected {
                    serial: issued.serial_number.clone(),
                    source: Box::new(Error::MissingKey { role: role_path }),
                });
            };
            (issued, key)
        }
        IssueMode::Csr(alg) => {
            let key = PrivateKey::generate(alg)?;
            let ips = parse_ip_sans(&req.ip_sans)?;
            let csr = build_csr(&key, &req.common_name, &req.alt_names, &ips)?;
            let issued = api
                .sign(mount, role, &csr, req)
                .await
                .map_err(Error::vault(format!(
                    "sign CSR for {} with {role_path}",
                    req.common_name
                )))?;
            (issued, key.into_pem())
        }
    };
    // From here the certificate exists: a failed check names its serial for revocation.
    let serial = issued.serial_number.clone();
    checked(issued, key_pem, req, role_path, mode).map_err(|e| Error::Rejected {
        serial,
        source: Box::new(e),
    })
}

/// The checks of a certificate Vault just issued.
fn checked(
    issued: vault_client::IssuedCert,
    key_pem: Zeroizing<String>,
    req: &IssueRequest,
    role_path: String,
    mode: IssueMode,
) -> Result<IssuedMaterial> {
    let cert_pem = normalise_pem(&issued.certificate);
    let origin = format!("certificate issued by {role_path}");
    let info = CertInfo::from_pem_labeled(&cert_pem, &origin)?;
    if info.subject_cn.as_deref() != Some(req.common_name.as_str()) {
        return Err(Error::CnMismatch {
            role: role_path,
            expected: req.common_name.clone(),
            found: info.cn().to_owned(),
        });
    }
    key_matches_cert_labeled(&key_pem, "issued private key", &cert_pem, &origin)?;
    let mut chain_parts = vec![issued.issuing_ca.as_str()];
    chain_parts.extend(issued.ca_chain.iter().map(String::as_str));
    let chain_pem = dedup_chain(&cert_pem, &chain_parts, &origin)?;
    tracing::info!(
        role = %role_path,
        cn = %req.common_name,
        serial = %info.serial_hex,
        not_after = info.not_after,
        ?mode,
        "certificate issued"
    );
    Ok(IssuedMaterial {
        cert_pem,
        chain_pem,
        key_pem,
        serial_hex: info.serial_hex.clone(),
        not_after: info.not_after,
        info,
    })
}

fn normalise_pem(pem: &str) -> String {
    let mut s = pem.trim().to_owned();
    s.push('\n');
    s
}

/// The certificates of `parts`, in order, without duplicates and without the leaf.
fn dedup_chain(leaf_pem: &str, parts: &[&str], origin: &str) -> Result<String> {
    let to_der = |c: &X509| {
        c.to_der()
            .map_err(|e| Error::crypto(format!("{origin}: encode"), e))
    };
    let leaf: Vec<Vec<u8>> = load_certs(leaf_pem, origin)?
        .iter()
        .map(to_der)
        .collect::<Result<_>>()?;
    let mut seen = leaf;
    let mut out = String::new();
    for part in parts {
        for cert in load_certs(part, &format!("{origin} (chain)"))? {
            let der = to_der(&cert)?;
            if seen.contains(&der) {
                continue;
            }
            seen.push(der);
            let pem = cert
                .to_pem()
                .map_err(|e| Error::crypto(format!("{origin}: encode chain"), e))?;
            out.push_str(&String::from_utf8_lossy(&pem));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::testca::{INTERMEDIATE_CN, TestCa};
    use vault_client::{IssuedCert, MockPkiApi};

    fn issued(ca: &TestCa, cert: String, key: Option<String>) -> IssuedCert {
        IssuedCert {
            certificate: cert,
            issuing_ca: ca.int_pem.clone(),
            // Vault's ca_chain repeats the issuing CA.
            ca_chain: vec![ca.int_pem.clone(), ca.root_pem.clone()],
            private_key: key.map(Zeroizing::new),
            private_key_type: Some("ec".into()),
            serial_number: "ignored".into(),
            expiration: 0,
        }
    }

    fn req(cn: &str) -> IssueRequest {
        IssueRequest {
            common_name: cn.into(),
            alt_names: vec![cn.into()],
            ip_sans: vec!["127.0.0.1".into()],
            ttl: Some("720h".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn vault_key_mode() {
        let ca = Arc::new(TestCa::new("root"));
        let cn = "ncprd1.int.privsec.ch";
        let (cert, key) = ca.server_leaf(cn, &[cn]);
        let out = issued(&ca, cert.clone(), Some(key));
        let mut api = MockPkiApi::new();
        api.expect_issue()
            .withf(|m, r, q| {
                m == "pki-prod" && r == "nginx-ncprd1" && q.common_name == "ncprd1.int.privsec.ch"
            })
            .times(1)
            .returning(move |_, _, _| Ok(out.clone()));
        api.expect_sign().never();
        let m = issue_cert(
            &api,
            "pki-prod",
            "nginx-ncprd1",
            &req(cn),
            IssueMode::VaultKey,
        )
        .await
        .unwrap();
        assert_eq!(m.cert_pem.trim(), cert.trim());
        // Issuing CA and chain, deduplicated, no leaf.
        let chain = crate::parse_bundle(&m.chain_pem, "chain").unwrap();
        let cns: Vec<_> = chain.iter().map(|c| c.cn().to_owned()).collect();
        assert_eq!(cns, [INTERMEDIATE_CN, "root"]);
        assert_eq!(m.serial_hex, m.info.serial_hex);
        assert_eq!(
            crate::parse_bundle(&m.fullchain_pem(), "f").unwrap().len(),
            3
        );
        let dbg = format!("{m:?}");
        assert!(
            dbg.contains("redacted") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
    }

    #[tokio::test]
    async fn cn_mismatch_is_rejected() {
        let ca = TestCa::new("root");
        let (cert, key) = ca.server_leaf("evil.int.privsec.ch", &["evil.int.privsec.ch"]);
        let out = issued(&ca, cert, Some(key));
        let mut api = MockPkiApi::new();
        api.expect_issue().returning(move |_, _, _| Ok(out.clone()));
        let e = issue_cert(
            &api,
            "pki-prod",
            "nginx-ncprd1",
            &req("ncprd1.int.privsec.ch"),
            IssueMode::VaultKey,
        )
        .await
        .unwrap_err();
        let Error::Rejected { serial, source } = e else {
            panic!("{e}")
        };
        assert!(!serial.is_empty(), "the serial to revoke is named");
        match *source {
            Error::CnMismatch {
                role,
                expected,
                found,
            } => {
                assert_eq!(role, "pki-prod/roles/nginx-ncprd1");
                assert_eq!(expected, "ncprd1.int.privsec.ch");
                assert_eq!(found, "evil.int.privsec.ch");
            }
            e => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn wrong_or_missing_key_is_rejected() {
        let ca = TestCa::new("root");
        let cn = "ncprd1.int.privsec.ch";
        let (cert, _) = ca.server_leaf(cn, &[cn]);
        let (_, other_key) = ca.server_leaf(cn, &[cn]);
        for (key, missing) in [(Some(other_key), false), (None, true)] {
            let out = issued(&ca, cert.clone(), key);
            let mut api = MockPkiApi::new();
            api.expect_issue().returning(move |_, _, _| Ok(out.clone()));
            let e = issue_cert(&api, "pki-prod", "r", &req(cn), IssueMode::VaultKey)
                .await
                .unwrap_err();
            let Error::Rejected { source, .. } = &e else {
                panic!("{e}")
            };
            if missing {
                assert!(matches!(**source, Error::MissingKey { .. }), "{e}");
            } else {
                assert!(matches!(**source, Error::KeyMismatch { .. }), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn csr_mode_signs_and_keeps_key_local() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let ca = Arc::new(TestCa::new("root"));
            let signer = Arc::clone(&ca);
            let mut api = MockPkiApi::new();
            api.expect_issue().never();
            api.expect_sign()
                .withf(|m, r, csr, q| {
                    m == "pki-prod"
                        && r == "agent-mtls-ncprd1"
                        && csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----")
                        && !csr.contains("PRIVATE KEY")
                        && q.common_name == "agent-ncprd1.prod.privsec.ch"
                })
                .times(1)
                .returning(move |_, _, csr, _| {
                    let cert = signer.sign_csr(csr);
                    let mut out = issued(&signer, cert, None);
                    out.private_key_type = None;
                    Ok(out)
                });
            let cn = "agent-ncprd1.prod.privsec.ch";
            let m = issue_cert(
                &api,
                "pki-prod",
                "agent-mtls-ncprd1",
                &req(cn),
                IssueMode::Csr(alg),
            )
            .await
            .unwrap();
            crate::key_matches_cert(&m.key_pem, &m.cert_pem).unwrap();
            m.info.expect_cn(cn).unwrap();
            assert_eq!(m.info.dns_sans, [cn]);
            assert_eq!(m.info.ip_sans, [std::net::IpAddr::from([127, 0, 0, 1])]);
            let k = openssl::pkey::PKey::private_key_from_pem(m.key_pem.as_bytes()).unwrap();
            assert_eq!(k.bits(), alg.vault_key_type().1);
        }
    }

    #[tokio::test]
    async fn bad_ip_san_fails_before_vault() {
        let mut api = MockPkiApi::new();
        api.expect_sign().never();
        let mut r = req("a.int.privsec.ch");
        r.ip_sans = vec!["nope".into()];
        let e = issue_cert(
            &api,
            "pki-prod",
            "r",
            &r,
            IssueMode::Csr(KeyAlgorithm::EcdsaP256),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Invalid { what: "IP SAN", .. }), "{e}");
    }
}
