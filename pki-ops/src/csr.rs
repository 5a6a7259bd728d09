//! Certificate signing requests for `PkiApi::sign`: the key never leaves the host.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};

use crate::error::{Error, Result};
use crate::keygen::PrivateKey;

/// Builds a PEM CSR signed by `key`, with subject `CN=common_name` and the given DNS and IP
/// SANs (the CN is not added to the SANs implicitly; Vault adds it unless told otherwise).
pub fn build_csr(
    key: &PrivateKey,
    common_name: &str,
    dns_sans: &[String],
    ip_sans: &[IpAddr],
) -> Result<String> {
    if common_name.trim().is_empty() {
        return Err(Error::Invalid {
            what: "common name",
            value: common_name.to_owned(),
            reason: "empty".into(),
        });
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    for d in dns_sans {
        let name = d.as_str().try_into().map_err(|e| Error::Invalid {
            what: "DNS SAN",
            value: d.clone(),
            reason: format!("{e}"),
        })?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(ip_sans.iter().map(|ip| SanType::IpAddress(*ip)));
    let kp = key.rcgen_key_pair()?;
    let csr = params
        .serialize_request(&kp)
        .map_err(|e| Error::crypto(format!("build CSR for {common_name}"), e))?;
    csr.pem()
        .map_err(|e| Error::crypto(format!("encode CSR for {common_name}"), e))
}

/// Parses IP SANs as given to Vault (`"127.0.0.1"`); a bad one is an [`Error::Invalid`].
pub fn parse_ip_sans(ips: &[String]) -> Result<Vec<IpAddr>> {
    ips.iter()
        .map(|s| {
            s.trim().parse().map_err(|e| Error::Invalid {
                what: "IP SAN",
                value: s.clone(),
                reason: format!("{e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::keygen::KeyAlgorithm;
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

    fn parse(pem: &str) -> (String, Vec<String>, Vec<Vec<u8>>) {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(p.label, "CERTIFICATE REQUEST");
        let (_, csr) = X509CertificationRequest::from_der(&p.contents).unwrap();
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        let cn = info
            .subject
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let (mut dns, mut ips) = (Vec::new(), Vec::new());
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                        GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                        _ => {}
                    }
                }
            }
        }
        (cn, dns, ips)
    }

    #[test]
    fn csr_carries_cn_and_sans() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let key = PrivateKey::generate(alg).unwrap();
            let ips = parse_ip_sans(&["127.0.0.1".into(), "::1".into()]).unwrap();
            let pem = build_csr(
                &key,
                "vault.prod.privsec.ch",
                &["vault.prod.privsec.ch".into(), "vault".into()],
                &ips,
            )
            .unwrap();
            let (cn, dns, ips) = parse(&pem);
            assert_eq!(cn, "vault.prod.privsec.ch");
            assert_eq!(dns, ["vault.prod.privsec.ch", "vault"]);
            assert_eq!(ips.len(), 2);
            assert_eq!(ips[0], [127, 0, 0, 1]);
            // The CSR's public key is the key's.
            let req = openssl::x509::X509Req::from_pem(pem.as_bytes()).unwrap();
            let k = openssl::pkey::PKey::private_key_from_pem(key.pem().as_bytes()).unwrap();
            assert!(req.public_key().unwrap().public_eq(&k));
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        assert!(matches!(
            build_csr(&key, " ", &[], &[]),
            Err(Error::Invalid { .. })
        ));
        let e = parse_ip_sans(&["127.0.0.300".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("IP SAN") && e.contains("127.0.0.300"), "{e}");
    }
}
