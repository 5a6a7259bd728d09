//! X.509: what a certificate says, and the checks a gate runs on it.

pub(crate) mod check;
pub(crate) mod inspect;
