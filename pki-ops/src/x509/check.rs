//! Typed gate checks: subject, issuer, validity window, usages, key match, chain.
//!
//! Each failure is an [`Error`] variant naming the file (or label), what was expected and
//! what was found. Time is always passed in (`now`, Unix seconds).

use std::path::Path;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509, X509StoreContext};

use super::inspect::{CertInfo, cert_ders};
use crate::error::{Error, Result};

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl CertInfo {
    /// The subject CN is exactly `expected`.
    pub fn expect_cn(&self, expected: &str) -> Result<()> {
        if self.subject_cn.as_deref() == Some(expected) {
            return Ok(());
        }
        Err(Error::WrongSubject {
            origin: self.origin.clone(),
            expected: expected.to_owned(),
            found: self.cn().to_owned(),
        })
    }

    /// The issuer CN is exactly `expected` (e.g. `PrivSec Intermediate CA (prod)`).
    pub fn expect_issuer_cn(&self, expected: &str) -> Result<()> {
        if self.issuer_cn.as_deref() == Some(expected) {
            return Ok(());
        }
        Err(Error::WrongIssuer {
            origin: self.origin.clone(),
            expected: expected.to_owned(),
            found: self.issuer_cn.clone().unwrap_or_else(|| "<none>".into()),
        })
    }

    /// Valid at `now`, with at least `min_remaining` left, and (if given) a total lifetime
    /// of at most `max_total` (a "sane expiry": not a 10-year leaf).
    pub fn expect_validity(
        &self,
        now: i64,
        min_remaining: Duration,
        max_total: Option<Duration>,
    ) -> Result<()> {
        let subject = || self.cn().to_owned();
        if now > self.not_after {
            return Err(Error::Expired {
                origin: self.origin.clone(),
                subject: subject(),
                not_after: self.not_after,
                now,
            });
        }
        if now < self.not_before {
            return Err(Error::NotYetValid {
                origin: self.origin.clone(),
                subject: subject(),
                not_before: self.not_before,
                now,
            });
        }
        let remaining = self.not_after - now;
        if remaining < secs(min_remaining) {
            return Err(Error::ExpiresTooSoon {
                origin: self.origin.clone(),
                subject: subject(),
                min_remaining: secs(min_remaining),
                remaining,
            });
        }
        let total = self.not_after - self.not_before;
        if let Some(max) = max_total
            && total > secs(max)
        {
            return Err(Error::LifetimeTooLong {
                origin: self.origin.clone(),
                subject: subject(),
                max_total: secs(max),
                total,
            });
        }
        Ok(())
    }

    /// The EKU allows TLS client authentication (what cert auth logins need).
    pub fn expect_client_auth(&self) -> Result<()> {
        self.eku(self.client_auth, "clientAuth")
    }

    /// The EKU allows TLS server authentication (listener and app leaf certs).
    pub fn expect_server_auth(&self) -> Result<()> {
        self.eku(self.server_auth, "serverAuth")
    }

    fn eku(&self, present: bool, expected: &'static str) -> Result<()> {
        if present {
            return Ok(());
        }
        Err(Error::MissingEku {
            origin: self.origin.clone(),
            expected,
            found: self.extended_key_usage.clone(),
        })
    }
}

pub(crate) fn load_key(pem: &str, label: &str) -> Result<PKey<Private>> {
    PKey::private_key_from_pem(pem.as_bytes()).map_err(|e| Error::Parse {
        origin: label.to_owned(),
        what: "private key",
        reason: e.to_string(),
    })
}

pub(crate) fn load_certs(pem: &str, label: &str) -> Result<Vec<X509>> {
    cert_ders(pem, label)?
        .iter()
        .map(|d| {
            X509::from_der(d).map_err(|e| Error::Parse {
                origin: label.to_owned(),
                what: "certificate",
                reason: e.to_string(),
            })
        })
        .collect()
}

