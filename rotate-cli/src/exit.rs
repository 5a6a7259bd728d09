//! Exit codes of the `rotate` binary, and the one place failures map to them. Scripts
//! branch on these; they never change meaning.

use vault_client::ErrorClass;

use crate::error::StepError;
use crate::state::journal::{JournalError, is_full};

/// Exit codes, one per outcome class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything asked for was done and every gate passed (or, for `plan`, nothing to change).
    Ok = 0,
    /// An unexpected failure (I/O, a bug); nothing more specific applies.
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The configuration file or an input (app name, CA file, home, ...) is invalid;
    /// nothing was written anywhere.
    Config = 3,
    /// Vault could not be reached or refused us (TLS, mTLS, 403); nothing was written.
    Vault = 4,
    /// A step failed (its gate, or a write) after writing; everything the failed targets
    /// wrote was undone (and certificates they issued revoked). Targets that passed their
    /// gate stay committed; the report lists both.
    GateFailed = 5,
    /// Vault is sealed or not initialised; nothing was written.
    Sealed = 6,
    /// A rollback is incomplete: the report and the journal list what is left to fix by
    /// hand (`rotate rollback` retries it).
    RollbackIncomplete = 7,
    /// The run was interrupted (signal, crash), or Vault came back sealed after a step's
    /// writes (the step is kept applied), and must be finished first: `rotate run
    /// --resume` (after unsealing), or `rotate rollback`.
    ResumeNeeded = 8,
    /// Another run holds the lock of this state directory; nothing was done.
    Locked = 9,
    /// `plan` found changes to make (like `terraform plan -detailed-exitcode`).
    Changes = 10,
    /// `verify` found a problem (each failed check is listed); nothing was changed.
    VerifyFailed = 11,
}

impl Exit {
    /// Every code, in numeric order (the README table is tested against this).
    pub const ALL: [Exit; 12] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Config,
        Exit::Vault,
        Exit::GateFailed,
        Exit::Sealed,
        Exit::RollbackIncomplete,
        Exit::ResumeNeeded,
        Exit::Locked,
        Exit::Changes,
        Exit::VerifyFailed,
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The code for `n`, if it is one of ours.
    pub fn from_code(n: u8) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| e.code() == n)
    }

    /// The worse of two outcomes (what a run reports when targets differ).
    pub fn worst(self, other: Exit) -> Exit {
        fn rank(e: Exit) -> u8 {
            match e {
                Exit::Ok => 0,
                Exit::Changes => 1,
                Exit::VerifyFailed => 1,
                Exit::Config => 2,
                Exit::Vault => 3,
                Exit::Sealed => 4,
                Exit::GateFailed => 5,
                Exit::Failure => 6,
                Exit::Usage => 6,
                Exit::Locked => 7,
                Exit::ResumeNeeded => 8,
                Exit::RollbackIncomplete => 9,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// Every failure's exit code is decided here, from its type and class: the crates below
/// say what class a failure is ([`ErrorClass`]); nothing reads a message to decide.
impl From<ErrorClass> for Exit {
    fn from(c: ErrorClass) -> Exit {
        match c {
            ErrorClass::Input => Exit::Config,
            ErrorClass::Vault => Exit::Vault,
            ErrorClass::Sealed => Exit::Sealed,
            ErrorClass::Rejected => Exit::GateFailed,
            _ => Exit::Failure,
        }
    }
}

impl StepError {
    /// The exit code this failure maps to.
    pub fn exit(&self) -> Exit {
        match self {
            StepError::Vault { source, .. } => source.class().into(),
            StepError::CertAuth(e) => e.class().into(),
            StepError::Pki(e) => e.class().into(),
            StepError::Hook(e) if e.is_input() => Exit::Config,
            StepError::Hook(_) | StepError::Gate { .. } => Exit::GateFailed,
            StepError::Invalid { .. } | StepError::NeedsEarlier { .. } => Exit::Config,
            StepError::Journal(e) => e.exit(),
            StepError::Sealed { .. } => Exit::Sealed,
            StepError::Unhealthy { .. } => Exit::Vault,
            StepError::VaultGone { .. } => Exit::ResumeNeeded,
        }
    }
}

impl JournalError {
    /// The exit code: 3 for a state directory that cannot be trusted; 8 for a journal
    /// that could not be written for lack of space (the run stopped where it was: free
    /// space, then `rotate run --resume`); 1 otherwise.
    pub fn exit(&self) -> Exit {
        match self {
            JournalError::Untrusted { .. } => Exit::Config,
            JournalError::Io { source, .. } if is_full(source) => Exit::ResumeNeeded,
            _ => Exit::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;
    use crate::error::StepError;

    fn api(status: u16) -> vault_client::Error {
        vault_client::Error::Api {
            method: "GET".into(),
            path: "pki/cert/ca_chain".into(),
            status,
            errors: vec!["no handler for route \"pki/cert/ca_chain\"".into()],
        }
    }

    /// One mapping, whichever crate or layer the failure comes through: the status
    /// decides, never the message.
    #[test]
    fn a_failure_maps_to_one_exit_code_through_every_layer() {
        for (status, exit) in [
            (404, Exit::Config),
            (403, Exit::Vault),
            (500, Exit::Vault),
            (503, Exit::Sealed),
            (501, Exit::Sealed),
        ] {
            let step = StepError::vault("read CA chain", api(status));
            let pki = StepError::Pki(pki_ops::Error::Vault {
                step: "issue".into(),
                source: api(status),
            });
            let cert = StepError::from(cert_auth::Error::Vault {
                what: "login".into(),
                source: api(status),
            });
            for e in [&step, &pki, &cert] {
                assert_eq!(e.exit(), exit, "{status}: {e}");
            }
        }
        let unhealthy = StepError::Unhealthy {
            reason: "standby".into(),
        };
        assert_eq!(unhealthy.exit(), Exit::Vault);
    }

    /// Scripts depend on these numbers: changing one is a breaking change.
    #[test]
    fn exit_codes_are_stable() {
        let codes = [
            (Exit::Ok, 0),
            (Exit::Failure, 1),
            (Exit::Usage, 2),
            (Exit::Config, 3),
            (Exit::Vault, 4),
            (Exit::GateFailed, 5),
            (Exit::Sealed, 6),
            (Exit::RollbackIncomplete, 7),
            (Exit::ResumeNeeded, 8),
            (Exit::Locked, 9),
            (Exit::Changes, 10),
        ];
        for (e, n) in codes {
            assert_eq!(e.code(), n, "{e:?}");
        }
    }

    /// README's exit-code table lists exactly the codes of the enum, in order.
    #[test]
    fn readme_table_lists_every_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md at the workspace root");
        let table = readme
            .split("### Exit codes")
            .nth(1)
            .expect("README has an `### Exit codes` section");
        let listed: Vec<u8> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.trim_start_matches('|').split('|').next())
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(listed, codes, "README's exit-code table vs `Exit::ALL`");
    }
}
