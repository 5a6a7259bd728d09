//! Carrying undo actions out: [`carry_out`] one, [`unwind`] a target's whole log in
//! reverse order (what must see the restored state last: reloads, the admin reconnect,
//! revocations, unit restarts). The reloaders and files it acts on come from the config,
//! never from the journal.

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::deps::Vault;
use crate::state::journal::{Event, Journal, JournalError, StepId, TargetState};
use crate::state::undo::UndoAction;

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

/// Revokes the certificates of `mount` for `cn` issued from `after` to `until` (notBefore
/// in [`after` - 60 s, `until`]): the mount's serials are listed, each one not seen yet
/// read once.
async fn revoke_issued(
    deps: UndoDeps<'_>,
    mount: &str,
    cn: &str,
    after: i64,
    until: i64,
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
                && v.as_ref().is_some_and(|(c, nb, revoked)| {
                    c == cn && *nb >= after - 60 && *nb <= until && *revoked == 0
                })
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
        } => restore_mapping(deps, mount, name, previous.as_ref()).await,
        UndoAction::DisableAuth { mount, description } => {
            disable_auth_if_ours(deps, mount, description).await
        }
        UndoAction::DeleteKvSecret {
            mount,
            path,
            run_id,
        } => delete_kv_secret_if_ours(deps, mount, path, run_id).await,
        UndoAction::Revoke { mount, serial, .. } => {
            v.pki.revoke(mount, serial).await.map_err(|e| e.to_string())
        }
        UndoAction::RevokeIssued {
            mount,
            cn,
            after,
            until,
        } => revoke_issued_logged(deps, mount, cn, *after, *until).await,
        UndoAction::ReloadListener {
            reload,
            previous_serial,
            timeout_secs,
            node,
            addr,
            ..
        } => {
            let at = node.as_deref().zip(addr.as_deref());
            reload_listener_back(deps, reload, previous_serial, *timeout_secs, at).await
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
        UndoAction::StopUnit { unit, user } => stop_unit_back(deps, unit, user.as_deref()).await,
        UndoAction::RestartUnit {
            unit,
            user,
            was_active,
        } => restart_unit_back(deps, unit, user.as_deref(), *was_active).await,
    }
}

