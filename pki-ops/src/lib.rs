//! PKI operations for rotation: roles, issuance, X.509 inspection, safe material writes.
//!
//! - **Roles** ([`upsert_role`]): read the role, compare only the fields of a
//!   [`RoleSpec`] the way Vault returns them ([`diff_role`]), write only when different.
//! - **Issuance** ([`issue_cert`]): Vault-made key ([`IssueMode::VaultKey`]) or a key
//!   generated here with only a CSR sent ([`IssueMode::Csr`]); the returned certificate's
//!   CN and key are checked before anything is written.
//! - **Inspection and checks** ([`CertInfo`]): CN, SANs, issuer, serial (hex and decimal),
//!   validity, usages, fingerprint; typed checks (`expect_cn`, `expect_validity`, ...),
//!   [`key_matches_cert`] and [`verify_chain`], each failure naming the file, what was
//!   expected and what was found. Time is passed in.
//! - **Writes** ([`write_all`]): temp file created with its final mode (keys `0600` from
//!   the first byte), owner set, fsync, rename, directory fsync; the old version kept as
//!   `<name>.prev` for [`restore`] / [`WriteReport::rollback`].
//!
//! ```no_run
//! use pki_ops::{FileSpec, IssueMode, KeyAlgorithm, MaterialSet, issue_cert};
//! use vault_client::{IssueRequest, VaultClient};
//!
//! # async fn demo(vault: &VaultClient, now: i64) -> Result<(), pki_ops::Error> {
//! let req = IssueRequest {
//!     common_name: "ncprd1.int.privsec.ch".into(),
//!     ttl: Some("720h".into()),
//!     ..Default::default()
//! };
//! let m = issue_cert(vault, "pki-prod", "nginx-ncprd1", &req, IssueMode::Csr(KeyAlgorithm::EcdsaP256)).await?;
//! m.info.expect_issuer_cn("PrivSec Intermediate CA (prod)")?;
//! m.info.expect_validity(now, std::time::Duration::from_secs(86_400), None)?;
//! let report = MaterialSet::new()
//!     .with(FileSpec::private_key("/home/ncprd1/tls/ncprd1.key").owned_by("ncprd1", "ncprd1"), m.key_pem.as_bytes())
//!     .with(FileSpec::public("/home/ncprd1/tls/ncprd1.fullchain.pem").owned_by("ncprd1", "ncprd1"), m.fullchain_pem())
//!     .write()?;
//! // ... a gate fails:
//! report.rollback()?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod csr;
mod error;
mod keygen;
mod material;
mod pki;
mod x509;

pub use csr::{build_csr, parse_ip_sans};
pub use error::{Error, Result};
pub use keygen::{KeyAlgorithm, PrivateKey};
pub use material::write::{
    FileOutcome, FileSpec, MaterialFile, MaterialSet, WriteReport, dry_run, prev_path, restore,
    write_all,
};
pub use pki::issue::{IssueMode, IssuedMaterial, issue_cert};
pub use pki::roles::{
    CreatePolicy, FieldChange, RoleAction, RoleOutcome, RoleSpec, diff_role, parse_duration_secs,
    upsert_role,
};
pub use x509::check::{key_matches_cert, key_matches_cert_files, verify_chain, verify_chain_files};
pub use x509::inspect::{CertInfo, parse_bundle, parse_bundle_file};

#[cfg(test)]
mod testca;
