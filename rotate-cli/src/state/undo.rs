//! Undo actions: what the journal records before each write (carried out by
//! [`super::unwind`]).
//!
//! Every action is idempotent (carrying it out twice, or after a crash half-way, ends in
//! the same state), because a resume may find it done, half done or not done.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How to undo one write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UndoAction {
    /// Put a file back (its previous version was kept as a hard link), or remove it if
    /// this run created it.
    File {
        /// What the safe writer recorded.
        undo: pki_ops::FileUndo,
        /// Owner of the tree it lives in.
        owner: Option<pki_ops::Owner>,
    },
    /// Remove directories this run created (only while empty), innermost first.
    Dirs {
        /// The tree root (an app's home).
        root: PathBuf,
        /// Relative paths, outermost first.
        dirs: Vec<PathBuf>,
        /// Owner of the tree.
        owner: Option<pki_ops::Owner>,
    },
    /// Put a PKI role back, or delete it if this run created it.
    Role {
        /// PKI mount.
        mount: String,
        /// Role name.
        name: String,
        /// The role as it was (`None`: it did not exist).
        previous: Option<Map<String, Value>>,
    },
    /// Put an ACL policy back, or delete it if this run created it.
    Policy {
        /// Policy name.
        name: String,
        /// Its text before (`None`: it did not exist).
        previous: Option<String>,
    },
    /// Put a cert auth mapping back, or delete it if this run created it.
    Mapping {
        /// Cert auth mount.
        mount: String,
        /// Mapping name.
        name: String,
        /// The mapping as it was, every field (`None`: it did not exist).
        previous: Option<vault_client::CertRole>,
    },
    /// Disable an auth method this run enabled.
    DisableAuth {
        /// Its mount path.
        mount: String,
        /// The description this run enabled it with: a mount enabled by someone else
        /// (e.g. a concurrent client that won the race) never matches, and is left alone.
        #[serde(default)]
        description: String,
    },
    /// Delete a KV v2 secret (all versions and metadata) this run created: only if its
    /// data still carries this run's marker (`rotate_run`), so a secret someone else
    /// created meanwhile is never deleted.
    DeleteKvSecret {
        /// KV mount.
        mount: String,
        /// Secret path.
        path: String,
        /// The run whose seed it must be.
        run_id: String,
    },
    /// Revoke a certificate this run issued.
    Revoke {
        /// PKI mount.
        mount: String,
        /// Serial, `aa:bb:..` hex.
        serial: String,
        /// Its CN (for the report).
        cn: String,
    },
    /// Revoke every certificate of `mount` for `cn` issued from `after` on: recorded
    /// *before* Vault is asked to issue, so a certificate whose precise `Revoke` never
    /// reached the journal (a kill right after issuance) is still found, by scanning the
    /// mount's certificates. Marked done once the precise `Revoke` is recorded; left
    /// open for what an agent issues (step 4), whose serials rotate never sees.
    RevokeIssued {
        /// PKI mount.
        mount: String,
        /// The common name asked for.
        cn: String,
        /// Unix seconds when it was recorded (Vault backdates notBefore by 30 s).
        after: i64,
        /// Unix seconds after which nothing issued is this run's (the issuance's own
        /// time limit; for an agent, its render wait): a later renewal by the agent, or a
        /// certificate someone else issued for the CN later, is left alone.
        #[serde(default = "forever")]
        until: i64,
    },
    /// Make the listener load its restored files and prove it serves the previous
    /// certificate again (runs after the files are back). Undo runs the config's
    /// `[listener] reload` (only if it is still the one recorded here) and proves it with
    /// the config's admin files: nothing read from the journal is executed.
    ReloadListener {
        /// The reloader as configured when it was recorded (`signal:<pid file>:HUP`, ...).
        reload: String,
        /// The serial served before the run, `aa:bb` hex.
        previous_serial: String,
        /// CA bundle the run verified the listener with (for the record).
        ca: PathBuf,
        /// Admin client certificate and key the run presented (for the record).
        cert: PathBuf,
        /// See `cert`.
        key: PathBuf,
        /// How long to wait for the previous serial, seconds.
        timeout_secs: u64,
        /// The cluster node whose listener it is (`None`: the single server of
        /// `[listener]`, reloaded by `listener.reload`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// That node's own address, where the previous serial must be served again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
    },
    /// Reload a service again, so it runs on its restored files (after they are back).
    /// Undo runs the reloader the config sets at `setting`, only if it is still the one
    /// recorded here.
    Reload {
        /// The reloader as configured when it was recorded (`podman:proxyprod`, ...).
        reload: String,
        /// The setting it came from, e.g. `proxy.reload` (the only one journals written
        /// before this field existed recorded).
        #[serde(default = "proxy_reload_setting")]
        setting: String,
    },
    /// A write that cannot be undone and leaves nothing to restore (a restart): recorded
    /// so the report says it happened.
    Irreversible {
        /// What was done.
        what: String,
    },
    /// Switch the admin client back to the identity files on disk (after they were
    /// restored): the rest of the unwind runs as the previous identity.
    ReconnectAdmin,
    /// Stop a user unit before its files are put back (so it does not write them
    /// meanwhile); [`UndoAction::RestartUnit`] then starts it again if it ran before.
    StopUnit {
        /// The unit.
        unit: String,
        /// Whose user manager.
        user: Option<String>,
    },
    /// Restart a user unit so it runs on its restored config.
    RestartUnit {
        /// The unit.
        unit: String,
        /// Whose user manager.
        user: Option<String>,
        /// Whether it ran before the run touched it: undo restarts it on its previous
        /// config if so, and otherwise stops it again (when it is running).
        #[serde(default = "yes")]
        was_active: bool,
    },
}

