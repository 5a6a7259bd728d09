//! Read what a certificate says: names, issuer, serial, validity, usages, fingerprint.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::error::{Error, Result};
use crate::material::tree::Tree;

/// The facts about one certificate that rotation checks and reports need. Contains no
/// secret, so it can go into JSON reports as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CertInfo {
    /// Where the certificate came from: the file path, or a label such as `issued certificate`.
    /// Check errors name it.
    pub origin: String,
    /// Subject CN, if any.
    pub subject_cn: Option<String>,
    /// The whole subject DN, RFC 4514 style.
    pub subject: String,
    /// The subject DN as DER (what TLS names as an acceptable client-certificate issuer).
    #[serde(skip)]
    pub subject_der: Vec<u8>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// IP SANs.
    pub ip_sans: Vec<IpAddr>,
    /// Issuer CN, if any.
    pub issuer_cn: Option<String>,
    /// The whole issuer DN.
    pub issuer: String,
    /// The issuer DN as DER.
    #[serde(skip)]
    pub issuer_der: Vec<u8>,
    /// Serial as Vault prints it: lower-case hex bytes joined by `:`, no leading zero byte.
    pub serial_hex: String,
    /// Serial in decimal, as cert auth token metadata carries it.
    pub serial_decimal: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// notBefore, human readable (`Jan  2 03:04:05 2026 +00:00`).
    pub not_before_human: String,
    /// notAfter, human readable.
    pub not_after_human: String,
    /// Key usage bits present (`digitalSignature`, `keyEncipherment`, `keyCertSign`, ...).
    pub key_usage: Vec<String>,
    /// Extended key usages present (`serverAuth`, `clientAuth`, ..., or dotted OIDs).
    pub extended_key_usage: Vec<String>,
    /// The EKU allows TLS server authentication (`serverAuth` or `anyExtendedKeyUsage`).
    pub server_auth: bool,
    /// The EKU allows TLS client authentication (`clientAuth` or `anyExtendedKeyUsage`).
    pub client_auth: bool,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// SHA-256 of the DER, upper-case hex joined by `:` (as `openssl x509 -fingerprint -sha256`).
    pub sha256_fingerprint: String,
}

impl CertInfo {
    /// Parses the first certificate (the leaf) of a PEM bundle. `origin` is set to `<pem>`;
    /// see [`CertInfo::with_origin`].
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_pem_labeled(pem, "<pem>")
    }

    /// Parses the first certificate of a PEM file; errors and checks name the file. The
    /// path is followed like any `open(2)`: for files in a tree another user controls, use
    /// [`CertInfo::from_tree`].
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let pem = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::from_pem_labeled(&pem, &path.display().to_string())
    }

    /// Parses the first certificate of regular file `rel` in `tree`, read without
    /// following symlinks ([`Tree::read`]); `None` if the file is absent. Errors and checks
    /// name the file.
    pub fn from_tree(tree: &Tree, rel: &Path) -> Result<Option<Self>> {
        let Some(bytes) = tree.read(rel)? else {
            return Ok(None);
        };
        let origin = tree.root().join(rel).display().to_string();
        let pem = std::str::from_utf8(&bytes).map_err(|e| Error::Parse {
            origin: origin.clone(),
            what: "certificate",
            reason: format!("not UTF-8 PEM: {e}"),
        })?;
        Self::from_pem_labeled(pem, &origin).map(Some)
    }

    /// Parses the first certificate of `pem`, naming it `origin` in errors.
    pub fn from_pem_labeled(pem: &str, origin: &str) -> Result<Self> {
        let ders = cert_ders(pem, origin)?;
        let Some(first) = ders.first() else {
            return Err(no_cert(origin));
        };
        Self::from_der(first, origin)
    }

    /// Parses one DER certificate.
    pub fn from_der(der: &[u8], origin: &str) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Parse {
            origin: origin.to_owned(),
            what: "certificate",
            reason: e.to_string(),
        })?;
        Ok(info(&cert, der, origin))
    }

    /// Sets the label that errors and checks use for this certificate.
    #[must_use]
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// The subject CN, or `<none>`.
    pub fn cn(&self) -> &str {
        self.subject_cn.as_deref().unwrap_or("<none>")
    }
}

/// Parses every certificate of a PEM bundle (leaf first, as in a fullchain file). Other
/// PEM blocks (keys) are skipped; a bundle without any certificate is an error.
pub fn parse_bundle(pem: &str, origin: &str) -> Result<Vec<CertInfo>> {
    let ders = cert_ders(pem, origin)?;
    if ders.is_empty() {
        return Err(no_cert(origin));
    }
    ders.iter().map(|d| CertInfo::from_der(d, origin)).collect()
}

