//! The crate's one error type.

use std::path::PathBuf;

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `pki-ops`. Every variant names what it was looking at
/// (a file, a role, a step), what it expected and what it found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be opened, read, created, linked, renamed, removed or
    /// synced.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing (`read`, `create temp for`, `keep previous version of`,
        /// `replace`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// PEM or X.509 input that cannot be parsed.
    #[error("{origin}: cannot parse {what}: {reason}")]
    Parse {
        /// Where the input came from (a file path, or a label such as `issued certificate`).
        origin: String,
        /// What we expected to find (`certificate`, `private key`, ...).
        what: &'static str,
        /// Why parsing failed.
        reason: String,
    },

    /// Input that is not acceptable before anything is asked of Vault or the OpenSSL library.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// The kind of value (`IP SAN`, `duration`, ...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },

    /// The certificate's subject CN is not the expected one.
    #[error("{origin}: expected subject CN {expected:?}, found {found:?}")]
    WrongSubject {
        /// The certificate's file or label.
        origin: String,
        /// The expected CN.
        expected: String,
        /// The CN found (`<none>` when absent).
        found: String,
    },

    /// The certificate's issuer CN is not the expected one.
    #[error("{origin}: expected issuer CN {expected:?}, found {found:?}")]
    WrongIssuer {
        /// The certificate's file or label.
        origin: String,
        /// The expected issuer CN.
        expected: String,
        /// The issuer CN found (`<none>` when absent).
        found: String,
    },

    /// The certificate's notAfter is in the past.
    #[error(
        "{origin}: certificate {subject:?} expired {} seconds ago (notAfter {not_after}, now {now})",
        now - not_after
    )]
    Expired {
        /// The certificate's file or label.
        origin: String,
        /// Its subject CN.
        subject: String,
        /// notAfter, Unix seconds.
        not_after: i64,
        /// The time checked against, Unix seconds.
        now: i64,
    },

    /// The certificate's notBefore is in the future.
    #[error(
        "{origin}: certificate {subject:?} is not valid for another {} seconds (notBefore {not_before}, now {now})",
        not_before - now
    )]
    NotYetValid {
        /// The certificate's file or label.
        origin: String,
        /// Its subject CN.
        subject: String,
        /// notBefore, Unix seconds.
        not_before: i64,
        /// The time checked against, Unix seconds.
        now: i64,
    },

    /// The certificate is valid but expires sooner than required.
    #[error(
        "{origin}: certificate {subject:?} expected at least {min_remaining} seconds of validity left, found {remaining}"
    )]
    ExpiresTooSoon {
        /// The certificate's file or label.
        origin: String,
        /// Its subject CN.
        subject: String,
        /// Required remaining validity, seconds.
        min_remaining: i64,
        /// Remaining validity, seconds.
        remaining: i64,
    },

    /// The certificate's total lifetime (notAfter - notBefore) is longer than allowed.
    #[error(
        "{origin}: certificate {subject:?} expected a lifetime of at most {max_total} seconds, found {total}"
    )]
    LifetimeTooLong {
        /// The certificate's file or label.
        origin: String,
        /// Its subject CN.
        subject: String,
        /// Allowed lifetime, seconds.
        max_total: i64,
        /// Actual lifetime, seconds.
        total: i64,
    },

    /// A required extended key usage is missing.
    #[error("{origin}: expected extended key usage {expected}, found [{}]", found.join(", "))]
    MissingEku {
        /// The certificate's file or label.
        origin: String,
        /// The required usage (`clientAuth`, `serverAuth`).
        expected: &'static str,
        /// The usages present.
        found: Vec<String>,
    },

    /// The private key does not belong to the certificate.
    #[error(
        "{key} does not match {cert}: expected the certificate's public key, found a different key"
    )]
    KeyMismatch {
        /// The key's file or label.
        key: String,
        /// The certificate's file or label.
        cert: String,
    },

    /// The chain does not verify against the CA bundle.
    #[error("{origin}: chain of {subject:?} does not verify against {ca_bundle}: {reason}")]
    ChainInvalid {
        /// The leaf's file or label.
        origin: String,
        /// The leaf's subject CN.
        subject: String,
        /// The CA bundle's file or label.
        ca_bundle: String,
        /// OpenSSL's verify message.
        reason: String,
    },

    /// A cryptographic operation (key generation, CSR, hashing) failed.
    #[error("{what}: {reason}")]
    Crypto {
        /// What we were doing.
        what: String,
        /// The library's message.
        reason: String,
    },

    /// A Vault call failed.
    #[error("{step}: {source}")]
    Vault {
        /// What we asked Vault (`read role pki-prod/roles/x`).
        step: String,
        /// The client's error.
        #[source]
        source: vault_client::Error,
    },

    /// The role must already exist but does not.
    #[error("role {mount}/roles/{role} does not exist (policy MustExist)")]
    RoleMissing {
        /// PKI mount.
        mount: String,
        /// Role name.
        role: String,
    },

    /// Vault issued a certificate (it exists, valid, in the mount) that failed a check
    /// right after: the caller should revoke `serial`.
    #[error("{source} (certificate serial {serial} was issued: revoke it)")]
    Rejected {
        /// Serial Vault reported, `aa:bb:..` hex.
        serial: String,
        /// Why it was rejected.
        source: Box<Error>,
    },

    /// Vault issued a certificate for a different CN than requested.
    #[error("role {role} issued a certificate for CN {found:?}, expected {expected:?}")]
    CnMismatch {
        /// `mount/roles/name`.
        role: String,
        /// Requested CN.
        expected: String,
        /// CN in the returned certificate.
        found: String,
    },

    /// `issue` returned no private key.
    #[error("role {role}: Vault returned no private key")]
    MissingKey {
        /// `mount/roles/name`.
        role: String,
    },

    /// A path in a tree another user controls is not safe to use as root: a symlink, a
    /// directory that is not one, a file that is not regular (or implausibly large), or an
    /// owner other than the app user or root. Nothing was done through it.
    #[error("refusing {}: {reason}", path.display())]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The disk or the quota is full (`ENOSPC`, `EDQUOT`). Only raised while staging, before
    /// the first rename, so nothing was replaced and no temp file is left.
    #[error("no space left writing {}: nothing was replaced", path.display())]
    NoSpace {
        /// The file being staged.
        path: PathBuf,
    },
}

