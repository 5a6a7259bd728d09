//! Undo actions: what the journal records before each write, and how each is carried out.
//!
//! Every action is idempotent (carrying it out twice, or after a crash half-way, ends in
//! the same state), because a resume may find it done, half done or not done.
//! [`unwind`] carries out a target's log in reverse order, except that what must see the
//! restored state runs last: the listener reload, the admin reconnect, unit restarts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::journal::{Event, Journal, JournalError, StepId, TargetState};
use crate::config::Config;
use crate::deps::Vault;

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
            UndoAction::RevokeIssued { mount, cn, after } => format!(
                "revoke every certificate for {cn} that {mount} issued since {}",
                crate::engine::utc(*after)
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

/// What undo needs from the outside world.
#[derive(Clone, Copy)]
pub struct UndoDeps<'a> {
    /// The config: the reloaders and files undo may act on come from here, never from the
    /// journal.
    pub cfg: &'a Config,
    /// Vault, as the admin.
    pub vault: Vault<'a>,
    /// Runs `systemctl`.
    pub runner: &'a dyn hooks::CommandRunner,
    /// Time limit of a restart.
    pub timeout: Duration,
    /// The PKI mounts' certificates as read so far (a `RevokeIssued` scans them).
    pub issued: &'a IssuedIndex,
}

/// One stored certificate: CN, notBefore, revocation time (0: not revoked).
type Issued = (String, i64, i64);

/// The certificates of PKI mounts, read once per invocation (serial -> CN, notBefore,
/// revocation time): every `RevokeIssued` of a rollback shares one scan.
#[derive(Debug, Default)]
pub struct IssuedIndex(
    tokio::sync::Mutex<std::collections::HashMap<(String, String), Option<Issued>>>,
);

