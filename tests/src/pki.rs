//! The lab's certificate authority: "PrivSec Root CA" -> "PrivSec Intermediate CA (prod)",
//! the listener certificate for the SNI name, and the admin client certificate.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Name of the lab's root CA.
pub const ROOT_CN: &str = "PrivSec Root CA";
/// Name of the intermediate imported into the PKI mount (the seed's issuer).
pub const INTERMEDIATE_CN: &str = "PrivSec Intermediate CA (prod)";

/// The lab's two-level CA, able to sign more leaves.
pub struct LabCa {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: zeroize::Zeroizing<String>,
}

fn ca_params(cn: &str, path_len: Option<u8>) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "PrivSec");
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(3650);
    Ok(p)
}

impl LabCa {
    /// A fresh root and intermediate (ECDSA P-256).
    pub fn generate() -> Result<Self> {
        let root = CertifiedIssuer::self_signed(ca_params(ROOT_CN, None)?, KeyPair::generate()?)?;
        let intermediate = CertifiedIssuer::signed_by(
            ca_params(INTERMEDIATE_CN, Some(0))?,
            KeyPair::generate()?,
            &root,
        )?;
        Ok(LabCa { root, intermediate })
    }

    /// Root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// Intermediate certificate, PEM.
    pub fn intermediate_pem(&self) -> String {
        self.intermediate.pem()
    }

    /// The bundle clients trust: intermediate then root.
    pub fn bundle_pem(&self) -> String {
        format!("{}{}", self.intermediate.pem(), self.root.pem())
    }

    /// What `pki/config/ca` imports: intermediate key + certificate, then the root.
    pub fn import_bundle_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!(
            "{}{}{}",
            self.intermediate.key().serialize_pem(),
            self.intermediate.pem(),
            self.root.pem()
        ))
    }

    /// A client certificate for `cn` signed by *another* intermediate under the same root
    /// ("PrivSec Other Intermediate"), as an attacker holding some other CA of the
    /// organisation could mint: `cert_pem` is the leaf followed by that intermediate.
    pub fn sibling_client(&self, cn: &str) -> Result<Leaf> {
        let other = CertifiedIssuer::signed_by(
            ca_params("PrivSec Other Intermediate", Some(0))?,
            KeyPair::generate()?,
            &self.root,
        )?;
        let sibling = LabCa {
            root: CertifiedIssuer::self_signed(ca_params(ROOT_CN, None)?, KeyPair::generate()?)?,
            intermediate: other,
        };
        let leaf = sibling.leaf(cn, &[], &[], false, Duration::days(1))?;
        Ok(Leaf {
            cert_pem: format!("{}{}", leaf.cert_pem, sibling.intermediate.pem()),
            key_pem: leaf.key_pem,
        })
    }

    /// Sign a leaf with the intermediate. `server` picks serverAuth, else clientAuth.
    pub fn leaf(
        &self,
        cn: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
        server: bool,
        valid_for: Duration,
    ) -> Result<Leaf> {
        let now = OffsetDateTime::now_utc();
        self.leaf_between(
            cn,
            dns,
            ips,
            server,
            now - Duration::minutes(5),
            now + valid_for,
        )
    }

    /// [`LabCa::leaf`] valid from `not_before` to `not_after` (e.g. one about to expire).
    pub fn leaf_between(
        &self,
        cn: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
        server: bool,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Leaf> {
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        p.not_before = not_before;
        p.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.intermediate)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Write `data` to `path` with `mode` set at creation (no window with wider permissions).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}
