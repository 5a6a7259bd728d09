//! Which failures are retried, how often, and how long to wait between attempts.

use std::time::Duration;

use crate::error::TransportKind;

/// Bounded, jittered exponential backoff for transient failures.
///
/// Idempotent requests (reads, and writes that set a resource to a given state) are retried
/// on connection refused/reset, timeouts, 500/502/504 and 429. A non-idempotent write
/// (issuing a certificate, logging in, a KV write) is retried only when the connection was
/// refused, i.e. when the request certainly never reached Vault. 501 (not initialized) and
/// 503 (sealed) are states, not glitches: they are never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
    /// Delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// Upper bound of any single delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            max_elapsed: Duration::from_secs(20),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// Retry transient failures for up to `window` (no attempt cap), backing off to at
    /// most 2 s between attempts: riding out a leader election or a restarting server.
    pub fn window(window: Duration) -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            max_elapsed: window,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1-based): "equal jitter", uniformly in
    /// `[d/2, d]` where `d = min(base * 2^(retry-1), max_delay)`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let d = exp.min(self.max_delay);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Whether an HTTP request may safely be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Repeating it yields the same state (GET, LIST, a PUT of a whole policy or role).
    Idempotent,
    /// Repeating it may do the work twice (issue a certificate, log in, KV write).
    NonIdempotent,
}

/// How an attempt ended, as far as the retry decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Status(u16),
    /// A KV mount just enabled as v2 answers 400 "Upgrading from non-versioned to versioned
    /// data" for a moment: transient.
    KvUpgrading,
    Transport(TransportKind),
    /// The connection was never established (refused, or reset or timed out during the
    /// TLS handshake): the request was not sent.
    NotSent(TransportKind),
}

/// Should this outcome be retried (budget permitting)?
pub(crate) fn is_retryable(idem: Idempotency, outcome: Outcome) -> bool {
    match outcome {
        // A rejected client certificate or an untrusted server will not change by waiting.
        Outcome::NotSent(kind) => kind.transient(),
        Outcome::Transport(kind) if kind.request_not_sent() => true,
        Outcome::Transport(kind) => idem == Idempotency::Idempotent && kind.transient(),
        Outcome::KvUpgrading => idem == Idempotency::Idempotent,
        Outcome::Status(s) => idem == Idempotency::Idempotent && matches!(s, 429 | 500 | 502 | 504),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Idempotency::*;

    #[test]
    fn decision_table() {
        use TransportKind::*;
        let t = |k| Outcome::Transport(k);
        assert!(is_retryable(NonIdempotent, t(ConnectionRefused)));
        assert!(!is_retryable(NonIdempotent, t(ConnectionReset)));
        // A reset during the TLS handshake (a restarting node): never sent, so even a
        // certificate issuance is retried; a refused client certificate is not.
        assert!(is_retryable(
            NonIdempotent,
            Outcome::NotSent(ConnectionReset)
        ));
        assert!(is_retryable(NonIdempotent, Outcome::NotSent(Timeout)));
        assert!(!is_retryable(
            Idempotent,
            Outcome::NotSent(ClientCertRejected)
        ));
        assert!(!is_retryable(
            Idempotent,
            Outcome::NotSent(ServerCertUntrusted)
        ));
        assert!(!is_retryable(NonIdempotent, t(Timeout)));
        assert!(!is_retryable(NonIdempotent, Outcome::Status(502)));
        assert!(is_retryable(Idempotent, t(ConnectionReset)));
        assert!(is_retryable(Idempotent, Outcome::KvUpgrading));
        assert!(!is_retryable(NonIdempotent, Outcome::KvUpgrading));
        assert!(is_retryable(Idempotent, t(Timeout)));
        for s in [429, 500, 502, 504] {
            assert!(is_retryable(Idempotent, Outcome::Status(s)), "{s}");
        }
        for s in [400, 403, 404, 501, 503] {
            assert!(!is_retryable(Idempotent, Outcome::Status(s)), "{s}");
        }
        for k in [
            ClientCertRejected,
            ServerCertUntrusted,
            ServerNameMismatch,
            Tls,
        ] {
            assert!(!is_retryable(Idempotent, t(k)), "{k:?}");
        }
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = RetryPolicy::default();
        for retry in 1..40 {
            let d = p.delay(retry);
            let cap = (p.base_delay * (1 << (retry - 1).min(16))).min(p.max_delay);
            assert!(
                d >= cap / 2 && d <= cap,
                "retry {retry}: {d:?} vs cap {cap:?}"
            );
        }
    }
}