impl IssuedIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Revokes the certificates of `mount` for `cn` issued since `after` (notBefore at or
/// after `after` - 60 s): the mount's serials are listed, each one not seen yet read once.
async fn revoke_issued(
    deps: UndoDeps<'_>,
    mount: &str,
    cn: &str,
    after: i64,
) -> Result<Vec<String>, String> {
    use futures_util::StreamExt as _;
    let pki = deps.vault.pki;
    let serials = pki
        .list_certs(mount)
        .await
        .map_err(|e| format!("list {mount}/certs: {e}"))?;
    let unknown: Vec<String> = {
        let seen = deps.issued.0.lock().await;
        serials
            .into_iter()
            .filter(|s| !seen.contains_key(&(mount.to_owned(), s.clone())))
            .collect()
    };
    let read: Vec<(String, Result<Option<Issued>, String>)> = futures_util::stream::iter(unknown)
        .map(|serial| async move {
            let r = pki
                .read_cert(mount, &serial)
                .await
                .map_err(|e| format!("read {mount}/cert/{serial}: {e}"))
                .map(|rec| {
                    rec.and_then(|rec| {
                        let info = pki_ops::CertInfo::from_pem(&rec.certificate).ok()?;
                        Some((
                            info.subject_cn.unwrap_or_default(),
                            info.not_before,
                            rec.revocation_time,
                        ))
                    })
                });
            (serial, r)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut index = deps.issued.0.lock().await;
    for (serial, r) in read {
        index.insert((mount.to_owned(), serial), r?);
    }
    let due: Vec<String> = index
        .iter()
        .filter(|((m, _), v)| {
            m == mount
                && v.as_ref()
                    .is_some_and(|(c, nb, revoked)| c == cn && *nb >= after - 60 && *revoked == 0)
        })
        .map(|((_, s), _)| s.clone())
        .collect();
    drop(index);
    for serial in &due {
        pki.revoke(mount, serial)
            .await
            .map_err(|e| format!("revoke {serial} ({cn}): {e}"))?;
        if let Some(Some(v)) = deps
            .issued
            .0
            .lock()
            .await
            .get_mut(&(mount.to_owned(), serial.clone()))
        {
            v.2 = 1;
        }
    }
    Ok(due)
}

/// Carry out one undo action.
pub async fn carry_out(deps: UndoDeps<'_>, action: &UndoAction) -> Result<(), String> {
    let v = deps.vault;
    match action {
        UndoAction::File { undo, owner } => {
            pki_ops::undo_file(undo, *owner).map_err(|e| e.to_string())
        }
        UndoAction::Dirs { root, dirs, owner } => {
            pki_ops::remove_created_dirs(root, dirs, *owner).map_err(|e| e.to_string())
        }
        UndoAction::Role {
            mount,
            name,
            previous,
        } => match previous {
            Some(p) => v.pki.write_role(mount, name, p.clone()).await,
            None => v.pki.delete_role(mount, name).await,
        }
        .map_err(|e| e.to_string()),
        UndoAction::Policy { name, previous } => match previous {
            Some(text) => v.sys.write_policy(name, text).await,
            None => v.sys.delete_policy(name).await,
        }
        .map_err(|e| e.to_string()),
        UndoAction::Mapping {
            mount,
            name,
            previous,
        } => match previous {
            // A security fix an app cannot veto: the policies `[leaf] remove_policies`
            // names (e.g. `debug-policy`, read on `*`) never come back through an undo,
            // even when the app made its own rotation fail.
            Some(role) => {
                let mut role = role.clone();
                role.token_policies
                    .retain(|p| !deps.cfg.leaf.remove_policies.contains(p));
                v.cert.write_cert_role(mount, name, &role).await
            }
            None => v.cert.delete_cert_role(mount, name).await,
        }
        .map_err(|e| e.to_string()),
        UndoAction::DisableAuth { mount, description } => {
            // Only the mount this run enabled (someone else may have won the race to
            // enable it), and only when no mapping is left there (targets run
            // concurrently); else it stays, harmless without mappings of ours.
            let ours = v
                .sys
                .list_auth()
                .await
                .map_err(|e| e.to_string())?
                .get(&format!("{}/", mount.trim_matches('/')))
                .is_some_and(|m| !description.is_empty() && m.description == *description);
            if !ours {
                return Ok(());
            }
            let left = v
                .cert
                .list_cert_roles(mount)
                .await
                .map_err(|e| e.to_string())?;
            if left.is_empty() {
                v.sys.disable_auth(mount).await.map_err(|e| e.to_string())
            } else {
                Ok(())
            }
        }
        UndoAction::DeleteKvSecret {
            mount,
            path,
            run_id,
        } => {
            let current =
                v.kv.kv2_read(mount, path)
                    .await
                    .map_err(|e| e.to_string())?;
            let ours = current.as_ref().is_some_and(|s| {
                s.data.get("rotate_run").and_then(|r| r.as_str()) == Some(run_id.as_str())
            });
            if ours {
                v.kv.kv2_delete_metadata(mount, path)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                // Absent, or not our seed (created concurrently): nothing of ours to undo.
                Ok(())
            }
        }
        UndoAction::Revoke { mount, serial, .. } => {
            v.pki.revoke(mount, serial).await.map_err(|e| e.to_string())
        }
        UndoAction::RevokeIssued { mount, cn, after } => {
            let revoked = revoke_issued(deps, mount, cn, *after).await?;
            if !revoked.is_empty() {
                tracing::info!(%mount, %cn, serials = %revoked.join(", "), "revoked what the run issued");
            }
            Ok(())
        }
        UndoAction::ReloadListener {
            reload,
            previous_serial,
            timeout_secs,
            ..
        } => {
            let r = configured_reloader(deps.cfg, "listener.reload", reload)?;
            let c = &deps.cfg.vault;
            let (Some(cert), Some(key), Some(ca)) = (&c.client_cert, &c.client_key, &c.ca_cert)
            else {
                return Err("[vault] client_cert, client_key and ca_cert are needed to prove the listener serves its previous certificate".into());
            };
            // Whatever the reload command says, what counts is what is served.
            let reloaded =
                hooks::reload_expecting(deps.runner, &r, deps.timeout, &deps.cfg.vault_process())
                    .await;
            let served = crate::served::wait_for_serial(
                v.gate,
                Some((cert, key)),
                ca,
                previous_serial,
                Duration::from_secs(*timeout_secs),
            )
            .await;
            match (served, reloaded) {
                (Ok(_), _) => Ok(()),
                (Err(e), Ok(_)) => Err(format!("after restoring the files: {e}")),
                (Err(e), Err(r)) => Err(format!(
                    "after restoring the files the reload failed ({r}) and {e}"
                )),
            }
        }
        UndoAction::ReconnectAdmin => v.identity.reconnect().map_err(|e| e.to_string()),
        UndoAction::Irreversible { .. } => Ok(()),
        UndoAction::Reload { reload, setting } => {
            let r = configured_reloader(deps.cfg, setting, reload)?;
            hooks::reload(deps.runner, &r, deps.timeout)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        UndoAction::RestartUnit { unit, user, .. }
            if deps
                .cfg
                .apps
                .iter()
                .any(|a| a.unit() == *unit && Some(a.user()) != user.as_deref()) =>
        {
            Err(format!(
                "the journal says {unit} runs as {}, the config says otherwise: restart it by hand",
                user.as_deref().unwrap_or("the caller")
            ))
        }
        UndoAction::RestartUnit {
            unit,
            user,
            was_active: false,
        } => {
            let state = hooks::unit_state(deps.runner, unit, user.as_deref(), deps.timeout)
                .await
                .map_err(|e| e.to_string())?;
            if state == "active" {
                hooks::stop_unit(deps.runner, unit, user.as_deref(), deps.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        UndoAction::StopUnit { unit, user } => {
            let state = hooks::unit_state(deps.runner, unit, user.as_deref(), deps.timeout)
                .await
                .map_err(|e| e.to_string())?;
            if matches!(state.as_str(), "active" | "reloading" | "activating") {
                hooks::stop_unit(deps.runner, unit, user.as_deref(), deps.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        UndoAction::RestartUnit { unit, user, .. } => {
            let r = hooks::Reloader::SystemdUser {
                unit: unit.clone(),
                user: user.clone(),
                xdg_runtime_dir: None,
            };
            hooks::reload(deps.runner, &r, deps.timeout)
                .await
                .map_err(|e| e.to_string())?;
            // Running right after the restart is not running: an agent whose post-hook
            // fails (with exit_on_retry_failure) dies seconds later.
            let settle = deps.cfg.duration(&deps.cfg.leaf.settle);
            tokio::time::sleep(settle).await;
            let state = hooks::unit_state(deps.runner, unit, user.as_deref(), deps.timeout)
                .await
                .map_err(|e| {
                    format!("restarted, but its state after {settle:?} is unknown: {e}")
                })?;
            if state == "active" {
                Ok(())
            } else {
                Err(format!(
                    "restarted on its previous config, but {settle:?} later it is {state}: see its log (journalctl --user -u {unit})"
                ))
            }
        }
    }
}

fn yes() -> bool {
    true
}

fn proxy_reload_setting() -> String {
    "proxy.reload".into()
}

/// The reloader the config sets at `setting`, provided it is still `recorded`: undo never
/// runs a command line read from the journal, only one the config names now.
fn configured_reloader(
    cfg: &Config,
    setting: &str,
    recorded: &str,
) -> Result<hooks::Reloader, String> {
    let current = cfg.reloaders().find(|(s, _)| s == setting).map(|(_, r)| r);
    let shown = |s: &str| s.escape_debug().to_string();
    match current {
        Some(Ok(r)) if cfg_string(cfg, setting) == Some(recorded) => Ok(r),
        Some(Err(e)) => Err(format!("[{setting}] does not parse: {e}")),
        Some(Ok(_)) => Err(format!(
            "the run recorded {setting} = \"{}\", but the config now says \"{}\": not running either; reload it by hand",
            shown(recorded),
            shown(cfg_string(cfg, setting).unwrap_or_default())
        )),
        None => Err(format!(
            "the config no longer sets {setting} (the run recorded \"{}\"): reload it by hand",
            shown(recorded)
        )),
    }
}

/// The text of the reloader setting `setting`.
fn cfg_string<'c>(cfg: &'c Config, setting: &str) -> Option<&'c str> {
    match setting {
        "listener.reload" => cfg.listener.as_ref().map(|l| l.reload.as_str()),
        "proxy.reload" => cfg.proxy.as_ref().map(|p| p.reload.as_str()),
        "restarts.vault" => cfg.restarts.as_ref().and_then(|r| r.vault.as_deref()),
        s => {
            let i: usize = s
                .strip_prefix("restarts.proxy[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            cfg.restarts.as_ref()?.proxy.get(i).map(String::as_str)
        }
    }
}

/// The outcome of unwinding one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UnwindOutcome {
    /// What was undone, in order.
    pub undone: Vec<String>,
    /// What could not be undone, with why: the operator must look at these.
    pub left: Vec<String>,
}

impl UnwindOutcome {
    /// Everything was undone.
    pub fn complete(&self) -> bool {
        self.left.is_empty()
    }
}

impl std::fmt::Display for UnwindOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.complete() {
            write!(f, "rolled back ({} undone)", self.undone.len())
        } else {
            write!(f, "ROLLBACK INCOMPLETE: left {}", self.left.join("; "))
        }
    }
}

/// Undo every not-yet-undone entry of `step`/`target`, newest first (unit restarts
/// last), journaling each one; the target ends `RolledBack` or `RollbackIncomplete`.
pub async fn unwind(
    journal: &Journal,
    deps: UndoDeps<'_>,
    step: StepId,
    target: &str,
) -> Result<UnwindOutcome, JournalError> {
    let record = journal.record();
    let Some(t) = record.target(step, target) else {
        return Ok(UnwindOutcome::default());
    };
    // From here until it ends (rolled back, or incomplete), a resume or another rollback
    // finishes this unwind; nothing re-gates a half-undone target.
    if t.state != TargetState::RollingBack {
        journal.set_state(step, target, TargetState::RollingBack, None)?;
    }
    let mut order: Vec<usize> = (0..t.undo.len()).rev().collect();
    // Files and Vault objects first, newest first; then what must see them restored.
    // Revocations after the reloads: a listener whose reload back fails must not be left
    // serving a certificate already revoked.
    order.sort_by_key(|&i| match t.undo[i].action {
        // A unit writing the files being put back is stopped first.
        UndoAction::StopUnit { .. } => 0,
        UndoAction::ReloadListener { .. } | UndoAction::Reload { .. } => 2,
        UndoAction::ReconnectAdmin => 3,
        UndoAction::Revoke { .. } | UndoAction::RevokeIssued { .. } => 4,
        UndoAction::RestartUnit { .. } => 5,
        _ => 1,
    });
    let mut out = UnwindOutcome::default();
    for i in order {
        let entry = &t.undo[i];
        if entry.done {
            continue;
        }
        let what = entry.action.describe();
        match carry_out(deps, &entry.action).await {
            Ok(()) => {
                // Undo actions are idempotent: when the journal cannot record this one
                // (a full disk), the rest of the unwind still runs, and a later one
                // simply does it again.
                if let Err(e) = journal.append(Event::UndoDone {
                    step,
                    target: target.to_owned(),
                    index: i,
                }) {
                    tracing::error!(%step, target, action = %what, error = %e, "undo done but not journaled");
                }
                out.undone.push(what);
                if matches!(entry.action, UndoAction::File { .. }) {
                    pki_ops::failpoint("unwind-after-file");
                }
            }
            Err(e) => {
                tracing::error!(%step, target, action = %what, error = %e, "undo failed");
                out.left.push(format!("{what}: {e}"));
            }
        }
    }
    let state = if out.complete() {
        TargetState::RolledBack
    } else {
        TargetState::RollbackIncomplete
    };
    let note = (!out.complete()).then(|| out.to_string());
    journal.set_state(step, target, state, note)?;
    Ok(out)
}
