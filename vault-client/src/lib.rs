//! An async client for the Vault / OpenBao HTTP API, built for TLS rotation work.
//!
//! - **mTLS and a TLS server name override**: connect to `https://127.0.0.1:22400` while
//!   verifying the server as `vault.prod.privsec.ch` (the name is sent as SNI too). When a
//!   CA bundle is configured, only it is trusted. A configured certificate, key or CA
//!   that cannot be read is an error, never silently dropped; verification is never skipped.
//! - **Configuration** from [`ClientConfig`] or the standard environment (`VAULT_ADDR`,
//!   `VAULT_CACERT`, `VAULT_CAPATH`, `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`,
//!   `VAULT_TLS_SERVER_NAME`, `VAULT_TOKEN`, `VAULT_NAMESPACE`; `BAO_*` twins win).
//! - **Errors** ([`Error`]) carry method, path, status and Vault's `errors`; transport
//!   failures say *why* ([`TransportKind`]: refused, reset/errno 104, client cert rejected,
//!   untrusted chain, wrong name, timeout).
//! - **Retries** ([`RetryPolicy`]): bounded, jittered, only for idempotent requests, except
//!   "connection refused", which proves nothing was sent.
//! - **Listener probe** ([`tls_handshake`]): a raw TLS handshake on a new connection, as
//!   `openssl s_client -servername` makes it, returning the chain the listener serves now
//!   and whether it accepts our client certificate; [`Error::next_action`] says what to do
//!   about each failure class.
//! - **Capability traits** ([`SysApi`], [`PkiApi`], [`CertAuthApi`], [`KvApi`],
//!   [`TokenApi`]) implemented by [`VaultClient`]; with the `mocks` feature, mockall
//!   mocks (`MockSysApi`, ...) for unit tests of code built on them.
//!
//! ```no_run
//! use vault_client::{ClientConfig, SysApi, VaultClient};
//!
//! # async fn demo() -> Result<(), vault_client::Error> {
//! let cfg = ClientConfig::new("https://127.0.0.1:22400")?
//!     .ca_cert("/etc/vault/ca.pem")
//!     .client_identity("/root/.vault/admin.crt", "/root/.vault/admin.key")
//!     .tls_server_name("vault.prod.privsec.ch");
//! let vault = VaultClient::new(&cfg)?;
//! let status = vault.seal_status().await?;
//! println!("sealed={} version={}", status.sealed, status.version);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod client;
mod config;
mod error;
mod path;
mod probe;
mod retry;
mod tls;
mod transport;

pub use api::cert_auth::{AuthInfo, CertAuthApi, CertRole};
pub use api::kv::{KvApi, KvMetadata, KvSecret, KvVersion};
pub use api::pki::{CertRecord, IssueRequest, IssuedCert, IssuerInfo, PkiApi};
pub use api::sys::{
    AutopilotServer, AutopilotState, Health, HealthBody, HealthState, InitResponse, Leader,
    MountInfo, SealStatus, SysApi,
};
pub use api::token::{TokenApi, TokenInfo};
pub use client::{Reconnect, VaultClient};
pub use config::{ClientConfig, DEFAULT_ADDR};
pub use error::{Error, ErrorClass, Result, TransportKind};
pub use path::{check_mount, check_name};
pub use probe::{Handshake, tls_handshake};
pub use retry::{Idempotency, RetryPolicy};
pub use tls::{load_certs, load_key};
pub use transport::Method;

#[cfg(any(test, feature = "mocks"))]
pub use api::{
    cert_auth::MockCertAuthApi, kv::MockKvApi, pki::MockPkiApi, sys::MockSysApi,
    token::MockTokenApi,
};
#[cfg(any(test, feature = "mocks"))]
pub use client::MockReconnect;
