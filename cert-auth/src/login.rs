//! The login gate: a fresh client presenting the new certificate logs in and gets a token
//! with exactly the expected policies.

use std::collections::BTreeSet;

use serde::Serialize;
use vault_client::{CertAuthApi, TokenApi};

use crate::error::{Error, Result, vault};

/// What the gate proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginProof {
    /// The mapping that matched.
    pub mapping: String,
    /// The token's policies (from the mapping; `default` included if Vault added it).
    pub token_policies: Vec<String>,
    /// Policies from an identity entity or group (must be none outside the expected set).
    pub identity_policies: Vec<String>,
    /// The certificate's CN as Vault saw it.
    pub common_name: String,
    /// The certificate's serial as Vault saw it (decimal).
    pub serial_decimal: String,
}

/// Log in via `auth/<mount>/login` against mapping `name` with `client` (built with the new
/// certificate and key, and the CA bundle the app will use) and check the token carries
/// exactly `expected` policies (plus `default`, which Vault adds unless told otherwise) and
/// that Vault saw the certificate `expected_serial_decimal`. The gate's token is revoked by
/// accessor through `revoker` (the admin) when given.
pub async fn login_gate(
    client: &dyn CertAuthApi,
    revoker: Option<&dyn TokenApi>,
    mount: &str,
    name: &str,
    expected: &[String],
    expected_serial_decimal: Option<&str>,
) -> Result<LoginProof> {
    let mount = mount.trim_matches('/');
    let auth = client.cert_login(mount, name).await.map_err(vault(format!(
        "cert login via auth/{mount}/login (mapping {name})"
    )))?;
    // Best effort: the gate's token has served its purpose.
    if let Some(admin) = revoker
        && let Err(e) = admin.revoke_accessor(&auth.accessor).await
    {
        tracing::warn!(error = %e, "could not revoke the login gate's token");
    }
    let meta = auth.metadata.clone().unwrap_or_default();
    let matched = meta.get("cert_name").cloned().unwrap_or_default();
    if !matched.is_empty() && matched != name {
        return Err(Error::WrongMapping {
            expected: name.to_owned(),
            found: matched,
        });
    }
    let want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    // The token's whole effective set: what the mapping attached, plus what an identity
    // entity or group adds (the mapping does not control those, so they are refused).
    let identity: Vec<String> = auth
        .identity_policies
        .iter()
        .filter(|p| !want.contains(p.as_str()) && *p != "default")
        .cloned()
        .collect();
    if !identity.is_empty() {
        return Err(Error::IdentityPolicies {
            mount: mount.to_owned(),
            mapping: name.to_owned(),
            identity,
        });
    }
    let got: BTreeSet<&str> = auth
        .token_policies
        .iter()
        .chain(&auth.policies)
        .chain(&auth.identity_policies)
        .map(String::as_str)
        // `default` is added by Vault unless the mapping sets token_no_default_policy.
        .filter(|p| *p != "default" || want.contains("default"))
        .collect();
    if want != got {
        return Err(Error::PolicyMismatch {
            mount: mount.to_owned(),
            mapping: name.to_owned(),
            expected: expected.to_vec(),
            found: auth.token_policies.clone(),
            missing: want.difference(&got).map(|s| s.to_string()).collect(),
            stray: got.difference(&want).map(|s| s.to_string()).collect(),
        });
    }
    let serial = meta.get("serial_number").cloned().unwrap_or_default();
    if let Some(exp) = expected_serial_decimal
        && serial != exp
    {
        return Err(Error::WrongCertificate {
            mount: mount.to_owned(),
            mapping: name.to_owned(),
            expected: exp.to_owned(),
            found: serial,
        });
    }
    Ok(LoginProof {
        mapping: name.to_owned(),
        token_policies: auth.token_policies.clone(),
        identity_policies: auth.identity_policies.clone(),
        common_name: meta.get("common_name").cloned().unwrap_or_default(),
        serial_decimal: serial,
    })
}

