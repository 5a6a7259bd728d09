//! Post-hooks and reloads: everything a rotation runs outside Vault.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