/// Parses every certificate of a PEM bundle file.
pub fn parse_bundle_file(path: &Path) -> Result<Vec<CertInfo>> {
    let pem = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    parse_bundle(&pem, &path.display().to_string())
}

fn no_cert(origin: &str) -> Error {
    Error::Parse {
        origin: origin.to_owned(),
        what: "certificate",
        reason: "no CERTIFICATE PEM block found".into(),
    }
}

/// The DER of every `CERTIFICATE` block of `pem`, in order.
pub(crate) fn cert_ders(pem: &str, origin: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        match block {
            Ok(Pem { label, contents }) if label == "CERTIFICATE" => out.push(contents),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Parse {
                    origin: origin.to_owned(),
                    what: "PEM",
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn info(cert: &X509Certificate<'_>, der: &[u8], origin: &str) -> CertInfo {
    let first_cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        ip_sans.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        ip_sans.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    let key_usage = match cert.key_usage() {
        Ok(Some(ku)) => {
            let k = ku.value;
            [
                (k.digital_signature(), "digitalSignature"),
                (k.non_repudiation(), "nonRepudiation"),
                (k.key_encipherment(), "keyEncipherment"),
                (k.data_encipherment(), "dataEncipherment"),
                (k.key_agreement(), "keyAgreement"),
                (k.key_cert_sign(), "keyCertSign"),
                (k.crl_sign(), "cRLSign"),
                (k.encipher_only(), "encipherOnly"),
                (k.decipher_only(), "decipherOnly"),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_owned())
            .collect()
        }
        _ => Vec::new(),
    };
    let (mut extended_key_usage, mut server_auth, mut client_auth) = (Vec::new(), false, false);
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let e = eku.value;
        for (on, n) in [
            (e.any, "anyExtendedKeyUsage"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.time_stamping, "timeStamping"),
            (e.ocsp_signing, "OCSPSigning"),
        ] {
            if on {
                extended_key_usage.push(n.to_owned());
            }
        }
        extended_key_usage.extend(e.other.iter().map(|o| o.to_id_string()));
        server_auth = e.server_auth || e.any;
        client_auth = e.client_auth || e.any;
    }
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let v = cert.validity();
    CertInfo {
        origin: origin.to_owned(),
        subject_cn: first_cn(cert.subject()),
        subject: cert.subject().to_string(),
        subject_der: cert.subject().as_raw().to_vec(),
        dns_sans,
        ip_sans,
        issuer_cn: first_cn(cert.issuer()),
        issuer: cert.issuer().to_string(),
        issuer_der: cert.issuer().as_raw().to_vec(),
        serial_hex: hex_join(&cert.serial.to_bytes_be(), false),
        serial_decimal: cert.serial.to_str_radix(10),
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
        not_before_human: v.not_before.to_string(),
        not_after_human: v.not_after.to_string(),
        key_usage,
        extended_key_usage,
        server_auth,
        client_auth,
        is_ca,
        sha256_fingerprint: hex_join(&openssl::sha::sha256(der), true),
    }
}

/// The RFC 4514 form of a DER distinguished name (as a TLS server lists the issuers it
/// accepts client certificates from), or `None` when it does not parse.
pub fn distinguished_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer as _;
    x509_parser::x509::X509Name::from_der(der)
        .ok()
        .filter(|(rest, _)| rest.is_empty())
        .map(|(_, n)| n.to_string())
}

/// `aa:bb:cc` (or `AA:BB:CC`).
pub(crate) fn hex_join(bytes: &[u8], upper: bool) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        // Writing to a String cannot fail.
        let _ = if upper {
            write!(s, "{b:02X}")
        } else {
            write!(s, "{b:02x}")
        };
    }
    s
}

