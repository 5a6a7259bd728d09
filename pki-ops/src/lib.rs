//! PKI operations for rotation: roles, issuance, X.509 inspection, safe material writes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
