//! [`VaultClient`]: one connection pool, a token, and the request/retry loop every endpoint uses.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::config::{ClientConfig, clean_token};
use crate::error::{Error, Result};
use crate::retry::{Idempotency, Outcome, RetryPolicy, is_retryable};
use crate::transport::{HttpRequest, HttpResponse, Method, ReqwestTransport, Transport};

/// Switch a client to the identity files now on disk (see [`VaultClient::reconnect`]).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Reconnect: Send + Sync {
    /// Re-read the configured CA bundle and client identity and use them from now on.
    fn reconnect(&self) -> Result<()>;
}

impl Reconnect for VaultClient {
    fn reconnect(&self) -> Result<()> {
        VaultClient::reconnect(self)
    }
}

/// An async Vault/OpenBao client. Cheap to clone: clones share one connection pool.
///
/// The endpoint functions live on the capability traits ([`crate::SysApi`],
/// [`crate::PkiApi`], [`crate::CertAuthApi`], [`crate::KvApi`], [`crate::TokenApi`]).
#[derive(Clone)]
pub struct VaultClient {
    /// Swapped by [`VaultClient::reconnect`]; shared by every clone.
    transport: Arc<std::sync::RwLock<Arc<dyn Transport>>>,
    /// What [`VaultClient::reconnect`] rebuilds from (`None` for test transports).
    cfg: Option<Arc<ClientConfig>>,
    retry: RetryPolicy,
    token: Option<Arc<Zeroizing<String>>>,
    addr: String,
    server_name: Option<String>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// Build a client: reads the CA bundle and client identity now and fails if any
    /// configured file is unreadable or unusable.
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        let transport = ReqwestTransport::new(cfg)?;
        let mut kept = cfg.clone();
        kept.token = None;
        Ok(VaultClient {
            transport: Arc::new(std::sync::RwLock::new(Arc::new(transport))),
            cfg: Some(Arc::new(kept)),
            retry: cfg.retry.clone(),
            token: cfg.token.clone().map(Arc::new),
            addr: cfg.addr.to_string(),
            server_name: cfg.tls_server_name.clone(),
        })
    }

    /// [`ClientConfig::from_env`] then [`VaultClient::new`].
    pub fn from_env() -> Result<Self> {
        Self::new(&ClientConfig::from_env()?)
    }

    #[cfg(test)]
    pub(crate) fn with_transport(transport: Arc<dyn Transport>, retry: RetryPolicy) -> Self {
        VaultClient {
            transport: Arc::new(std::sync::RwLock::new(transport)),
            cfg: None,
            retry,
            token: None,
            addr: "https://mock".into(),
            server_name: None,
        }
    }

    /// A handle sharing this client's connections but sending `token`.
    pub fn with_token(&self, token: &str) -> Result<Self> {
        let mut c = self.clone();
        c.token = Some(Arc::new(clean_token("token", token)?));
        Ok(c)
    }

    /// Re-read the CA bundle and client identity files of the configuration this client
    /// was built from and use them for every later request (of this client and all its
    /// clones): after the admin's certificate files were replaced, the run goes on with
    /// the new identity. Open pooled connections of the old identity are dropped. On error
    /// (a file unreadable, key and certificate mismatched) the client keeps the old one.
    pub fn reconnect(&self) -> Result<()> {
        let Some(cfg) = &self.cfg else {
            return Ok(());
        };
        let fresh: Arc<dyn Transport> = Arc::new(ReqwestTransport::new(cfg)?);
        *self.transport.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// True when a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The configured address (where we connect).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The TLS server name override, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Send one request with the retry policy; return the raw response whatever its status.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idem: Idempotency,
    ) -> Result<HttpResponse> {
        self.send_accepting(method, path, body, idem, &[]).await
    }

    /// Like [`VaultClient::send`], where the statuses in `answers` are meaningful answers of
    /// this endpoint (e.g. 429 = standby for `sys/health`), never retried.
    pub(crate) async fn send_accepting(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idem: Idempotency,
        answers: &[u16],
    ) -> Result<HttpResponse> {
        crate::path::check_path(path)?;
        let req = HttpRequest {
            method,
            path: path.trim_start_matches('/').to_owned(),
            body,
            token: self.token.clone(),
        };
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let transport = Arc::clone(&self.transport.read().unwrap_or_else(|e| e.into_inner()));
            let result = transport.send(&req).await;
            let outcome = match &result {
                Ok(resp) if answers.contains(&resp.status) => None,
                Ok(resp) if resp.status == 400 && is_kv_upgrading(&resp.body) => {
                    Some(Outcome::KvUpgrading)
                }
                Ok(resp) => Some(Outcome::Status(resp.status)),
                Err(f) if f.not_sent => Some(Outcome::NotSent(f.kind)),
                Err(f) => Some(Outcome::Transport(f.kind)),
            };
            let wait = self.retry.delay(attempt);
            let budget_left = attempt < self.retry.max_attempts
                && start.elapsed() + wait < self.retry.max_elapsed;
            if let Some(outcome) = outcome
                && budget_left
                && is_retryable(idem, outcome)
            {
                tracing::debug!(
                    method = method.as_str(),
                    path,
                    attempt,
                    ?outcome,
                    ?wait,
                    "retrying"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return result.map_err(|f| Error::Transport {
                method: method.as_str().into(),
                path: req.path.clone(),
                kind: f.kind,
                attempts: attempt,
                message: f.message,
                source: f.source,
            });
        }
    }

    /// Send a request and decode Vault's JSON answer; any non-2xx status is an
    /// [`Error::Api`]. `Ok(None)` for an empty (204) body.
    ///
    /// This is the escape hatch for endpoints without a typed function here.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idem: Idempotency,
    ) -> Result<Option<T>> {
        let resp = self.send(method, path, body, idem).await?;
        if !(200..300).contains(&resp.status) {
            return Err(api_error(method, path, &resp));
        }
        decode(method, path, &resp)
    }

    /// Like [`VaultClient::request`] but 404 means `Ok(None)`.
    pub(crate) async fn request_opt<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idem: Idempotency,
    ) -> Result<Option<T>> {
        match self.request(method, path, body, idem).await {
            Err(e) if e.is_not_found() => Ok(None),
            other => other,
        }
    }

    /// A request whose answer must have a body.
    pub(crate) async fn request_some<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idem: Idempotency,
    ) -> Result<T> {
        self.request(method, path, body, idem)
            .await?
            .ok_or_else(|| Error::Decode {
                method: method.as_str().into(),
                path: path.to_owned(),
                reason: "empty body".into(),
            })
    }
}