/// Puts a cert auth mapping back as it was (minus the policies `[leaf] remove_policies`
/// names), or deletes it when the run created it.
async fn restore_mapping(
    deps: UndoDeps<'_>,
    mount: &str,
    name: &str,
    previous: Option<&vault_client::CertRole>,
) -> Result<(), String> {
    let v = deps.vault;
    match previous {
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
    .map_err(|e| e.to_string())
}

/// Disables the auth mount at `mount` when this run enabled it (its description is
/// `description`) and no mapping is left there.
async fn disable_auth_if_ours(
    deps: UndoDeps<'_>,
    mount: &str,
    description: &str,
) -> Result<(), String> {
    let v = deps.vault;
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

/// Deletes the KV v2 secret at `mount`/`path` (all versions) when it still carries the
/// marker of run `run_id`.
async fn delete_kv_secret_if_ours(
    deps: UndoDeps<'_>,
    mount: &str,
    path: &str,
    run_id: &str,
) -> Result<(), String> {
    let v = deps.vault;
    let current =
        v.kv.kv2_read(mount, path)
            .await
            .map_err(|e| e.to_string())?;
    let ours = current
        .as_ref()
        .is_some_and(|s| s.data.get("rotate_run").and_then(|r| r.as_str()) == Some(run_id));
    if ours {
        v.kv.kv2_delete_metadata(mount, path)
            .await
            .map_err(|e| e.to_string())
    } else {
        // Absent, or not our seed (created concurrently): nothing of ours to undo.
        Ok(())
    }
}

/// [`revoke_issued`], logging the serials it revoked.
async fn revoke_issued_logged(
    deps: UndoDeps<'_>,
    mount: &str,
    cn: &str,
    after: i64,
    until: i64,
) -> Result<(), String> {
    let revoked = revoke_issued(deps, mount, cn, after, until).await?;
    if !revoked.is_empty() {
        tracing::info!(%mount, %cn, serials = %revoked.join(", "), "revoked what the run issued");
    }
    Ok(())
}

/// Runs the configured `[listener] reload` (still the `reload` recorded) and waits until
/// the listener serves `previous_serial` again.
async fn reload_listener_back(
    deps: UndoDeps<'_>,
    reload: &str,
    previous_serial: &str,
    timeout_secs: u64,
    node: Option<(&str, &str)>,
) -> Result<(), String> {
    let setting = match node {
        Some((name, _)) => format!("listener.nodes[{name}].reload"),
        None => "listener.reload".to_owned(),
    };
    let r = configured_reloader(deps.cfg, &setting, reload)?;
    let server = deps
        .cfg
        .listener
        .iter()
        .flat_map(|l| l.servers())
        .find(|s| s.reload_setting == setting);
    let expect = match &server {
        Some(s) => deps.cfg.server_process(s),
        None => deps.cfg.vault_process(),
    };
    let gate = crate::deps::NodeGate::new(deps.vault.gate, node.map(|(_, addr)| addr))
        .map_err(|e| e.to_string())?;
    let c = &deps.cfg.vault;
    let (Some(cert), Some(key), Some(ca)) = (&c.client_cert, &c.client_key, &c.ca_cert) else {
        return Err("[vault] client_cert, client_key and ca_cert are needed to prove the listener serves its previous certificate".into());
    };
    // Whatever the reload command says, what counts is what is served.
    let reloaded = hooks::reload_expecting(deps.runner, &r, deps.timeout, &expect).await;
    let served = crate::served::wait_for_serial(
        gate.get(),
        Some((cert, key)),
        ca,
        previous_serial,
        Duration::from_secs(timeout_secs),
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

/// Stops the user unit `unit` while it runs (active, reloading or activating).
async fn stop_unit_back(deps: UndoDeps<'_>, unit: &str, user: Option<&str>) -> Result<(), String> {
    same_user(deps, unit, user)?;
    stop_if_running(deps, unit, user).await
}

/// Stops user unit `unit` when it runs (or is starting, or reloading).
async fn stop_if_running(deps: UndoDeps<'_>, unit: &str, user: Option<&str>) -> Result<(), String> {
    let state = hooks::unit_state(deps.runner, unit, user, deps.timeout)
        .await
        .map_err(|e| e.to_string())?;
    if matches!(state.as_str(), "active" | "reloading" | "activating") {
        hooks::stop_unit(deps.runner, unit, user, deps.timeout)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Refuses to act on `unit` as the journal's `user` when the config now says it runs as
/// another: undo never acts on a unit as a user the config does not name for it.
fn same_user(deps: UndoDeps<'_>, unit: &str, user: Option<&str>) -> Result<(), String> {
    if deps
        .cfg
        .apps
        .iter()
        .any(|a| a.unit() == unit && Some(a.user()) != user)
    {
        return Err(format!(
            "the journal says {unit} runs as {}, the config says otherwise: put it back by hand",
            user.unwrap_or("the caller")
        ));
    }
    Ok(())
}

/// Puts the user unit `unit` back as it was: restarted on its previous config if it ran
/// before (`was_active`), stopped again if not; refused when the config now says it runs
/// as another user than the journal does.
async fn restart_unit_back(
    deps: UndoDeps<'_>,
    unit: &str,
    user: Option<&str>,
    was_active: bool,
) -> Result<(), String> {
    same_user(deps, unit, user)?;
    if !was_active {
        return stop_if_running(deps, unit, user).await;
    }
    let r = hooks::Reloader::SystemdUser {
        unit: unit.to_owned(),
        user: user.map(str::to_owned),
        xdg_runtime_dir: None,
    };
    hooks::reload(deps.runner, &r, deps.timeout)
        .await
        .map_err(|e| e.to_string())?;
    // Running right after the restart is not running: an agent whose post-hook
    // fails (with exit_on_retry_failure) dies seconds later.
    let settle = deps.cfg.duration(&deps.cfg.leaf.settle);
    tokio::time::sleep(settle).await;
    let state = hooks::unit_state(deps.runner, unit, user, deps.timeout)
        .await
        .map_err(|e| format!("restarted, but its state after {settle:?} is unknown: {e}"))?;
    if state == "active" {
        Ok(())
    } else {
        Err(format!(
            "restarted on its previous config, but {settle:?} later it is {state}: see its log (journalctl --user -u {unit})"
        ))
    }
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
        "listener.reload" => cfg.listener.as_ref()?.reload.as_deref(),
        "proxy.reload" => cfg.proxy.as_ref().map(|p| p.reload.as_str()),
        "restarts.vault" => cfg.restarts.as_ref().and_then(|r| r.vault.as_deref()),
        s if s.starts_with("listener.nodes[") => {
            let name = s
                .strip_prefix("listener.nodes[")?
                .strip_suffix("].reload")?;
            let l = cfg.listener.as_ref()?;
            l.nodes
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.reload.as_str())
        }
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
    // A revocation in this pass of a target whose unit was already restarted (an earlier,
    // interrupted pass) may hit what the restarted unit issued: restart it once more.
    let mut revoked = false;
    for i in order {
        let entry = &t.undo[i];
        let again = revoked && matches!(entry.action, UndoAction::RestartUnit { .. });
        if entry.done && !again {
            continue;
        }
        if matches!(
            entry.action,
            UndoAction::Revoke { .. } | UndoAction::RevokeIssued { .. }
        ) {
            revoked = true;
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
