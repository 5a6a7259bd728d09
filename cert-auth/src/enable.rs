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

/// Enable `cert` at `auth/<mount>` unless it is already there; a mount of another type is
/// an error (nothing is changed).
pub async fn ensure_enabled(sys: &dyn SysApi, mount: &str, dry_run: bool) -> Result<EnableAction> {
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
        None => {
            sys.enable_auth(mount, "cert")
                .await
                .map_err(vault(format!("enable cert auth at auth/{mount}")))?;
            Ok(EnableAction::Enabled)
        }
    }
}
