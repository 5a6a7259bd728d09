//! A throwaway CA hierarchy for unit tests: root -> "PrivSec Intermediate CA (prod)" -> leaves.

#![allow(clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::time::ASN1Time;

pub(crate) const INTERMEDIATE_CN: &str = "PrivSec Intermediate CA (prod)";
/// 2026-01-01T00:00:00Z.
pub(crate) const T0: i64 = 1_767_225_600;
pub(crate) const DAY: i64 = 86_400;

pub(crate) struct TestCa {
    pub(crate) root_pem: String,
    pub(crate) int_pem: String,
    int_issuer: Issuer<'static, KeyPair>,
}

fn set_validity(p: &mut CertificateParams, not_before: i64, not_after: i64) {
    p.not_before = ASN1Time::from_timestamp(not_before).unwrap().to_datetime();
    p.not_after = ASN1Time::from_timestamp(not_after).unwrap().to_datetime();
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut p, T0 - 365 * DAY, T0 + 3650 * DAY);
    p
}

impl TestCa {
    pub(crate) fn new(root_cn: &str) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params(root_cn);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().unwrap();
        let int_params = ca_params(INTERMEDIATE_CN);
        let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
        Self {
            root_pem: root.pem(),
            int_pem: int.pem(),
            int_issuer: Issuer::new(int_params, int_key),
        }
    }

    /// A leaf valid `[not_before, not_after]`, with a fresh P-256 key (or `key`).
    pub(crate) fn leaf_with(
        &self,
        cn: &str,
        sans: &[&str],
        eku: &[ExtendedKeyUsagePurpose],
        not_before: i64,
        not_after: i64,
        key: Option<&KeyPair>,
    ) -> (String, String) {
        let fresh;
        let key = match key {
            Some(k) => k,
            None => {
                fresh = KeyPair::generate().unwrap();
                &fresh
            }
        };
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = eku.to_vec();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut p, not_before, not_after);
        let cert = p.signed_by(key, &self.int_issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server leaf valid for 30 days from `T0 - 1 day`.
    pub(crate) fn server_leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        self.leaf_with(
            cn,
            sans,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            T0 - DAY,
            T0 + 29 * DAY,
            None,
        )
    }

    /// Signs a CSR with the intermediate, as Vault's `sign` would.
    pub(crate) fn sign_csr(&self, csr_pem: &str) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.signed_by(&self.int_issuer).unwrap().pem()
    }
}
