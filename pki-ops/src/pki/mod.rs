//! The PKI secrets engine: roles and issuance.

pub(crate) mod issue;
pub(crate) mod roles;