impl UndoAction {
    /// One line saying what undoing does.
    pub fn describe(&self) -> String {
        match self {
            UndoAction::File { undo, .. } => {
                let p = undo.root.join(&undo.rel);
                match &undo.prev {
                    Some(_) => format!("restore file {}", p.display()),
                    None => format!("remove file {}", p.display()),
                }
            }
            UndoAction::Dirs { root, dirs, .. } => {
                let d: Vec<String> = dirs
                    .iter()
                    .map(|d| root.join(d).display().to_string())
                    .collect();
                format!("remove created directories {}", d.join(", "))
            }
            UndoAction::Role {
                mount,
                name,
                previous,
            } => match previous {
                Some(_) => format!("restore role {mount}/roles/{name}"),
                None => format!("delete role {mount}/roles/{name}"),
            },
            UndoAction::Policy { name, previous } => match previous {
                Some(_) => format!("restore policy {name}"),
                None => format!("delete policy {name}"),
            },
            UndoAction::Mapping {
                mount,
                name,
                previous,
            } => match previous {
                Some(_) => format!(
                    "restore mapping auth/{mount}/certs/{name} (never with a [leaf] remove_policies policy)"
                ),
                None => format!("delete mapping auth/{mount}/certs/{name}"),
            },
            UndoAction::DisableAuth { mount, .. } => {
                format!(
                    "disable auth method {mount}/ (if this run enabled it and no mapping is left)"
                )
            }
            UndoAction::DeleteKvSecret { mount, path, .. } => {
                format!("delete secret {mount}/{path} (created by this run)")
            }
            UndoAction::Revoke { mount, serial, cn } => {
                format!("revoke certificate {serial} ({cn}) on {mount}")
            }
            UndoAction::RevokeIssued {
                mount,
                cn,
                after,
                until,
            } => format!(
                "revoke every certificate for {cn} that {mount} issued from {} to {}",
                crate::text::utc(*after),
                crate::text::utc(*until)
            ),
            UndoAction::ReloadListener {
                reload,
                previous_serial,
                ..
            } => format!(
                "reload the listener ({reload}) and prove it serves serial {previous_serial} again"
            ),
            UndoAction::ReconnectAdmin => "use the restored admin identity files".into(),
            UndoAction::Irreversible { what } => {
                format!("{what}: done, cannot be undone (nothing to restore)")
            }
            UndoAction::Reload { reload, .. } => {
                format!("reload ({reload}) on the restored files")
            }
            UndoAction::StopUnit { unit, .. } => {
                format!("stop {unit} while its files are put back")
            }
            UndoAction::RestartUnit {
                unit,
                was_active: true,
                ..
            } => format!("restart {unit} on its previous config and prove it still runs"),
            UndoAction::RestartUnit { unit, .. } => {
                format!("stop {unit} again (it was not running before)")
            }
        }
    }
}

fn yes() -> bool {
    true
}

fn forever() -> i64 {
    i64::MAX
}

fn proxy_reload_setting() -> String {
    "proxy.reload".into()
}
