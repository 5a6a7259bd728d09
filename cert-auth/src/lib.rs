//! The cert auth method, as a rotation needs it: make sure it is enabled, converge the
//! mappings (`auth/<mount>/certs/<name>`) and the policies they attach, report drift as
//! data without changing anything, and prove the result with a real login.
//!
//! Everything takes the narrow `vault_client` capability traits, so unit tests run
//! against `vault_client::MockCertAuthApi` / `MockSysApi` and production against a
//! `VaultClient`.
//!
//! ```no_run
//! # async fn demo(admin: &vault_client::VaultClient, agent: &vault_client::VaultClient) -> Result<(), cert_auth::Error> {
//! use cert_auth::{MappingSpec, ensure_enabled, login_gate, upsert_mapping};
//! ensure_enabled(admin, "cert", "enabled by rotate", false).await?;
//! let spec = MappingSpec {
//!     name: "agent-ncprd1".into(),
//!     ca_pem: std::fs::read_to_string("/home/ncprd1/vault/ca/ca.pem").unwrap_or_default(),
//!     allowed_common_names: vec!["agent-ncprd1.prod.privsec.ch".into()],
//!     token_policies: vec!["pki-issue-ncprd1".into(), "marker-cert-auth".into()],
//!     token_ttl: 3600,
//!     token_max_ttl: None,
//!     keep_if_present: vec![],
//!     unmanaged: cert_auth::Unmanaged::Refuse,
//! };
//! let outcome = upsert_mapping(admin, "cert", &spec, false).await?;
//! println!("{:?} {:?}", outcome.action, outcome.drift);
//! let proof = login_gate(agent, Some(admin), "cert", "agent-ncprd1", &spec.token_policies, None).await?;
//! println!("token policies {:?}", proof.token_policies);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod enable;
mod error;
mod login;
mod mapping;
mod policy;

pub use enable::{EnableAction, ensure_enabled};
pub use error::{Error, Result};
pub use login::{LoginProof, login_gate, require_capabilities};
pub use mapping::{
    Drift, MappingAction, MappingOutcome, MappingSpec, Unmanaged, diff_mapping, plan_mapping,
    restore_mapping, upsert_mapping,
};
pub use policy::{PolicyAction, PolicyMode, PolicyOutcome, ensure_policy};