/// Check that `token` (the client's token) has each capability in `need` on its path
/// (`sys/capabilities-self`); the error names every missing `capability on path`.
/// `root` satisfies every capability.
pub async fn require_capabilities(
    token: &dyn TokenApi,
    need: &[(String, Vec<String>)],
) -> Result<()> {
    let paths: Vec<String> = need.iter().map(|(p, _)| p.clone()).collect();
    let caps = token
        .capabilities_self(&paths)
        .await
        .map_err(vault("sys/capabilities-self".to_owned()))?;
    let mut missing = Vec::new();
    for (path, wanted) in need {
        let have = caps.get(path).cloned().unwrap_or_default();
        for w in wanted {
            let ok = have.iter().any(|h| h == w || h == "root");
            if !ok {
                missing.push(format!("{w} on {path} (has {})", have.join(",")));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingCapabilities {
            missing: missing.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vault_client::{AuthInfo, MockCertAuthApi, MockTokenApi};

    fn auth(policies: &[&str], serial: &str) -> AuthInfo {
        serde_json::from_value(serde_json::json!({
            "client_token": "s.secret",
            "accessor": "acc1",
            "policies": policies,
            "token_policies": policies,
            "metadata": BTreeMap::from([
                ("cert_name", "agent-ncprd1"),
                ("common_name", "agent-ncprd1.prod.privsec.ch"),
                ("serial_number", serial),
            ]),
        }))
        .unwrap()
    }

    fn expected() -> Vec<String> {
        vec!["pki-issue-ncprd1".into(), "marker-cert-auth".into()]
    }

    #[tokio::test]
    async fn an_identity_policy_fails_the_gate() {
        let mut c = MockCertAuthApi::new();
        c.expect_cert_login().returning(|_, _| {
            let mut a = auth(&["default", "marker-cert-auth", "pki-issue-ncprd1"], "42");
            a.identity_policies = vec!["admin-everything".into()];
            Ok(a)
        });
        let err = login_gate(&c, None, "cert", "agent-ncprd1", &expected(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::IdentityPolicies { .. }), "{err}");
        assert!(err.to_string().contains("admin-everything"));
    }

    #[tokio::test]
    async fn missing_capabilities_are_named() {
        let mut t = MockTokenApi::new();
        t.expect_capabilities_self().returning(|paths| {
            Ok(paths
                .iter()
                .map(|p| (p.clone(), vec!["read".to_string()]))
                .collect())
        });
        let err = require_capabilities(
            &t,
            &[("pki-prod/issue/nginx-a".into(), vec!["update".into()])],
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("update on pki-prod/issue/nginx-a"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exact_policies_pass_and_the_token_is_revoked() {
        let mut c = MockCertAuthApi::new();
        c.expect_cert_login().returning(|_, _| {
            Ok(auth(
                &["default", "marker-cert-auth", "pki-issue-ncprd1"],
                "42",
            ))
        });
        let mut t = MockTokenApi::new();
        t.expect_revoke_accessor()
            .withf(|a| a == "acc1")
            .times(1)
            .returning(|_| Ok(()));
        let p = login_gate(
            &c,
            Some(&t),
            "cert",
            "agent-ncprd1",
            &expected(),
            Some("42"),
        )
        .await
        .unwrap();
        assert_eq!(p.serial_decimal, "42");
        assert_eq!(p.common_name, "agent-ncprd1.prod.privsec.ch");
    }

    #[tokio::test]
    async fn stray_or_missing_policies_fail_with_both_lists() {
        let mut c = MockCertAuthApi::new();
        c.expect_cert_login()
            .returning(|_, _| Ok(auth(&["default", "debug-policy", "pki-issue-ncprd1"], "42")));
        let err = login_gate(&c, None, "cert", "agent-ncprd1", &expected(), None)
            .await
            .unwrap_err();
        match err {
            Error::PolicyMismatch { missing, stray, .. } => {
                assert_eq!(missing, vec!["marker-cert-auth".to_string()]);
                assert_eq!(stray, vec!["debug-policy".to_string()]);
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn an_old_certificate_does_not_pass() {
        let mut c = MockCertAuthApi::new();
        c.expect_cert_login()
            .returning(|_, _| Ok(auth(&["marker-cert-auth", "pki-issue-ncprd1"], "41")));
        let err = login_gate(&c, None, "cert", "agent-ncprd1", &expected(), Some("42"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongCertificate { .. }), "{err}");
        assert!(err.to_string().contains("41") && err.to_string().contains("42"));
    }
}