/// sha256 of `data`, lowercase hex (as `sha256sum` prints it): e.g. to match a file's
/// exact bytes against a post-hook's report.
pub fn sha256_hex(data: &[u8]) -> String {
    openssl::sha::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testca::{DAY, INTERMEDIATE_CN, T0, TestCa};
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    #[test]
    fn leaf_fields() {
        let ca = TestCa::new("PrivSec Root CA");
        let (pem, _) = ca.leaf_with(
            "vault.prod.privsec.ch",
            &["vault.prod.privsec.ch", "127.0.0.1"],
            &[Eku::ServerAuth, Eku::ClientAuth],
            T0 - DAY,
            T0 + 30 * DAY,
            None,
        );
        let info = CertInfo::from_pem(&format!("{pem}{}", ca.int_pem)).unwrap();
        assert_eq!(info.origin, "<pem>");
        assert_eq!(info.subject_cn.as_deref(), Some("vault.prod.privsec.ch"));
        assert_eq!(info.dns_sans, ["vault.prod.privsec.ch"]);
        assert_eq!(info.ip_sans, [IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(info.issuer_cn.as_deref(), Some(INTERMEDIATE_CN));
        assert_eq!((info.not_before, info.not_after), (T0 - DAY, T0 + 30 * DAY));
        assert!(
            info.not_after_human.contains("2026"),
            "{}",
            info.not_after_human
        );
        assert!(info.server_auth && info.client_auth && !info.is_ca);
        assert_eq!(info.extended_key_usage, ["serverAuth", "clientAuth"]);
        assert_eq!(info.key_usage, ["digitalSignature"]);
        // Serial: hex as Vault prints it, decimal as cert auth metadata has it.
        let x = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
        let bn = x.serial_number().to_bn().unwrap();
        assert_eq!(info.serial_decimal, bn.to_dec_str().unwrap().to_string());
        let hex = bn.to_hex_str().unwrap().to_lowercase();
        // Same number; Vault's form has whole bytes and no leading zero byte.
        let ours = info.serial_hex.replace(':', "");
        assert_eq!(ours.trim_start_matches('0'), hex.trim_start_matches('0'));
        assert!(!info.serial_hex.starts_with("00"), "{}", info.serial_hex);
        assert!(info.serial_hex.split(':').all(|b| b.len() == 2));
        let fp = openssl::sha::sha256(&x.to_der().unwrap());
        assert_eq!(info.sha256_fingerprint, hex_join(&fp, true));
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["subject_cn"], "vault.prod.privsec.ch");
    }

    #[test]
    fn bundle_and_ca_flags() {
        let ca = TestCa::new("PrivSec Root CA");
        let (leaf, _) = ca.server_leaf("ncprd1.int.privsec.ch", &["ncprd1.int.privsec.ch"]);
        let all = parse_bundle(
            &format!("{leaf}\n{}\n{}", ca.int_pem, ca.root_pem),
            "fullchain",
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        assert!(!all[0].is_ca && all[1].is_ca && all[2].is_ca);
        assert_eq!(all[1].subject_cn.as_deref(), Some(INTERMEDIATE_CN));
        assert_eq!(all[2].issuer_cn.as_deref(), Some("PrivSec Root CA"));
        assert!(all[1].key_usage.contains(&"keyCertSign".to_owned()));
    }

    #[test]
    fn from_tree_reads_the_leaf_without_following_symlinks() {
        let ca = TestCa::new("PrivSec Root CA");
        let (leaf, _) = ca.server_leaf("ncprd1.int.privsec.ch", &["ncprd1.int.privsec.ch"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fullchain.pem"),
            format!("{leaf}{}", ca.int_pem),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("fullchain.pem"),
            dir.path().join("link.pem"),
        )
        .unwrap();
        let tree = crate::Tree::open(dir.path(), None).unwrap();
        let info = CertInfo::from_tree(&tree, Path::new("fullchain.pem"))
            .unwrap()
            .unwrap();
        assert_eq!(info.cn(), "ncprd1.int.privsec.ch");
        assert!(info.origin.ends_with("/fullchain.pem"), "{}", info.origin);
        let e = CertInfo::from_tree(&tree, Path::new("link.pem")).unwrap_err();
        assert!(matches!(e, Error::Unsafe { .. }), "{e}");
    }

    #[test]
    fn bad_input_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.crt");
        std::fs::write(&p, "not a cert\n").unwrap();
        let e = CertInfo::from_pem_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("agent.crt") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = CertInfo::from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(matches!(e, Error::Parse { .. }), "{e}");
        let e = CertInfo::from_pem_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let tree = crate::Tree::open(dir.path(), None).unwrap();
        let e = CertInfo::from_tree(&tree, Path::new("agent.crt")).unwrap_err();
        assert!(e.to_string().contains("agent.crt"), "{e}");
        assert!(
            CertInfo::from_tree(&tree, Path::new("missing.pem"))
                .unwrap()
                .is_none()
        );
        assert!(parse_bundle("", "x").is_err());
    }
}
