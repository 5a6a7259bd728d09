//! PKI operations for rotation: roles, issuance, X.509 inspection, safe material writes.
//!
//! - **Roles** ([`upsert_role`]): read the role, compare only the fields of a
//!   [`RoleSpec`] the way Vault returns them ([`diff_role`]), write only when different.
//!   Leaf roles allow the app's exact names only ([`RoleSpec::server_leaf`]); key type
//!   and size follow the key mode ([`RoleSpec::with_key`]).
//! - **Issuance** ([`issue_cert`]): Vault-made key ([`IssueMode::VaultKey`]) or a key
//!   generated here with only a CSR sent ([`IssueMode::Csr`]); the returned certificate's
//!   CN and key are checked before anything is written.
//! - **Inspection and checks** ([`CertInfo`]): CN, SANs, issuer, serial (hex and decimal),
//!   validity, usages, fingerprint; typed checks (`expect_cn`, `expect_validity`, ...),
//!   [`key_matches_cert`] and [`verify_chain`] (or [`verify_chain_as`] with the
//!   [`TrustModel`] of the client that uses the bundle: Go's or OpenSSL's), each failure
//!   naming the file, what was expected and what was found. Time is passed in.
//! - **Writes** ([`Tree`], [`MaterialSet::stage`], [`Staged::commit`]): root writes into
//!   app-owned homes, so every operation is relative to directory fds opened without
//!   following symlinks. A set (key + cert + chain) is staged completely (temp files with
//!   their final mode and owner, synced) before any target is replaced, so a full disk
//!   ([`Error::NoSpace`]) replaces nothing; previous versions are kept as hard links under
//!   run-specific names until the caller no longer needs them ([`undo_file`],
//!   [`discard_prev`]). Each rename is atomic; a set of renames is not: the caller
//!   journals [`Staged::undo_records`] first and repairs an interrupted commit with them.
//!
//! ```no_run
//! use std::path::Path;
//! use pki_ops::{CertInfo, FileSpec, IssueMode, KeyAlgorithm, MaterialSet, Owner, Tree, issue_cert};
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
//!
//! let tree = Tree::open(Path::new("/home/ncprd1"), Some(Owner { uid: 1001, gid: 1001 }))?;
//! let current = CertInfo::from_tree(&tree, Path::new("tls/ncprd1.fullchain.pem"))?;
//! let created_dirs = tree.ensure_dir(Path::new("tls"), 0o750)?; // journal these
//! let staged = MaterialSet::new()
//!     .with(FileSpec::private_key("tls/ncprd1.key"), m.key_pem.as_bytes())
//!     .with(FileSpec::public("tls/ncprd1.fullchain.pem"), m.fullchain_pem())
//!     .stage(&tree, "run-1")?;
//! let undo = staged.undo_records(); // journal these durably, then:
//! staged.commit()?;
//! // A later gate fails (in this process or a resumed one):
//! for u in undo.iter().rev() {
//!     pki_ops::undo_file(u, tree.owner())?;
//! }
//! pki_ops::remove_created_dirs(tree.root(), &created_dirs, tree.owner())?;
//! # let _ = current;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod csr;
mod error;
mod failpoint;
mod keygen;
mod material;
mod pki;
mod x509;

pub use csr::{build_csr, parse_ip_sans};
pub use error::{Error, Result};
#[doc(hidden)]
pub use failpoint::failpoint;
pub use keygen::{KeyAlgorithm, PrivateKey};
pub use material::stage::{
    FileOutcome, FileSpec, MaterialFile, MaterialSet, Staged, WriteReport, keep_previous, plan_keep,
};
pub use material::tree::{FileMeta, MAX_READ, Owner, Tree};
pub use material::undo::{FileUndo, discard_prev, remove_created_dirs, undo_file};
pub use pki::issue::{IssueMode, IssuedMaterial, issue_cert};
pub use pki::roles::{
    CreatePolicy, FieldChange, RoleAction, RoleOutcome, RoleSpec, diff_role, parse_duration_secs,
    upsert_role,
};
pub use x509::check::{
    TrustModel, der_to_pem, key_matches_cert, key_matches_cert_files, verify_chain,
    verify_chain_as, verify_chain_files, verify_chain_labeled,
};
pub use x509::inspect::{
    CertInfo, distinguished_name, parse_bundle, parse_bundle_file, sha256_hex,
};

#[cfg(test)]
mod testca;