fn is_kv_upgrading(body: &[u8]) -> bool {
    const MSG: &[u8] = b"Upgrading from non-versioned to versioned data";
    body.windows(MSG.len()).any(|w| w == MSG)
}

pub(crate) fn decode<T: DeserializeOwned>(
    method: Method,
    path: &str,
    resp: &HttpResponse,
) -> Result<Option<T>> {
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&resp.body)
        .map(Some)
        .map_err(|e| Error::Decode {
            method: method.as_str().into(),
            path: path.trim_start_matches('/').to_owned(),
            reason: redacted_decode_error(&e),
        })
}

/// serde's message quotes the offending value ("invalid type: string \"-----BEGIN ..."),
/// which may be a key or a token: keep only what was expected and where.
fn redacted_decode_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let what = match msg.rfind(", expected ") {
        Some(i) if msg.starts_with("invalid") => {
            let expected = &msg[i + 2..];
            let expected = expected.split(" at line ").next().unwrap_or(expected);
            format!("invalid value, {expected}")
        }
        _ => msg.split(" at line ").next().unwrap_or(&msg).to_owned(),
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

pub(crate) fn api_error(method: Method, path: &str, resp: &HttpResponse) -> Error {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let errors = serde_json::from_slice::<Errors>(&resp.body)
        .map(|e| e.errors)
        .unwrap_or_default();
    Error::Api {
        method: method.as_str().into(),
        path: path.trim_start_matches('/').to_owned(),
        status: resp.status,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TransportKind;
    use crate::transport::{MockTransport, TransportFailure};
    use std::time::Duration;

    fn status(code: u16) -> std::result::Result<HttpResponse, TransportFailure> {
        Ok(HttpResponse {
            status: code,
            body: Zeroizing::new(br#"{"errors":["boom"]}"#.to_vec()),
        })
    }

    fn failure(kind: TransportKind) -> std::result::Result<HttpResponse, TransportFailure> {
        Err(TransportFailure {
            kind,
            not_sent: false,
            message: format!("{kind}"),
            source: "mock".into(),
        })
    }

    /// A client over a mock that answers from `script` in order and counts calls.
    fn scripted(
        script: Vec<std::result::Result<HttpResponse, TransportFailure>>,
        policy: RetryPolicy,
    ) -> VaultClient {
        let mut mock = MockTransport::new();
        let mut script = script.into_iter();
        let n = script.len();
        mock.expect_send()
            .times(..=n)
            .returning(move |_| script.next().expect("more calls than scripted"));
        VaultClient::with_transport(Arc::new(mock), policy)
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed: Duration::from_secs(60),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    async fn attempts(
        script: Vec<std::result::Result<HttpResponse, TransportFailure>>,
        idem: Idempotency,
        max: u32,
    ) -> (u32, Result<HttpResponse>) {
        let mut mock = MockTransport::new();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let mut script = script.into_iter();
        mock.expect_send().returning(move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            script.next().expect("more calls than scripted")
        });
        let client = VaultClient::with_transport(Arc::new(mock), policy(max));
        let r = client.send(Method::Get, "sys/x", None, idem).await;
        (calls.load(std::sync::atomic::Ordering::SeqCst), r)
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_read_retries_reset_then_succeeds() {
        let (n, r) = attempts(
            vec![
                failure(TransportKind::ConnectionReset),
                status(502),
                status(200),
            ],
            Idempotency::Idempotent,
            4,
        )
        .await;
        assert_eq!(n, 3);
        assert_eq!(r.unwrap().status, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_max_attempts_and_report_the_count() {
        let (n, r) = attempts(
            (0..5)
                .map(|_| failure(TransportKind::ConnectionReset))
                .collect(),
            Idempotency::Idempotent,
            3,
        )
        .await;
        assert_eq!(n, 3);
        let err = r.unwrap_err();
        assert!(err.is_connection_reset());
        assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
    }

    /// A node that resets during the TLS handshake (it is restarting, or an election is
    /// under way) never got the request: even an issuance is retried, for as long as the
    /// failover window allows.
    #[tokio::test(start_paused = true)]
    async fn a_reset_during_the_handshake_is_retried_even_for_a_write_within_the_window() {
        let not_sent = |kind| {
            Err(TransportFailure {
                kind,
                not_sent: true,
                message: format!("{kind}"),
                source: "mock".into(),
            })
        };
        let mut script: Vec<_> = (0..12)
            .map(|_| not_sent(TransportKind::ConnectionReset))
            .collect();
        script.push(status(200));
        let mut mock = MockTransport::new();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let mut script = script.into_iter();
        mock.expect_send().returning(move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            script.next().expect("more calls than scripted")
        });
        let client = VaultClient::with_transport(
            Arc::new(mock),
            RetryPolicy::window(Duration::from_secs(30)),
        );
        let start = tokio::time::Instant::now();
        let r = client
            .send(Method::Post, "pki/sign/x", None, Idempotency::NonIdempotent)
            .await;
        assert_eq!(r.unwrap().status, 200);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 13);
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_write_is_not_retried_after_reset_or_5xx() {
        let (n, r) = attempts(
            vec![failure(TransportKind::ConnectionReset), status(200)],
            Idempotency::NonIdempotent,
            4,
        )
        .await;
        assert_eq!(n, 1, "a reset write may have been applied");
        assert!(r.unwrap_err().is_connection_reset());
        let (n, r) = attempts(
            vec![status(500), status(200)],
            Idempotency::NonIdempotent,
            4,
        )
        .await;
        assert_eq!(n, 1);
        assert_eq!(r.unwrap().status, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_write_is_retried_when_connection_refused() {
        let (n, r) = attempts(
            vec![failure(TransportKind::ConnectionRefused), status(200)],
            Idempotency::NonIdempotent,
            4,
        )
        .await;
        assert_eq!(n, 2, "refused means the request never left");
        assert_eq!(r.unwrap().status, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn sealed_and_uninitialized_and_client_errors_are_not_retried() {
        for code in [400, 403, 404, 501, 503] {
            let (n, r) =
                attempts(vec![status(code), status(200)], Idempotency::Idempotent, 4).await;
            assert_eq!(n, 1, "status {code}");
            assert_eq!(r.unwrap().status, code);
        }
        let (n, _) = attempts(
            vec![failure(TransportKind::ClientCertRejected), status(200)],
            Idempotency::Idempotent,
            4,
        )
        .await;
        assert_eq!(n, 1, "a rejected client cert will not fix itself");
    }

    #[tokio::test(start_paused = true)]
    async fn elapsed_budget_bounds_retries() {
        let mut p = policy(100);
        p.max_elapsed = Duration::from_millis(1500);
        p.base_delay = Duration::from_millis(400);
        p.max_delay = Duration::from_millis(400);
        let client = scripted(
            (0..100)
                .map(|_| failure(TransportKind::ConnectionRefused))
                .collect(),
            p,
        );
        let start = tokio::time::Instant::now();
        let err = client
            .send(Method::Get, "sys/x", None, Idempotency::Idempotent)
            .await
            .unwrap_err();
        assert!(start.elapsed() <= Duration::from_millis(1500));
        match err {
            Error::Transport { attempts, .. } => assert!((3..=8).contains(&attempts), "{attempts}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn decode_errors_never_quote_the_value() {
        let resp = HttpResponse {
            status: 200,
            body: Zeroizing::new(br#"{"data":{"keys":"-----BEGIN PRIVATE KEY-----"}}"#.to_vec()),
        };
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct D {
            data: K,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct K {
            keys: Vec<String>,
        }
        let err = decode::<D>(Method::Get, "x", &resp)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("PRIVATE"), "{err}");
        assert!(err.contains("expected a sequence"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn api_error_carries_method_path_status_and_vault_errors() {
        let client = scripted(vec![status(403)], policy(1));
        let err = client
            .request::<serde_json::Value>(
                Method::Put,
                "/pki-prod/roles/x",
                None,
                Idempotency::Idempotent,
            )
            .await
            .unwrap_err();
        assert!(err.is_forbidden());
        assert_eq!(err.to_string(), "PUT pki-prod/roles/x: HTTP 403: boom");
    }
}
