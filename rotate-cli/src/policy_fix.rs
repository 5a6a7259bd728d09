//! A security fix an app cannot veto: the policies `[leaf] remove_policies` names (the
//! seed's `debug-policy`, read on `*`) are stripped from the mapping of every app whose own
//! rotation did not converge it, whatever happened to that rotation; no undo puts one back.

use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::state::journal::{Journal, StepId, TargetState};

/// The apps this run's step 3 or 4 committed (their mappings then hold exactly the agent
/// policies): one look at the journal, however many apps.
pub(crate) fn converged_mappings(journal: &Journal) -> std::collections::HashSet<String> {
    journal
        .record()
        .targets
        .into_iter()
        .filter(|t| {
            matches!(t.step, StepId::Agents | StepId::Leaf) && t.state == TargetState::Committed
        })
        .map(|t| t.target)
        .collect()
}

/// For each of `apps` whose mapping still carries a policy `[leaf] remove_policies`
/// names: write it back without them, whatever happened to the app's own rotation (an
/// app must not keep `debug-policy` by making its rotation fail). Returns what was
/// removed, and what could not be (for the operator's attention).
pub(crate) async fn strip_removed_policies(
    cfg: &Config,
    apps: &[&AppConfig],
    deps: Deps<'_>,
) -> (Vec<String>, Vec<String>) {
    use futures_util::StreamExt as _;
    let remove = &cfg.leaf.remove_policies;
    if remove.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mount = cfg.agents.cert_auth_mount.as_str();
    let cert = deps.vault.cert;
    let results: Vec<Result<Option<String>, String>> =
        futures_util::stream::iter(apps)
            .map(|app| async move {
                let name = crate::topology::Names::new(cfg, app).mapping;
                let path = format!("auth/{mount}/certs/{name}");
                let current = cert.read_cert_role(mount, &name).await.map_err(|e| {
                    format!(
                        "{path} could not be read to remove {}: {e}",
                        remove.join(", ")
                    )
                })?;
                let Some(mut role) = current else {
                    return Ok(None);
                };
                let found: Vec<String> = role
                    .token_policies
                    .iter()
                    .filter(|p| remove.contains(p))
                    .cloned()
                    .collect();
                if found.is_empty() {
                    return Ok(None);
                }
                role.token_policies.retain(|p| !remove.contains(p));
                cert.write_cert_role(mount, &name, &role).await.map_err(|e| {
                format!(
                    "{path} STILL CARRIES {} ([leaf] remove_policies): removing failed: {e}",
                    found.join(", ")
                )
            })?;
                Ok(Some(format!(
                    "removed {} from {path} (app {}; a security fix, never undone)",
                    found.join(", "),
                    app.name
                )))
            })
            .buffered(cfg.run.concurrency.max(1))
            .collect()
            .await;
    let mut fixed = Vec::new();
    let mut left = Vec::new();
    for r in results {
        match r {
            Ok(Some(f)) => fixed.push(f),
            Ok(None) => {}
            Err(e) => left.push(e),
        }
    }
    (fixed, left)
}