impl Error {
    /// This failure's class (see [`vault_client::ErrorClass`]): a Vault call's own; a
    /// missing role, an input refused before use, an unreadable or unsafe file are
    /// `Input`; a certificate that fails its checks is `Rejected`; a crypto-library
    /// failure or a full disk is `Local`.
    pub fn class(&self) -> vault_client::ErrorClass {
        use vault_client::ErrorClass;
        match self {
            Error::Vault { source, .. } => source.class(),
            Error::RoleMissing { .. }
            | Error::Io { .. }
            | Error::Unsafe { .. }
            | Error::Invalid { .. } => ErrorClass::Input,
            Error::Crypto { .. } | Error::NoSpace { .. } => ErrorClass::Local,
            Error::Parse { .. }
            | Error::WrongSubject { .. }
            | Error::WrongIssuer { .. }
            | Error::Expired { .. }
            | Error::NotYetValid { .. }
            | Error::ExpiresTooSoon { .. }
            | Error::LifetimeTooLong { .. }
            | Error::MissingEku { .. }
            | Error::KeyMismatch { .. }
            | Error::ChainInvalid { .. }
            | Error::Rejected { .. }
            | Error::CnMismatch { .. }
            | Error::MissingKey { .. } => ErrorClass::Rejected,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn crypto(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Crypto {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn vault(step: impl Into<String>) -> impl FnOnce(vault_client::Error) -> Self {
        let step = step.into();
        move |source| Self::Vault { step, source }
    }
}
