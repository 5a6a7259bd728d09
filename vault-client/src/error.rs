//! The one error type of this crate.

use std::fmt;
use std::path::PathBuf;

/// What went wrong talking to Vault, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value (an environment variable or a builder input) is invalid.
    #[error("invalid configuration {setting}: {reason}")]
    Config {
        /// The setting, e.g. `VAULT_ADDR` or `tls_server_name`.
        setting: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A configured file (CA bundle, client certificate or key) could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        /// What the file is for, e.g. "CA bundle (VAULT_CACERT)".
        what: String,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A configured file was read but does not hold the PEM material expected.
    #[error("{what} {}: {reason}", path.display())]
    BadPem {
        /// What the file is for.
        what: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Vault answered with an error status.
    #[error("{method} {path}: HTTP {status}{}", fmt_errors(errors))]
    Api {
        /// HTTP method.
        method: String,
        /// Vault path, without the `/v1/` prefix.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Vault's `errors` array (may be empty).
        errors: Vec<String>,
    },
    /// The request never got an HTTP answer (connect, TLS, timeout, reset).
    #[error("{method} {path}: {kind} after {attempts} attempt(s): {message}")]
    Transport {
        /// HTTP method.
        method: String,
        /// Vault path, without the `/v1/` prefix.
        path: String,
        /// The failure class, for callers that branch on it.
        kind: TransportKind,
        /// How many attempts were made (retries included).
        attempts: u32,
        /// The full cause chain, flattened to text.
        message: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Vault answered 2xx but the body is not what the endpoint documents.
    #[error("{method} {path}: unexpected response body: {reason}")]
    Decode {
        /// HTTP method.
        method: String,
        /// Vault path.
        path: String,
        /// What did not match.
        reason: String,
    },
}

fn fmt_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// What kind of failure an error is, for a caller that maps failures to outcomes (exit
/// codes, retries): the error types of `pki-ops` and `cert-auth` say theirs too, so no
/// caller reads a message to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// An input is wrong: a setting, a file, or a name Vault does not have (404, e.g. a
    /// mount or role that does not exist). Fix the input; nothing was changed.
    Input,
    /// Vault could not be reached, or refused the request (TLS, 403, a server error).
    Vault,
    /// Vault is sealed (503) or not initialised (501).
    Sealed,
    /// The result was checked and is not what it must be (a certificate, a mapping, a
    /// login that did not prove what it should).
    Rejected,
    /// A local failure with no better class (I/O, the crypto library).
    Local,
}

impl Error {
    /// This failure's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config { .. } | Error::ReadFile { .. } | Error::BadPem { .. } => {
                ErrorClass::Input
            }
            Error::Api {
                status: 503 | 501, ..
            } => ErrorClass::Sealed,
            Error::Api { status: 404, .. } => ErrorClass::Input,
            Error::Api { .. } | Error::Transport { .. } | Error::Decode { .. } => ErrorClass::Vault,
        }
    }

    /// The HTTP status, when Vault answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The transport failure class, when the request got no HTTP answer.
    pub fn transport_kind(&self) -> Option<TransportKind> {
        match self {
            Error::Transport { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True for a connection reset by peer (ECONNRESET, errno 104): the listener is
    /// restarting, or rejected the client certificate, SNI or chain mid-handshake.
    pub fn is_connection_reset(&self) -> bool {
        self.transport_kind() == Some(TransportKind::ConnectionReset)
    }

    /// True when Vault said 404 (absent path; absent role, mapping or secret).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when Vault said 403 (token lacks the capability, or is invalid).
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }
}

impl Error {
    /// What to do next, for an operator reading the failure at 3 a.m.: the likely causes
    /// of this failure class and the check or fix for each. Shared by the listener gate
    /// and the healthcheck.
    pub fn next_action(&self) -> String {
        match self {
            Error::Transport { kind, .. } => kind.next_action().to_owned(),
            Error::Api { status: 503, .. } => {
                "Vault is sealed (or standby without forwarding): unseal it (`bao operator unseal`), then run again".into()
            }
            Error::Api { status: 403, .. } => {
                "forbidden: the token is invalid or its policy lacks this path; check `bao token lookup` and the admin policy".into()
            }
            Error::Api { status: 429 | 472 | 473, .. } => {
                "a standby or performance-standby node answered: point the address at the active node".into()
            }
            Error::ReadFile { .. } | Error::BadPem { .. } | Error::Config { .. } => {
                "fix the named file or setting, then run again".into()
            }
            _ => "see the message above".into(),
        }
    }
}

/// Why a request got no HTTP answer. Each names the likely operational cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// Nothing is listening at the address (ECONNREFUSED).
    ConnectionRefused,
    /// The peer reset the connection (ECONNRESET, errno 104).
    ConnectionReset,
    /// The server rejected or required our client certificate.
    ClientCertRejected,
    /// The server's certificate does not chain to the trusted CA bundle.
    ServerCertUntrusted,
    /// The server's certificate is not valid for the TLS server name we expect.
    ServerNameMismatch,
    /// Another TLS failure (protocol, expired certificate, ...).
    Tls,
    /// The connect or request timeout elapsed.
    Timeout,
    /// Anything else (DNS, malformed response, ...).
    Other,
}

