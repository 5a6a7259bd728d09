//! A raw TLS handshake with the listener, as `openssl s_client -servername` makes it, plus
//! one `GET /v1/sys/seal-status` on the same connection: what the listener serves (its
//! chain, hence its serial) and whether it accepts our client certificate. Each call opens
//! its own connection, so it sees the certificate the listener serves *now* (a pooled
//! client would keep an old session).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::error::{Error, Result, TransportKind};

/// What one handshake saw.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The chain the listener presented, leaf first, DER.
    pub peer_chain: Vec<Vec<u8>>,
    /// The TLS version negotiated, e.g. `TLSv1_3`.
    pub protocol: String,
    /// HTTP status of `GET /v1/sys/seal-status` on that connection (200 when the listener
    /// accepted our client certificate and Vault answered), or why there was none (with
    /// TLS 1.3 a rejected client certificate shows up only after the handshake).
    pub seal_status: std::result::Result<u16, (TransportKind, String)>,
    /// `"sealed":true` in the answer.
    pub sealed: bool,
    /// The issuers the listener named as acceptable for client certificates (DER
    /// distinguished names from its CertificateRequest: the subjects of the
    /// `tls_client_ca_file` it has loaded), or `None` when it asked for no client
    /// certificate.
    pub acceptable_client_cas: Option<Vec<Vec<u8>>>,
    /// Milliseconds, connect to last byte.
    pub millis: u64,
}

/// Connect to `cfg.addr`, handshake verifying the server as `cfg.tls_server_name` (sent
/// as SNI) against `cfg`'s CA bundle only, present `cfg`'s client identity, and ask
/// `sys/seal-status`. A failed handshake is [`Error::Transport`] with the
/// [`TransportKind`] that names the cause (refused, reset, client certificate rejected,
/// untrusted, name mismatch, timeout; `path` is `tls-handshake`); a failure after it is
/// in [`Handshake::seal_status`], with the served chain still reported.
pub async fn tls_handshake(cfg: &ClientConfig, timeout: Duration) -> Result<Handshake> {
    let started = Instant::now();
    let host = cfg
        .addr
        .host_str()
        .ok_or_else(|| Error::Config {
            setting: "VAULT_ADDR".into(),
            reason: format!("{} has no host", cfg.addr),
        })?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = cfg.addr.port_or_known_default().unwrap_or(8200);
    let name = cfg.tls_server_name.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone()).map_err(|e| Error::Config {
        setting: "tls_server_name".into(),
        reason: format!("{name:?}: {e}"),
    })?;
    let mut tls = crate::tls::rustls_config(cfg)?;
    let hints = Arc::new(RecordIssuerHints {
        inner: tls.client_auth_cert_resolver.clone(),
        seen: std::sync::Mutex::new(None),
    });
    tls.client_auth_cert_resolver = hints.clone();
    let tls = Arc::new(tls);
    let fail =
        |kind: TransportKind, e: Box<dyn std::error::Error + Send + Sync>| Error::Transport {
            method: "TLS".into(),
            path: "tls-handshake".into(),
            kind,
            attempts: 1,
            message: format!("{host}:{port} (SNI {name}): {e}"),
            source: e,
        };
    let work = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(io_kind(&e), Box::new(e)))?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let mut stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| fail(io_kind(&e), Box::new(e)))?;
        let (_, conn) = stream.get_ref();
        let peer_chain: Vec<Vec<u8>> = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        let protocol = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        // TLS 1.3: a rejected client certificate shows up only now, as an alert on read.
        let req = format!(
            "GET /v1/sys/seal-status HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
        );
        let mut body = Vec::new();
        let exchange = async {
            stream.write_all(req.as_bytes()).await?;
            match (&mut stream).take(64 * 1024).read_to_end(&mut body).await {
                Ok(_) => Ok(()),
                // Vault may close without close_notify: what was read is the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !body.is_empty() => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        .await;
        let text = String::from_utf8_lossy(&body);
        let seal_status = match exchange {
            Err(e) => Err((io_kind(&e), e.to_string())),
            Ok(()) => text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or((
                    TransportKind::ConnectionReset,
                    "the listener closed the connection without an HTTP answer".to_owned(),
                )),
        };
        Ok(Handshake {
            peer_chain,
            protocol,
            seal_status,
            sealed: text.contains("\"sealed\":true"),
            acceptable_client_cas: hints.take(),
            millis: started.elapsed().as_millis() as u64,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            TransportKind::Timeout,
            format!("no answer within {timeout:?}").into(),
        )),
    }
}

/// Presents what `inner` presents, noting the acceptable issuers the server named.
#[derive(Debug)]
struct RecordIssuerHints {
    inner: Arc<dyn rustls::client::ResolvesClientCert>,
    seen: std::sync::Mutex<Option<Vec<Vec<u8>>>>,
}

impl RecordIssuerHints {
    fn take(&self) -> Option<Vec<Vec<u8>>> {
        self.seen.lock().map(|mut s| s.take()).unwrap_or_default()
    }
}

impl rustls::client::ResolvesClientCert for RecordIssuerHints {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(root_hint_subjects.iter().map(|s| s.to_vec()).collect());
        }
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// The failure class of an I/O error from connect, handshake or read.
fn io_kind(e: &std::io::Error) -> TransportKind {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return crate::transport::classify_tls(tls);
    }
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => TransportKind::ConnectionRefused,
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::UnexpectedEof => TransportKind::ConnectionReset,
        std::io::ErrorKind::TimedOut => TransportKind::Timeout,
        _ => TransportKind::Other,
    }
}
