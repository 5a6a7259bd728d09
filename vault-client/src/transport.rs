//! The HTTP seam: one request in, one status + body out. The real implementation is reqwest
//! over rustls; unit tests substitute a mock to drive the retry logic.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use rustls::AlertDescription;
use rustls::CertificateError;
use url::Url;
use zeroize::Zeroizing;

use crate::config::ClientConfig;
use crate::error::{Error, Result, TransportKind};

/// HTTP verbs Vault uses. `List` is sent as `GET ?list=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// LIST (sent as `GET ?list=true`)
    List,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The verb as Vault's docs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::List => "LIST",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One request to Vault, relative to `/v1/`. `Debug` shows neither token nor body.
#[derive(Clone)]
pub(crate) struct HttpRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) body: Option<serde_json::Value>,
    pub(crate) token: Option<Arc<Zeroizing<String>>>,
}

/// Vault's answer. The body may hold secrets (keys, tokens): wiped on drop, never in `Debug`.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", &self.body.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// A request that got no HTTP answer.
#[derive(Debug)]
pub(crate) struct TransportFailure {
    pub(crate) kind: TransportKind,
    /// The connection (TCP and TLS handshake) was never established: the request was
    /// certainly not sent, whatever the kind (a reset during the handshake included).
    pub(crate) not_sent: bool,
    pub(crate) message: String,
    pub(crate) source: Box<dyn std::error::Error + Send + Sync>,
}

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub(crate) trait Transport: Send + Sync {
    async fn send(&self, req: &HttpRequest) -> std::result::Result<HttpResponse, TransportFailure>;
}

/// reqwest over rustls, with the TLS server name override done by resolving the server
/// name to the configured address (so SNI and verification both use the name).
pub(crate) struct ReqwestTransport {
    http: reqwest::Client,
    base: Url,
    namespace: Option<String>,
}

impl ReqwestTransport {
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Self> {
        let tls = crate::tls::rustls_config(cfg)?;
        let mut base = cfg.addr.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .no_proxy()
            .user_agent(concat!("vault-client/", env!("CARGO_PKG_VERSION")));
        if let Some(name) = cfg
            .tls_server_name
            .as_deref()
            .filter(|n| Some(*n) != base.host_str())
        {
            let setting = || "VAULT_TLS_SERVER_NAME".to_owned();
            if name.parse::<IpAddr>().is_ok() || name.contains(['/', ':', ' ']) {
                return Err(Error::Config {
                    setting: setting(),
                    reason: format!("{name:?} must be a DNS name"),
                });
            }
            let host = base
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let port = base.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| Error::Config {
                        setting: "VAULT_ADDR".into(),
                        reason: format!("cannot resolve {host}: {e}"),
                    })?
                    .collect(),
            };
            builder = builder.resolve_to_addrs(name, &addrs);
            base.set_host(Some(name)).map_err(|e| Error::Config {
                setting: setting(),
                reason: format!("{name:?}: {e}"),
            })?;
        }
        let http = builder.build().map_err(|e| Error::Config {
            setting: "http client".into(),
            reason: chain_text(&e),
        })?;
        Ok(ReqwestTransport {
            http,
            base,
            namespace: cfg.namespace.clone(),
        })
    }
}

#[async_trait]
impl Transport for ReqwestTransport {
    async fn send(&self, req: &HttpRequest) -> std::result::Result<HttpResponse, TransportFailure> {
        let mut url = self
            .base
            .join(&format!("v1/{}", req.path.trim_start_matches('/')))
            .map_err(|e| TransportFailure {
                kind: TransportKind::Other,
                not_sent: false,
                message: format!("bad path {:?}: {e}", req.path),
                source: Box::new(e),
            })?;
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::List => {
                url.query_pairs_mut().append_pair("list", "true");
                reqwest::Method::GET
            }
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut rb = self.http.request(method, url);
        if let Some(token) = &req.token {
            let mut value =
                reqwest::header::HeaderValue::from_str(token.as_str()).map_err(|e| {
                    TransportFailure {
                        kind: TransportKind::Other,
                        not_sent: false,
                        message: "token is not a valid header value".into(),
                        source: Box::new(e),
                    }
                })?;
            value.set_sensitive(true);
            rb = rb.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = &req.body {
            rb = rb.json(body);
        }
        let resp = rb.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(classify)?;
        Ok(HttpResponse {
            status,
            body: Zeroizing::new(body.to_vec()),
        })
    }
}

/// Flatten an error's cause chain into one line, including the inner errors that
/// `std::io::Error` hides from `source()`.
pub(crate) fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    parts.join(": ")
}

fn classify(err: reqwest::Error) -> TransportFailure {
    let mut kind = if err.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Other
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            kind = classify_tls(tls);
            break;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    kind = TransportKind::ConnectionRefused;
                    break;
                }
                // A peer that closes mid-exchange (a restarting listener, a stale pooled
                // connection) is the same operational event as a reset.
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => {
                    kind = TransportKind::ConnectionReset;
                    break;
                }
                std::io::ErrorKind::TimedOut => kind = TransportKind::Timeout,
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        if e.to_string()
            .contains("connection closed before message completed")
        {
            kind = TransportKind::ConnectionReset;
            break;
        }
        cur = e.source();
    }
    TransportFailure {
        kind,
        not_sent: err.is_connect() || kind == TransportKind::ConnectionRefused,
        message: chain_text(&err),
        source: Box::new(err),
    }
}

pub(crate) fn classify_tls(err: &rustls::Error) -> TransportKind {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TransportKind::ServerNameMismatch,
        E::InvalidCertificate(
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::BadEncoding
            | CertificateError::InvalidPurpose,
        ) => TransportKind::ServerCertUntrusted,
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => TransportKind::ClientCertRejected,
        _ => TransportKind::Tls,
    }
}
