//! Why a step (or one target within it) failed, and the exit class of each failure.

use crate::state::journal::JournalError;

/// Why a step (or one app within it) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// A Vault call failed.
    #[error("{what}: {source}")]
    Vault {
        /// Which call, in words.
        what: String,
        /// Method, path, status, Vault's message.
        source: vault_client::Error,
    },
    /// A PKI operation or check failed (role, issuance, X.509 check, file write).
    #[error(transparent)]
    Pki(#[from] pki_ops::Error),
    /// A cert auth operation failed.
    #[error(transparent)]
    CertAuth(Box<cert_auth::Error>),
    /// A hook, reload or rendering failed.
    #[error(transparent)]
    Hook(Box<hooks::Error>),
    /// An input is invalid (missing home, bad CA chain, ...).
    #[error("{what}: {reason}")]
    Invalid {
        /// What, with its path or name.
        what: String,
        /// Why.
        reason: String,
    },
    /// The journal could not record an undo or a state: the write was not made.
    #[error(transparent)]
    Journal(Box<JournalError>),
    /// What this target needs is made by an earlier step that has not run yet (e.g. the
    /// mapping of step 3 for step 4). A failure in a run; in a plan of both steps, the
    /// target is planned "after step N".
    #[error("{what}: missing; {step} creates it: run it first")]
    NeedsEarlier {
        /// What is missing.
        what: String,
        /// The step that makes it.
        step: crate::state::journal::StepId,
    },
    /// Vault answered sealed after the step's writes (e.g. it restarted): the step is
    /// kept as applied, not undone; after unsealing, `rotate run --resume` re-gates it.
    #[error("Vault is sealed: {reason}")]
    Sealed {
        /// What was seen, and what to do.
        reason: String,
    },
    /// Vault stopped answering after the step's writes (a restart, a failover): like
    /// [`StepError::Sealed`], the step is kept as applied for `rotate run --resume`.
    #[error("Vault is unreachable: {reason}")]
    VaultGone {
        /// What was seen, and what to do.
        reason: String,
    },
    /// The healthcheck failed: Vault does not answer as healthy (nothing was written by
    /// the check; exit 4 when nothing else was).
    #[error("Vault is not healthy: {reason}")]
    Unhealthy {
        /// The last failure, with its diagnosis and the next action.
        reason: String,
    },
    /// The step's gate failed.
    #[error("gate of step {step} failed for {app}: {reason}")]
    Gate {
        /// Step name.
        step: &'static str,
        /// App.
        app: String,
        /// What the gate saw.
        reason: String,
    },
}

impl StepError {
    pub(crate) fn vault(what: impl Into<String>, source: vault_client::Error) -> Self {
        StepError::Vault {
            what: what.into(),
            source,
        }
    }

    /// A gate failure that keeps the target applied (journaled) for `--resume` instead of
    /// undoing it: Vault came back sealed.
    pub fn awaits_resume(&self) -> bool {
        matches!(self, StepError::Sealed { .. } | StepError::VaultGone { .. })
    }

    /// Vault went away mid-request: no answer, a reset, or a 5xx or 429 left after the
    /// retry window (a leader change, a restart). Whether a write took effect is unknown,
    /// so the target's writes are kept for `--resume`, never unwound in the dark.
    pub fn lost_vault(&self) -> bool {
        use vault_client::TransportKind as K;
        fn lost(e: &vault_client::Error, reset_too: bool) -> bool {
            matches!(e.transport_kind(), Some(K::ConnectionRefused | K::Timeout))
                || (reset_too && e.is_connection_reset())
                || matches!(e.status(), Some(429 | 500 | 502 | 503 | 504))
        }
        match self {
            // The admin's own requests: its identity was proven, so a reset is the
            // server going away.
            StepError::Vault { source, .. }
            | StepError::Pki(pki_ops::Error::Vault { source, .. }) => lost(source, true),
            // A login with someone else's certificate (a gate): a reset may be the
            // listener refusing that certificate, which unwinding must answer.
            StepError::CertAuth(e) => {
                matches!(&**e, cert_auth::Error::Vault { source, .. } if lost(source, false))
            }
            StepError::VaultGone { .. } => true,
            _ => false,
        }
    }
}

impl From<cert_auth::Error> for StepError {
    fn from(e: cert_auth::Error) -> Self {
        StepError::CertAuth(Box::new(e))
    }
}

impl From<hooks::Error> for StepError {
    fn from(e: hooks::Error) -> Self {
        StepError::Hook(Box::new(e))
    }
}

impl From<JournalError> for StepError {
    fn from(e: JournalError) -> Self {
        StepError::Journal(Box::new(e))
    }
}
