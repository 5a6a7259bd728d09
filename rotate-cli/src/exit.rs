//! Exit codes of the `rotate` binary. Scripts branch on these; they never change meaning.

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
    /// The configuration file or an input (app name, CA file, ...) is invalid; nothing changed.
    Config = 3,
    /// Vault could not be reached or rejected us (TLS, mTLS, 403); nothing changed.
    Vault = 4,
    /// A step's gate failed; what that step wrote was rolled back.
    GateFailed = 5,
    /// Vault is sealed or not initialised.
    Sealed = 6,
    /// `plan` found changes to make (like `terraform plan -detailed-exitcode`).
    Changes = 10,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

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
            (Exit::Changes, 10),
        ];
        for (e, n) in codes {
            assert_eq!(e.code(), n, "{e:?}");
        }
    }
}
