//! The cert auth method: mappings, policies, drift, and the login gate.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
