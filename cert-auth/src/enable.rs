//! Make sure the cert auth method is enabled at its mount.

use serde::Serialize;
use vault_client::SysApi;

use crate::error::{Error, Result, vault};

/// What [`ensure_enabled`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnableAction {
    /// Already enabled.
    AlreadyEnabled,
    /// Enabled now.
    Enabled,
    /// Would enable (dry run).
    WouldEnable,
}

/// Enable `cert` at `auth/<mount>` (with `description`, e.g. which run enabled it) unless
/// it is already there; a mount of another type is an error (nothing is changed). Losing
/// a race to another client that enabled `cert` there meanwhile is `AlreadyEnabled`.
pub async fn ensure_enabled(
    sys: &dyn SysApi,
    mount: &str,
    description: &str,
    dry_run: bool,
) -> Result<EnableAction> {
    let mount = mount.trim_matches('/');
    let methods = sys
        .list_auth()
        .await
        .map_err(vault("list auth methods (sys/auth)"))?;
    match methods.get(&format!("{mount}/")) {
        Some(m) if m.mount_type == "cert" => Ok(EnableAction::AlreadyEnabled),
        Some(m) => Err(Error::WrongAuthType {
            mount: mount.to_owned(),
            found: m.mount_type.clone(),
        }),
        None if dry_run => Ok(EnableAction::WouldEnable),
        None => match sys.enable_auth(mount, "cert", description).await {
            Ok(()) => Ok(EnableAction::Enabled),
            Err(e) => {
                // Someone else may have enabled it between the list and the write.
                let now = sys.list_auth().await.ok();
                match now.as_ref().and_then(|m| m.get(&format!("{mount}/"))) {
                    Some(m) if m.mount_type == "cert" => Ok(EnableAction::AlreadyEnabled),
                    _ => Err(vault(format!("enable cert auth at auth/{mount}"))(e)),
                }
            }
        },
    }
}
