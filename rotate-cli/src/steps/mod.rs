//! The ordered steps. Each step is a function over the config, the selected apps and the
//! narrow Vault traits, returning a report; `dry_run` plans without writing anything.

use std::path::{Path, PathBuf};

use crate::config::AppConfig;
use crate::exit::Exit;

pub(crate) mod agents;
pub(crate) mod leaf;

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
    /// A step failed after writing; what it wrote was rolled back (`rollback` says how that went).
    #[error("{source}; {rollback}")]
    RolledBack {
        /// The failure.
        source: Box<StepError>,
        /// The outcome of the rollback.
        rollback: String,
    },
    /// The step's gate failed; its writes were rolled back.
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

    /// The exit code this failure maps to.
    pub fn exit(&self) -> Exit {
        match self {
            StepError::Vault { source, .. } => vault_exit(source),
            StepError::RolledBack { source, .. } => source.exit(),
            StepError::CertAuth(e) => match &**e {
                cert_auth::Error::Vault { source, .. } => vault_exit(source),
                _ => Exit::GateFailed,
            },
            StepError::Pki(pki_ops::Error::Vault { source, .. }) => vault_exit(source),
            StepError::Pki(pki_ops::Error::RoleMissing { .. })
            | StepError::Pki(pki_ops::Error::NotWritable { .. })
            | StepError::Pki(pki_ops::Error::Io { .. })
            | StepError::Pki(pki_ops::Error::UnknownOwner { .. })
            | StepError::Pki(pki_ops::Error::Chown { .. })
            | StepError::Invalid { .. } => Exit::Config,
            StepError::Hook(e) => match **e {
                hooks::Error::BadOwner { .. }
                | hooks::Error::UnknownUser { .. }
                | hooks::Error::InvalidSpec { .. }
                | hooks::Error::InvalidReloader { .. } => Exit::Config,
                _ => Exit::GateFailed,
            },
            StepError::Pki(_) | StepError::Gate { .. } => Exit::GateFailed,
        }
    }
}

impl From<cert_auth::Error> for StepError {
    fn from(e: cert_auth::Error) -> Self {
        StepError::CertAuth(Box::new(e))
    }
}

/// A role outcome in words: `Created`, or `would be created` in a plan.
pub(crate) fn role_action_text(r: &pki_ops::RoleOutcome) -> String {
    if r.dry_run && r.action != pki_ops::RoleAction::Unchanged {
        format!("would be {:?}", r.action).to_lowercase()
    } else {
        format!("{:?}", r.action)
    }
}

/// The exit code of a step from its apps' codes: the first failure's, else `Ok`.
pub(crate) fn exit_of(codes: impl IntoIterator<Item = Option<u8>>) -> Exit {
    match codes.into_iter().flatten().next() {
        None => Exit::Ok,
        Some(code) => [Exit::Config, Exit::Vault, Exit::Sealed, Exit::GateFailed]
            .into_iter()
            .find(|e| e.code() == code)
            .unwrap_or(Exit::Failure),
    }
}

impl From<hooks::Error> for StepError {
    fn from(e: hooks::Error) -> Self {
        StepError::Hook(Box::new(e))
    }
}

fn vault_exit(e: &vault_client::Error) -> Exit {
    match e.status() {
        Some(503 | 501) => Exit::Sealed,
        _ => Exit::Vault,
    }
}

/// Make sure the directory of `file` exists: create each missing level (with `mode`,
/// owned by the app user when configured, so the app can reach what is inside); refuse a
/// non-directory in the way.
pub(crate) fn ensure_dir(file: &Path, mode: u32, app: &AppConfig) -> Result<PathBuf, StepError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = file.parent().unwrap_or(Path::new("/")).to_owned();
    let invalid = |d: &Path, reason: String| StepError::Invalid {
        what: format!("app {} directory {}", app.name, d.display()),
        reason,
    };
    let owner = app_owner(app).map_err(|e| invalid(&dir, e))?;
    let mut missing = Vec::new();
    let mut cur = dir.as_path();
    while !cur.is_dir() {
        if cur.exists() {
            return Err(invalid(cur, "exists but is not a directory".into()));
        }
        missing.push(cur.to_owned());
        cur = match cur.parent() {
            Some(p) => p,
            None => break,
        };
    }
    for d in missing.iter().rev() {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(d)
            .map_err(|e| invalid(d, format!("cannot create: {e}")))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(d, Some(uid), Some(gid))
                .map_err(|e| invalid(d, format!("chown to uid {uid}: {e}")))?;
        }
    }
    Ok(dir)
}

/// The app's uid/gid by name, `None` when no user is configured.
fn app_owner(app: &AppConfig) -> Result<Option<(u32, u32)>, String> {
    let Some(user) = &app.user else {
        return Ok(None);
    };
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| format!("look up user {user}: {e}"))?
        .ok_or_else(|| format!("no such user {user}"))?;
    let gid = match app.group() {
        Some(g) => nix::unistd::Group::from_name(g)
            .map_err(|e| format!("look up group {g}: {e}"))?
            .ok_or_else(|| format!("no such group {g}"))?
            .gid
            .as_raw(),
        None => u.gid.as_raw(),
    };
    Ok(Some((u.uid.as_raw(), gid)))
}
