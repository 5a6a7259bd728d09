//! The host as rotate reads it: users and groups (NSS), and files outside the trees the
//! steps write, each read without following symlinks as the tree it lies in allows.

use std::path::Path;

use crate::config::{AppConfig, Config};
use crate::error::StepError;

/// An app's agent identity (`vault/mtls/agent.crt`, `agent.key`, `vault/ca/ca.pem`), read
/// through its home without following symlinks (the home is the app's, and root must
/// not read what a symlink planted there points at).
pub(crate) fn agent_identity(app: &AppConfig) -> Result<crate::deps::TlsIdentity, StepError> {
    use crate::topology::rel;
    let tree = pki_ops::Tree::open(&app.home, Some(owner_of(app)?))?;
    let read = |r: std::path::PathBuf| -> Result<_, StepError> {
        let path = app.home.join(&r);
        match tree.read(&r)? {
            Some(c) => Ok((path, c)),
            None => Err(StepError::Invalid {
                what: path.display().to_string(),
                reason: "missing: step 3 writes the agent's identity".into(),
            }),
        }
    };
    Ok(crate::deps::TlsIdentity {
        cert: read(rel::agent_cert())?,
        key: read(rel::agent_key())?,
        ca: read(rel::ca_file())?,
    })
}

/// Split an absolute path into its directory, opened without following symlinks (every
/// level owned by root or `owner`), and its file name.
fn dir_and_name(
    p: &Path,
    owner: Option<pki_ops::Owner>,
) -> Result<(pki_ops::Tree, &Path), StepError> {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => Ok((pki_ops::Tree::open(d, owner)?, Path::new(n))),
        _ => Err(StepError::Invalid {
            what: p.display().to_string(),
            reason: "not a file path".into(),
        }),
    }
}

/// A file outside the apps' homes (a client bundle; with `owner`, a file of the Vault
/// server's such as its client CA file or pid file), read without following a symlink or
/// opening a FIFO; `None` when absent.
pub(crate) fn read_root_file(
    p: &Path,
    owner: Option<pki_ops::Owner>,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, StepError> {
    let (tree, name) = dir_and_name(p, owner)?;
    Ok(tree.read(name)?)
}

/// A file the config names, read without following symlinks as the tree it lies in
/// allows: inside an app's or the proxy's home, as that user's tree (their bundle, say);
/// anywhere else, as root's ([`read_root_file`]).
pub(crate) fn read_managed_file(
    cfg: &Config,
    p: &Path,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, StepError> {
    let tenant = cfg
        .apps
        .iter()
        .map(|a| (a.home.as_path(), owner_of(a)))
        .chain(cfg.proxy.iter().filter_map(|px| {
            let home = px.home.as_deref()?;
            Some((
                home,
                owner_of_user(&format!("[proxy] {}", px.name), px.user(), None),
            ))
        }))
        .find(|(home, _)| p.starts_with(home));
    match tenant {
        Some((home, owner)) => {
            let rel = p.strip_prefix(home).unwrap_or(p);
            Ok(pki_ops::Tree::open(home, Some(owner?))?.read(rel)?)
        }
        None => read_root_file(p, None),
    }
}

/// [`read_root_file`]'s metadata (mode, owner, size, mtime); `None` when absent.
pub(crate) fn stat_root_file(
    p: &Path,
    owner: Option<pki_ops::Owner>,
) -> Result<Option<pki_ops::FileMeta>, StepError> {
    let (tree, name) = dir_and_name(p, owner)?;
    Ok(tree.stat(name)?)
}

/// The Vault server's user and group (`[listener] owner`/`group`), whose directories hold
/// its certificate, client CA file and pid file; `None` without `[listener]`.
pub(crate) fn vault_owner(cfg: &Config) -> Result<Option<pki_ops::Owner>, StepError> {
    cfg.listener
        .as_ref()
        .map(|l| owner_of_user("[listener] owner", &l.owner, l.group.as_deref()))
        .transpose()
}

/// The admin's files (`[vault] client_cert`, `client_key`, `ca_cert`): how every gate
/// reaches the listener. `why` says which step needs them.
pub(crate) fn admin_files<'c>(
    cfg: &'c Config,
    why: &str,
) -> Result<(&'c Path, &'c Path, &'c Path), StepError> {
    let v = &cfg.vault;
    match (&v.client_cert, &v.client_key, &v.ca_cert) {
        (Some(c), Some(k), Some(ca)) => Ok((c, k, ca)),
        _ => Err(StepError::Invalid {
            what: "[vault] client_cert, client_key, ca_cert".into(),
            reason: format!("{why} through the admin's identity: set all three"),
        }),
    }
}

/// The app user's uid and gid (NSS, through `nix`: the one lookup of the workspace).
pub(crate) fn owner_of(app: &AppConfig) -> Result<pki_ops::Owner, StepError> {
    owner_of_user(&format!("app {}", app.name), app.user(), app.group())
}

/// `user`'s uid and `group`'s gid (default: the user's primary group), for `what`.
pub(crate) fn owner_of_user(
    what: &str,
    user: &str,
    group: Option<&str>,
) -> Result<pki_ops::Owner, StepError> {
    let invalid = |reason: String| StepError::Invalid {
        what: format!("{what} user {user:?}"),
        reason,
    };
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| invalid(format!("look up: {e}")))?
        .ok_or_else(|| invalid("no such user (create it, or set the user in the config)".into()))?;
    let gid = match group {
        Some(g) => nix::unistd::Group::from_name(g)
            .map_err(|e| invalid(format!("look up group {g}: {e}")))?
            .ok_or_else(|| invalid(format!("no such group {g}")))?
            .gid
            .as_raw(),
        None => u.gid.as_raw(),
    };
    Ok(pki_ops::Owner {
        uid: u.uid.as_raw(),
        gid,
    })
}
