//! One module per Vault area; one function per endpoint, the mount always explicit.

pub(crate) mod cert_auth;
pub(crate) mod kv;
pub(crate) mod pki;
pub(crate) mod sys;
pub(crate) mod token;
