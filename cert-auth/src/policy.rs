//! ACL policies the mappings attach: converge their text, or only make sure they exist.

use serde::Serialize;
use vault_client::SysApi;

use crate::error::{Result, vault};

/// How to treat an existing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Write the desired text whenever it differs (we own the policy).
    Converge,
    /// Create it if missing; never overwrite (the operator owns it, e.g. a marker policy).
    CreateIfMissing,
}

/// What happened to one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyOutcome {
    /// Policy name.
    pub name: String,
    /// The action.
    pub action: PolicyAction,
}

/// Policy actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Text already as desired (or exists, in `CreateIfMissing` mode).
    Unchanged,
    /// Created.
    Created,
    /// Replaced with the desired text.
    Updated,
    /// Would create (dry run).
    WouldCreate,
    /// Would update (dry run).
    WouldUpdate,
}

fn normalize(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Make policy `name` hold `text` (per `mode`), writing only when needed.
pub async fn ensure_policy(
    sys: &dyn SysApi,
    name: &str,
    text: &str,
    mode: PolicyMode,
    dry_run: bool,
) -> Result<PolicyOutcome> {
    let current = sys
        .read_policy(name)
        .await
        .map_err(vault(format!("read policy sys/policies/acl/{name}")))?;
    let action = match (&current, mode) {
        (Some(_), PolicyMode::CreateIfMissing) => PolicyAction::Unchanged,
        (Some(cur), PolicyMode::Converge) if normalize(cur) == normalize(text) => {
            PolicyAction::Unchanged
        }
        (Some(_), PolicyMode::Converge) if dry_run => PolicyAction::WouldUpdate,
        (None, _) if dry_run => PolicyAction::WouldCreate,
        (existing, _) => {
            sys.write_policy(name, text)
                .await
                .map_err(vault(format!("write policy sys/policies/acl/{name}")))?;
            if existing.is_some() {
                PolicyAction::Updated
            } else {
                PolicyAction::Created
            }
        }
    };
    Ok(PolicyOutcome {
        name: name.to_owned(),
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_client::MockSysApi;

    #[tokio::test]
    async fn converge_writes_only_when_text_differs() {
        let mut sys = MockSysApi::new();
        sys.expect_read_policy().returning(|_| {
            Ok(Some(
                "path \"a\" {\n  capabilities = [\"read\"]\n}\n\n".into(),
            ))
        });
        sys.expect_write_policy().never();
        let o = ensure_policy(
            &sys,
            "p",
            "path \"a\" {\n  capabilities = [\"read\"]\n}",
            PolicyMode::Converge,
            false,
        )
        .await
        .unwrap();
        assert_eq!(o.action, PolicyAction::Unchanged);

        let mut sys = MockSysApi::new();
        sys.expect_read_policy()
            .returning(|_| Ok(Some("old".into())));
        sys.expect_write_policy()
            .withf(|n, t| n == "p" && t == "new")
            .times(1)
            .returning(|_, _| Ok(()));
        let o = ensure_policy(&sys, "p", "new", PolicyMode::Converge, false)
            .await
            .unwrap();
        assert_eq!(o.action, PolicyAction::Updated);
    }

    #[tokio::test]
    async fn create_if_missing_never_overwrites_and_dry_run_never_writes() {
        let mut sys = MockSysApi::new();
        sys.expect_read_policy()
            .returning(|_| Ok(Some("operator's".into())));
        sys.expect_write_policy().never();
        let o = ensure_policy(&sys, "m", "ours", PolicyMode::CreateIfMissing, false)
            .await
            .unwrap();
        assert_eq!(o.action, PolicyAction::Unchanged);

        let mut sys = MockSysApi::new();
        sys.expect_read_policy().returning(|_| Ok(None));
        sys.expect_write_policy().never();
        let o = ensure_policy(&sys, "m", "ours", PolicyMode::Converge, true)
            .await
            .unwrap();
        assert_eq!(o.action, PolicyAction::WouldCreate);
    }
}