fn first_cert(pem: &str, label: &str) -> Result<X509> {
    load_certs(pem, label)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Parse {
            origin: label.to_owned(),
            what: "certificate",
            reason: "no CERTIFICATE PEM block found".into(),
        })
}

/// The private key (PEM: PKCS#8, SEC1 or PKCS#1) belongs to the first certificate of
/// `cert_pem`: their public keys are equal.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> Result<()> {
    key_matches_cert_labeled(key_pem, "private key", cert_pem, "certificate")
}

/// [`key_matches_cert`] on files; errors name both files.
pub fn key_matches_cert_files(key_path: &Path, cert_path: &Path) -> Result<()> {
    let key = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_path).map_err(|e| Error::io("read", key_path, e))?,
    );
    let cert = std::fs::read_to_string(cert_path).map_err(|e| Error::io("read", cert_path, e))?;
    key_matches_cert_labeled(
        &key,
        &key_path.display().to_string(),
        &cert,
        &cert_path.display().to_string(),
    )
}

pub(crate) fn key_matches_cert_labeled(
    key_pem: &str,
    key_label: &str,
    cert_pem: &str,
    cert_label: &str,
) -> Result<()> {
    let key = load_key(key_pem, key_label)?;
    let cert = first_cert(cert_pem, cert_label)?;
    let public = cert
        .public_key()
        .map_err(|e| Error::crypto(format!("{cert_label}: read public key"), e))?;
    if public.public_eq(&key) {
        Ok(())
    } else {
        Err(Error::KeyMismatch {
            key: key_label.to_owned(),
            cert: cert_label.to_owned(),
        })
    }
}

/// Verifies the first certificate of `leaf_pem` up to a certificate of `ca_bundle_pem`,
/// using the intermediates in `intermediates_pem` and any further certificates in
/// `leaf_pem` (a fullchain file works as is). Checked at `now`; purpose-agnostic (any
/// EKU). As Go's verifier (Vault, OpenBao) does, any certificate of the bundle is a
/// trust anchor, so a bundle holding only the intermediate is accepted
/// (`X509_V_FLAG_PARTIAL_CHAIN`).
pub fn verify_chain(
    leaf_pem: &str,
    intermediates_pem: &str,
    ca_bundle_pem: &str,
    now: i64,
) -> Result<()> {
    verify_chain_labeled(
        leaf_pem,
        "leaf certificate",
        intermediates_pem,
        ca_bundle_pem,
        "CA bundle",
        now,
    )
}

/// [`verify_chain`] on files (`intermediates` optional); errors name the files.
pub fn verify_chain_files(
    leaf: &Path,
    intermediates: Option<&Path>,
    ca_bundle: &Path,
    now: i64,
) -> Result<()> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io("read", p, e));
    let ints = match intermediates {
        Some(p) => read(p)?,
        None => String::new(),
    };
    verify_chain_labeled(
        &read(leaf)?,
        &leaf.display().to_string(),
        &ints,
        &read(ca_bundle)?,
        &ca_bundle.display().to_string(),
        now,
    )
}

/// A DER certificate (e.g. one a listener served) as PEM.
pub fn der_to_pem(der: &[u8], label: &str) -> Result<String> {
    let cert = openssl::x509::X509::from_der(der)
        .map_err(|e| Error::crypto(format!("{label}: parse DER"), e))?;
    let pem = cert
        .to_pem()
        .map_err(|e| Error::crypto(format!("{label}: encode PEM"), e))?;
    Ok(String::from_utf8_lossy(&pem).into_owned())
}

/// Which certificates of a CA bundle may end a chain: verifiers differ, and a bundle must
/// be checked the way the client that uses it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustModel {
    /// Any certificate of the bundle is a trust anchor, as Go's verifier (Vault,
    /// OpenBao, the `bao` CLI and agent) treats its pool: a bundle holding only the
    /// intermediate works (`X509_V_FLAG_PARTIAL_CHAIN`).
    #[default]
    AnyCertificate,
    /// The chain must end at a self-signed root in the bundle, as OpenSSL verifies by
    /// default (nginx's `proxy_ssl_trusted_certificate`, `openssl verify`): a bundle
    /// holding only the intermediate fails.
    SelfSignedRoot,
}

