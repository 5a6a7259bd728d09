//! The one error type of this crate.

/// What went wrong managing cert auth.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Vault call failed; `what` says which step.
    #[error("{what}: {source}")]
    Vault {
        /// The step, e.g. "write mapping auth/cert/certs/agent-ncprd1".
        what: String,
        /// The Vault error (method, path, status, Vault's message).
        source: vault_client::Error,
    },
    /// The mount exists but is not a cert auth method.
    #[error("auth mount {mount:?} exists with type {found:?}, expected \"cert\"")]
    WrongAuthType {
        /// The mount path.
        mount: String,
        /// Its actual type.
        found: String,
    },
    /// The login gate's token does not carry exactly the expected policies.
    #[error(
        "login via auth/{mount}/certs/{mapping}: token policies {found:?}, expected exactly {expected:?} (missing {missing:?}, stray {stray:?})"
    )]
    PolicyMismatch {
        /// Cert auth mount.
        mount: String,
        /// Mapping name.
        mapping: String,
        /// Expected policies (besides `default`).
        expected: Vec<String>,
        /// What the token carries.
        found: Vec<String>,
        /// Expected but absent.
        missing: Vec<String>,
        /// Present but not expected.
        stray: Vec<String>,
    },
    /// The login succeeded but not with the certificate we just issued.
    #[error(
        "login via auth/{mount}/certs/{mapping} used certificate serial {found}, expected the new one {expected}"
    )]
    WrongCertificate {
        /// Cert auth mount.
        mount: String,
        /// Mapping name.
        mapping: String,
        /// Serial of the new certificate (decimal).
        expected: String,
        /// Serial Vault saw (decimal, from token metadata).
        found: String,
    },
    /// The login matched another mapping than the one under test.
    #[error("login matched mapping {found:?}, expected {expected:?}")]
    WrongMapping {
        /// The mapping under test.
        expected: String,
        /// The mapping Vault used.
        found: String,
    },
    /// A CA PEM for a mapping holds no certificate.
    #[error("CA certificate for mapping {mapping:?} holds no PEM CERTIFICATE block")]
    EmptyCa {
        /// Mapping name.
        mapping: String,
    },
    /// A mapping carries constraints rotate does not manage: a login with the right
    /// certificate would still fail. Nothing was written.
    #[error(
        "{path} carries constraints rotate does not manage: {fields}; clear them, or set [agents] converge_unmanaged = true to reset them"
    )]
    UnmanagedConstraint {
        /// The mapping path.
        path: String,
        /// `field = value`, comma separated.
        fields: String,
    },
    /// The token lacks capabilities it needs.
    #[error("token lacks {missing}")]
    MissingCapabilities {
        /// `capability on path`, comma separated.
        missing: String,
    },
    /// The token carries policies from its identity (entity or group), which the mapping
    /// does not control.
    #[error(
        "login via auth/{mount}/certs/{mapping}: the token also gets identity policies {identity:?} (from an identity entity or group); remove the agent's entity from that group, or detach them"
    )]
    IdentityPolicies {
        /// Cert auth mount.
        mount: String,
        /// Mapping name.
        mapping: String,
        /// The identity policies.
        identity: Vec<String>,
    },
}

impl Error {
    /// This failure's class (see [`vault_client::ErrorClass`]): a Vault call's own; a
    /// mount, CA or constraint the operator must decide about is `Input`; a mapping,
    /// policy or login that does not prove what it must is `Rejected`.
    pub fn class(&self) -> vault_client::ErrorClass {
        use vault_client::ErrorClass;
        match self {
            Error::Vault { source, .. } => source.class(),
            Error::WrongAuthType { .. }
            | Error::EmptyCa { .. }
            | Error::UnmanagedConstraint { .. } => ErrorClass::Input,
            Error::PolicyMismatch { .. }
            | Error::WrongCertificate { .. }
            | Error::WrongMapping { .. }
            | Error::MissingCapabilities { .. }
            | Error::IdentityPolicies { .. } => ErrorClass::Rejected,
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn vault(what: impl Into<String>) -> impl FnOnce(vault_client::Error) -> Error {
    let what = what.into();
    move |source| Error::Vault { what, source }
}