impl TransportKind {
    /// Safe to retry even a non-idempotent request: nothing reached the server.
    pub(crate) fn request_not_sent(self) -> bool {
        matches!(self, TransportKind::ConnectionRefused)
    }

    /// Worth retrying for an idempotent request.
    pub(crate) fn transient(self) -> bool {
        matches!(
            self,
            TransportKind::ConnectionRefused
                | TransportKind::ConnectionReset
                | TransportKind::Timeout
        )
    }
}

impl TransportKind {
    /// The likely causes and the next action for this failure class.
    pub fn next_action(self) -> &'static str {
        match self {
            TransportKind::ConnectionRefused => {
                "nothing is listening: the server is down or restarting; check the unit/container and the address and port"
            }
            TransportKind::ConnectionReset => {
                "the listener reset the connection (errno 104): it is restarting, or it rejected the client certificate (its tls_client_ca_file does not trust the issuer; SIGHUP never reloads that file), or SNI/chain do not match; check the server log"
            }
            TransportKind::ClientCertRejected => {
                "the listener refused the client certificate: it is expired, not yet valid, or not issued by a CA in the listener's tls_client_ca_file (SIGHUP never reloads it: restart the server after changing it)"
            }
            TransportKind::ServerCertUntrusted => {
                "the CA bundle does not verify the listener's chain: add the issuing CA chain to the bundle (VAULT_CACERT) or fix the listener's tls_cert_file chain"
            }
            TransportKind::ServerNameMismatch => {
                "the listener's certificate does not carry the TLS server name: set VAULT_TLS_SERVER_NAME to a name in its SANs, or reissue it with that name"
            }
            TransportKind::Tls => {
                "TLS failed: check certificate validity dates (expired / not yet valid), protocol versions and the server log"
            }
            TransportKind::Timeout => {
                "no answer in time: the server is overloaded, blocked, or a firewall drops packets"
            }
            TransportKind::Other => "see the message above",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::ConnectionRefused => "connection refused (nothing listening)",
            TransportKind::ConnectionReset => "connection reset by peer (errno 104)",
            TransportKind::ClientCertRejected => {
                "client certificate rejected or missing (the listener requires mTLS)"
            }
            TransportKind::ServerCertUntrusted => "server certificate not trusted by the CA bundle",
            TransportKind::ServerNameMismatch => {
                "server certificate not valid for the TLS server name"
            }
            TransportKind::Tls => "TLS failure",
            TransportKind::Timeout => "timed out",
            TransportKind::Other => "transport failure",
        })
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