/// [`verify_chain`] with the leaf and the bundle named in errors (e.g. by their files).
pub fn verify_chain_labeled(
    leaf_pem: &str,
    leaf_label: &str,
    intermediates_pem: &str,
    ca_bundle_pem: &str,
    ca_label: &str,
    now: i64,
) -> Result<()> {
    verify_chain_as(
        TrustModel::AnyCertificate,
        leaf_pem,
        leaf_label,
        intermediates_pem,
        ca_bundle_pem,
        ca_label,
        now,
    )
}

/// [`verify_chain_labeled`] the way `trust` says the bundle's client verifies.
pub fn verify_chain_as(
    trust: TrustModel,
    leaf_pem: &str,
    leaf_label: &str,
    intermediates_pem: &str,
    ca_bundle_pem: &str,
    ca_label: &str,
    now: i64,
) -> Result<()> {
    let ossl = |what: &str| {
        let what = format!("{leaf_label}: {what}");
        move |e: openssl::error::ErrorStack| Error::crypto(what, e)
    };
    let mut leaf_chain = load_certs(leaf_pem, leaf_label)?.into_iter();
    let leaf = leaf_chain.next().ok_or_else(|| Error::Parse {
        origin: leaf_label.to_owned(),
        what: "certificate",
        reason: "no CERTIFICATE PEM block found".into(),
    })?;
    let subject = super::inspect::CertInfo::from_der(
        &leaf.to_der().map_err(ossl("encode leaf"))?,
        leaf_label,
    )?
    .cn()
    .to_owned();
    let anchors = load_certs(ca_bundle_pem, ca_label)?;
    if anchors.is_empty() {
        return Err(Error::Parse {
            origin: ca_label.to_owned(),
            what: "CA bundle",
            reason: "no CERTIFICATE PEM block found".into(),
        });
    }
    let mut store = X509StoreBuilder::new().map_err(ossl("new store"))?;
    for ca in anchors {
        store.add_cert(ca).map_err(ossl("add CA certificate"))?;
    }
    let mut param = X509VerifyParam::new().map_err(ossl("verify params"))?;
    // `time_t` is `i64` here but narrower on some targets.
    #[allow(clippy::useless_conversion)]
    let time = now.try_into().map_err(|_| Error::Invalid {
        what: "time",
        value: now.to_string(),
        reason: "out of range for time_t".into(),
    })?;
    param.set_time(time);
    if trust == TrustModel::AnyCertificate {
        param
            .set_flags(X509VerifyFlags::PARTIAL_CHAIN)
            .map_err(ossl("verify flags"))?;
    }
    store.set_param(&param).map_err(ossl("set verify params"))?;
    let store = store.build();

    let mut chain = Stack::new().map_err(ossl("new stack"))?;
    for c in leaf_chain.chain(load_certs(intermediates_pem, "intermediates")?) {
        chain.push(c).map_err(ossl("push intermediate"))?;
    }
    let mut ctx = X509StoreContext::new().map_err(ossl("new verify context"))?;
    let verdict = ctx
        .init(&store, &leaf, &chain, |c| {
            if c.verify_cert()? {
                return Ok(None);
            }
            let at = c
                .current_cert()
                .map(|cert| {
                    cert.subject_name()
                        .entries()
                        .map(|e| e.data().to_string().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            Ok(Some(format!(
                "{} (depth {}, at {at:?})",
                c.error().error_string(),
                c.error_depth()
            )))
        })
        .map_err(ossl("verify"))?;
    match verdict {
        None => Ok(()),
        Some(reason) => Err(Error::ChainInvalid {
            origin: leaf_label.to_owned(),
            subject,
            ca_bundle: ca_label.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testca::{DAY, INTERMEDIATE_CN, T0, TestCa};
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    fn leaf_info(ca: &TestCa, eku: &[Eku], nb: i64, na: i64) -> CertInfo {
        let (pem, _) = ca.leaf_with("agent-ncprd1.prod.privsec.ch", &[], eku, nb, na, None);
        CertInfo::from_pem_labeled(&pem, "/home/ncprd1/vault/mtls/agent.crt").unwrap()
    }

    #[test]
    fn cn_and_issuer() {
        let ca = TestCa::new("root");
        let info = leaf_info(&ca, &[Eku::ClientAuth], T0 - DAY, T0 + DAY);
        info.expect_cn("agent-ncprd1.prod.privsec.ch").unwrap();
        info.expect_issuer_cn(INTERMEDIATE_CN).unwrap();
        let e = info
            .expect_cn("agent-resume2me.prod.privsec.ch")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/home/ncprd1/vault/mtls/agent.crt: expected subject CN \"agent-resume2me.prod.privsec.ch\", found \"agent-ncprd1.prod.privsec.ch\""
        );
        let e = info.expect_issuer_cn("Other CA").unwrap_err().to_string();
        assert!(
            e.contains("agent.crt") && e.contains("\"Other CA\"") && e.contains(INTERMEDIATE_CN),
            "{e}"
        );
    }

    #[test]
    fn validity_window() {
        let ca = TestCa::new("root");
        let info = leaf_info(&ca, &[], T0 - DAY, T0 + 30 * DAY);
        let h = Duration::from_secs(3600);
        info.expect_validity(T0, h, Some(Duration::from_secs(90 * 86_400)))
            .unwrap();

        let e = info
            .expect_validity(T0 + 30 * DAY + 42, h, None)
            .unwrap_err();
        assert!(matches!(e, Error::Expired { .. }));
        let e = e.to_string();
        assert!(
            e.contains("agent.crt") && e.contains("expired 42 seconds ago"),
            "{e}"
        );

        let e = info
            .expect_validity(T0 - 2 * DAY, h, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid for another 86400 seconds"), "{e}");

        let e = info
            .expect_validity(T0 + 29 * DAY, Duration::from_secs(2 * 86_400), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected at least 172800 seconds") && e.contains("found 86400"),
            "{e}"
        );

        let e = info
            .expect_validity(T0, h, Some(Duration::from_secs(7 * 86_400)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 604800 seconds, found 2678400"), "{e}");
    }

    #[test]
    fn eku_checks() {
        let ca = TestCa::new("root");
        let client = leaf_info(&ca, &[Eku::ClientAuth], T0, T0 + DAY);
        client.expect_client_auth().unwrap();
        let e = client.expect_server_auth().unwrap_err().to_string();
        assert_eq!(
            e,
            "/home/ncprd1/vault/mtls/agent.crt: expected extended key usage serverAuth, found [clientAuth]"
        );
        let none = leaf_info(&ca, &[], T0, T0 + DAY);
        assert!(matches!(
            none.expect_client_auth(),
            Err(Error::MissingEku {
                expected: "clientAuth",
                ..
            })
        ));
        let any = leaf_info(&ca, &[Eku::Any], T0, T0 + DAY);
        any.expect_client_auth().unwrap();
        any.expect_server_auth().unwrap();
    }

    #[test]
    fn key_match_and_mismatch() {
        let ca = TestCa::new("root");
        let (cert, key) = ca.server_leaf("a.int.privsec.ch", &["a.int.privsec.ch"]);
        let (_, other_key) = ca.server_leaf("b.int.privsec.ch", &["b.int.privsec.ch"]);
        key_matches_cert(&key, &cert).unwrap();
        assert!(matches!(
            key_matches_cert(&other_key, &cert),
            Err(Error::KeyMismatch { .. })
        ));
        // An RSA key against an EC cert: mismatch, not a panic.
        let rsa = crate::PrivateKey::generate(crate::KeyAlgorithm::Rsa2048).unwrap();
        assert!(matches!(
            key_matches_cert(rsa.pem(), &cert),
            Err(Error::KeyMismatch { .. })
        ));
        assert!(matches!(
            key_matches_cert("garbage", &cert),
            Err(Error::Parse {
                what: "private key",
                ..
            })
        ));

        let dir = tempfile::tempdir().unwrap();
        let (kp, cp) = (dir.path().join("agent.key"), dir.path().join("agent.crt"));
        std::fs::write(&kp, &other_key).unwrap();
        std::fs::write(&cp, &cert).unwrap();
        let e = key_matches_cert_files(&kp, &cp).unwrap_err().to_string();
        assert!(
            e.contains("agent.key does not match") && e.contains("agent.crt"),
            "{e}"
        );
        assert!(!e.contains("PRIVATE"), "{e}");
    }

    #[test]
    fn chain_verifies() {
        let ca = TestCa::new("root");
        let (leaf, _) = ca.server_leaf("ncprd1.int.privsec.ch", &["ncprd1.int.privsec.ch"]);
        verify_chain(&leaf, &ca.int_pem, &ca.root_pem, T0).unwrap();
        // A fullchain as leaf, no separate intermediates.
        verify_chain(&format!("{leaf}{}", ca.int_pem), "", &ca.root_pem, T0).unwrap();
        // A bundle holding only the intermediate is a trust anchor (partial chain).
        verify_chain(&leaf, "", &ca.int_pem, T0).unwrap();
    }

    #[test]
    fn openssl_trust_needs_the_self_signed_root_in_the_bundle() {
        let ca = TestCa::new("root");
        let (leaf, _) = ca.server_leaf("ncprd1.int.privsec.ch", &["ncprd1.int.privsec.ch"]);
        let strict = |bundle: &str| {
            verify_chain_as(
                TrustModel::SelfSignedRoot,
                &leaf,
                "leaf",
                &ca.int_pem,
                bundle,
                "proxy bundle",
                T0,
            )
        };
        // Only the intermediate: Go accepts it, OpenSSL (nginx) does not.
        verify_chain(&leaf, &ca.int_pem, &ca.int_pem, T0).unwrap();
        let e = strict(&ca.int_pem).unwrap_err().to_string();
        assert!(e.contains("proxy bundle") && e.contains("issuer"), "{e}");
        // With the root, both accept it.
        strict(&format!("{}{}", ca.int_pem, ca.root_pem)).unwrap();
        strict(&ca.root_pem).unwrap();
    }

    #[test]
    fn chain_failures_carry_openssl_reason() {
        let ca = TestCa::new("root");
        let other = TestCa::new("other root");
        let (leaf, _) = ca.server_leaf("ncprd1.int.privsec.ch", &["ncprd1.int.privsec.ch"]);
        let e = verify_chain(&leaf, &ca.int_pem, &other.root_pem, T0).unwrap_err();
        let Error::ChainInvalid {
            reason, subject, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(subject, "ncprd1.int.privsec.ch");
        assert!(reason.contains("unable to get"), "{reason}");
        // Missing intermediate.
        assert!(verify_chain(&leaf, "", &ca.root_pem, T0).is_err());
        // Time is the injected one: after expiry the same chain fails.
        let e = verify_chain(&leaf, &ca.int_pem, &ca.root_pem, T0 + 60 * DAY).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let (l, b) = (dir.path().join("leaf.pem"), dir.path().join("ca.pem"));
        std::fs::write(&l, format!("{leaf}{}", ca.int_pem)).unwrap();
        std::fs::write(&b, &other.root_pem).unwrap();
        let e = verify_chain_files(&l, None, &b, T0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("leaf.pem") && e.contains("ca.pem"), "{e}");
        assert!(verify_chain(&leaf, "", "", T0).is_err());
    }
}
