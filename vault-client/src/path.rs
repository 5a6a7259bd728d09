//! What may go into a Vault API path: names checked before they are joined into one, and
//! every path checked before it is sent, so a name can never climb (`..`) or reach
//! another endpoint (`/`, `?`, `#`, `%`).

use crate::error::{Error, Result};

/// Checks one name that becomes a segment of a Vault path: a mount, role, policy, cert
/// auth mapping or app name. 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`
/// (so never `.` or `..`). Returns why not.
///
/// ```
/// assert!(vault_client::check_name("nginx-ncprd1").is_ok());
/// assert!(vault_client::check_name("../certs/agent-x").is_err());
/// assert!(vault_client::check_name("..").is_err());
/// ```
pub fn check_name(value: &str) -> std::result::Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > 128 {
        return Err("is longer than 128 characters".into());
    }
    if value.starts_with(['.', '-']) {
        return Err(format!("{:?} starts with `{}`", value, &value[..1]));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{:?} contains {c:?}: use letters, digits, `_`, `-` or `.`",
            value
        ));
    }
    Ok(())
}

/// Checks a mount path (`pki-prod`, `kv/`, `team/kv`): slashes at its ends are ignored,
/// and each segment between them must pass [`check_name`].
///
/// ```
/// assert!(vault_client::check_mount("team/kv/").is_ok());
/// assert!(vault_client::check_mount("pki/../sys").is_err());
/// ```
pub fn check_mount(value: &str) -> std::result::Result<(), String> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    trimmed.split('/').try_for_each(check_name)
}

/// Checks a whole API path before it is sent: no empty, `.` or `..` segment, no query,
/// fragment, escape, backslash, whitespace or control character.
pub(crate) fn check_path(path: &str) -> Result<()> {
    let bad = |reason: String| Error::Config {
        setting: format!("API path {:?}", path),
        reason,
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("is empty".into()));
    }
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad(
                "has an empty, `.` or `..` segment: a name would reach another endpoint".into(),
            ));
        }
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(bad(format!("contains {c:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_climb_or_reach_other_endpoints() {
        for ok in ["pki-prod", "agent-mtls-ncprd1", "a.b", "x_1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "-rf", "a?b", "a b", "é", ".hidden",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["pki-prod/roles/x", "/sys/health", "kv/data/app/sub"] {
            check_path(ok).unwrap();
        }
        for bad in [
            "pki-prod/roles/../../auth/cert/certs/x",
            "pki/roles/./x",
            "pki//roles",
            "sys/health?standbyok=true",
            "a%2e%2e",
            "a\nb",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
