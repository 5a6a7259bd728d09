//! Cert auth mappings (`auth/<mount>/certs/<name>`): desired state, drift, upsert, restore.

use std::collections::BTreeSet;

use serde::Serialize;
use vault_client::{CertAuthApi, CertRole};

use crate::error::{Error, Result, vault};

/// The desired state of one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingSpec {
    /// Mapping name, e.g. `agent-ncprd1`.
    pub name: String,
    /// PEM CA certificate(s) the client certificate must chain to.
    pub ca_pem: String,
    /// Accepted common names, e.g. `agent-ncprd1.prod.privsec.ch`.
    pub allowed_common_names: Vec<String>,
    /// Token policies, e.g. `pki-issue-ncprd1`, `marker-cert-auth`.
    pub token_policies: Vec<String>,
    /// Token TTL, seconds.
    pub token_ttl: u64,
    /// Token max TTL, seconds; `None` keeps what the mapping has (an operator's choice).
    pub token_max_ttl: Option<u64>,
    /// Policies kept when the mapping already carries them (granted by another step or an
    /// operator), instead of being reported as drift and removed.
    pub keep_if_present: Vec<String>,
    /// What to do with constraints this spec does not manage.
    pub unmanaged: Unmanaged,
}

/// What to do when a mapping carries constraints rotate does not manage
/// (`allowed_organizational_units`, `token_bound_cidrs`, `required_extensions`, ...): they
/// make a login with the right certificate fail with a bare 400/403.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmanaged {
    /// Refuse with the list of fields and values (the default: nothing is changed).
    #[default]
    Refuse,
    /// Reset them to their defaults, reported as drift.
    Converge,
}

/// Constraint fields of a cert auth mapping that rotate does not manage, with the value
/// that means "no constraint".
/// A field and a maker of its "no constraint" value.
type FieldDefault = (&'static str, fn() -> serde_json::Value);

const UNMANAGED: &[FieldDefault] = &[
    ("allowed_names", || serde_json::json!([])),
    ("allowed_dns_sans", || serde_json::json!([])),
    ("allowed_email_sans", || serde_json::json!([])),
    ("allowed_uri_sans", || serde_json::json!([])),
    ("allowed_organizational_units", || serde_json::json!([])),
    ("required_extensions", || serde_json::json!([])),
    ("token_bound_cidrs", || serde_json::json!([])),
    ("bound_cidrs", || serde_json::json!([])),
    ("token_num_uses", || serde_json::json!(0)),
    ("token_no_default_policy", || serde_json::json!(false)),
];

/// Whether `v` constrains anything (a non-empty list or string, `true`, a non-zero number).
fn constrains(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// The unmanaged constraints `actual` carries.
fn unmanaged_drift(actual: &CertRole) -> Vec<Drift> {
    UNMANAGED
        .iter()
        .filter_map(|(field, empty)| {
            let v = actual.other.get(*field)?;
            constrains(v).then(|| Drift {
                field: (*field).to_owned(),
                desired: empty().to_string(),
                actual: v.to_string(),
                added: vec![],
                removed: vec![],
                managed: false,
            })
        })
        .collect()
}

impl MappingSpec {
    /// The desired policies given what Vault has: `token_policies` plus each of
    /// `keep_if_present` the actual mapping already carries.
    pub fn effective_policies(&self, actual: Option<&CertRole>) -> Vec<String> {
        let mut policies = self.token_policies.clone();
        if let Some(actual) = actual {
            for p in &self.keep_if_present {
                if actual.token_policies.contains(p) && !policies.contains(p) {
                    policies.push(p.clone());
                }
            }
        }
        policies
    }
}

/// One field where Vault's mapping differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Field name as Vault names it.
    pub field: String,
    /// Desired value, rendered.
    pub desired: String,
    /// Actual value, rendered.
    pub actual: String,
    /// For list fields: entries that would be added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// For list fields: entries that would be removed (e.g. a stray `debug-policy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// A field rotate manages (`false`: a constraint outside the managed set).
    pub managed: bool,
}

/// The result of [`upsert_mapping`].
#[derive(Debug, Clone, Serialize)]
pub struct MappingOutcome {
    /// `auth/<mount>/certs/<name>`.
    pub path: String,
    /// What happened.
    pub action: MappingAction,
    /// Differences found before writing (empty when unchanged).
    pub drift: Vec<Drift>,
    /// The policies the mapping carries after this (what a login must yield).
    pub token_policies: Vec<String>,
    /// The mapping as it was, to restore on rollback (`None` if it did not exist).
    #[serde(skip)]
    pub previous: Option<CertRole>,
}

/// Mapping actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingAction {
    /// Already as desired: nothing written.
    Unchanged,
    /// Created.
    Created,
    /// Updated.
    Updated,
    /// Would create (dry run).
    WouldCreate,
    /// Would update (dry run).
    WouldUpdate,
}

/// The DER certificates of a PEM bundle, as a set (order and whitespace don't matter).
fn cert_set(pem: &str) -> BTreeSet<Vec<u8>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(|c| c.ok())
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn list_drift(field: &str, desired: &[String], actual: &[String]) -> Option<Drift> {
    let d: BTreeSet<&String> = desired.iter().collect();
    let a: BTreeSet<&String> = actual.iter().collect();
    if d == a {
        return None;
    }
    Some(Drift {
        field: field.to_owned(),
        desired: desired.join(","),
        actual: actual.join(","),
        added: d.difference(&a).map(|s| s.to_string()).collect(),
        removed: a.difference(&d).map(|s| s.to_string()).collect(),
        managed: true,
    })
}

fn scalar_drift(field: &str, desired: u64, actual: u64) -> Option<Drift> {
    (desired != actual).then(|| Drift {
        field: field.to_owned(),
        desired: desired.to_string(),
        actual: actual.to_string(),
        added: vec![],
        removed: vec![],
        managed: true,
    })
}

/// Compare the desired mapping with what Vault has (`None` = absent: no drift list, it is
/// simply missing). Lists compare as sets; CA bundles compare by their certificates.
pub fn diff_mapping(spec: &MappingSpec, actual: &CertRole) -> Vec<Drift> {
    let mut drift = Vec::new();
    if cert_set(&spec.ca_pem) != cert_set(&actual.certificate) {
        drift.push(Drift {
            field: "certificate".into(),
            desired: format!("{} CA certificate(s)", cert_set(&spec.ca_pem).len()),
            actual: format!(
                "{} CA certificate(s), different",
                cert_set(&actual.certificate).len()
            ),
            added: vec![],
            removed: vec![],
            managed: true,
        });
    }
    drift.extend(list_drift(
        "allowed_common_names",
        &spec.allowed_common_names,
        &actual.allowed_common_names,
    ));
    drift.extend(list_drift(
        "token_policies",
        &spec.effective_policies(Some(actual)),
        &actual.token_policies,
    ));
    drift.extend(scalar_drift("token_ttl", spec.token_ttl, actual.token_ttl));
    if let Some(max) = spec.token_max_ttl {
        drift.extend(scalar_drift("token_max_ttl", max, actual.token_max_ttl));
    }
    drift.extend(unmanaged_drift(actual));
    drift
}

/// What [`upsert_mapping`] would do to a mapping that is now `previous` (as read by the
/// caller): its drift and action (`Unchanged`, `WouldCreate`, `WouldUpdate`), without a
/// request. Refuses unmanaged constraints as `upsert_mapping` does.
// The crate's one error type, as its async functions return it.
#[allow(clippy::result_large_err)]
pub fn plan_mapping(
    mount: &str,
    spec: &MappingSpec,
    previous: Option<CertRole>,
) -> Result<MappingOutcome> {
    if cert_set(&spec.ca_pem).is_empty() {
        return Err(Error::EmptyCa {
            mapping: spec.name.clone(),
        });
    }
    let path = format!("auth/{}/certs/{}", mount.trim_matches('/'), spec.name);
    let drift = match &previous {
        Some(actual) => diff_mapping(spec, actual),
        None => Vec::new(),
    };
    let foreign: Vec<&Drift> = drift.iter().filter(|d| !d.managed).collect();
    if !foreign.is_empty() && spec.unmanaged == Unmanaged::Refuse {
        return Err(Error::UnmanagedConstraint {
            path,
            fields: foreign
                .iter()
                .map(|d| format!("{} = {}", d.field, d.actual))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let action = match (previous.is_some(), drift.is_empty()) {
        (true, true) => MappingAction::Unchanged,
        (true, false) => MappingAction::WouldUpdate,
        (false, _) => MappingAction::WouldCreate,
    };
    Ok(MappingOutcome {
        path,
        action,
        drift,
        token_policies: spec.effective_policies(previous.as_ref()),
        previous,
    })
}

/// Read the mapping, report drift, and write it only if it differs (unless `dry_run`).
/// Fields Vault keeps that we don't manage are preserved.
pub async fn upsert_mapping(
    api: &dyn CertAuthApi,
    mount: &str,
    spec: &MappingSpec,
    dry_run: bool,
) -> Result<MappingOutcome> {
    if cert_set(&spec.ca_pem).is_empty() {
        return Err(Error::EmptyCa {
            mapping: spec.name.clone(),
        });
    }
    let mount = mount.trim_matches('/');
    let path = format!("auth/{mount}/certs/{}", spec.name);
    let previous = api
        .read_cert_role(mount, &spec.name)
        .await
        .map_err(vault(format!("read mapping {path}")))?;
    let planned = plan_mapping(mount, spec, previous)?;
    if dry_run || planned.action == MappingAction::Unchanged {
        return Ok(planned);
    }
    let previous = planned.previous.as_ref();
    let mut role = previous.cloned().unwrap_or_default();
    role.certificate = spec.ca_pem.clone();
    role.allowed_common_names = spec.allowed_common_names.clone();
    role.token_policies = spec.effective_policies(previous);
    role.token_ttl = spec.token_ttl;
    if let Some(max) = spec.token_max_ttl {
        role.token_max_ttl = max;
    }
    if spec.unmanaged == Unmanaged::Converge {
        for (field, empty) in UNMANAGED {
            if role.other.get(*field).is_some_and(constrains) {
                role.other.insert((*field).to_owned(), empty());
            }
        }
    }
    if role.display_name.is_empty() {
        role.display_name = spec.name.clone();
    }
    // Deprecated aliases Vault echoes back would fight the token_* fields.
    for k in ["policies", "ttl", "max_ttl", "period"] {
        role.other.remove(k);
    }
    api.write_cert_role(mount, &spec.name, &role)
        .await
        .map_err(vault(format!("write mapping {path}")))?;
    Ok(MappingOutcome {
        action: match previous {
            Some(_) => MappingAction::Updated,
            None => MappingAction::Created,
        },
        ..planned
    })
}

/// Undo [`upsert_mapping`]: write back the previous mapping, or delete one we created.
pub async fn restore_mapping(
    api: &dyn CertAuthApi,
    mount: &str,
    name: &str,
    outcome: &MappingOutcome,
) -> Result<()> {
    match (&outcome.action, &outcome.previous) {
        (MappingAction::Updated, Some(prev)) => api
            .write_cert_role(mount, name, prev)
            .await
            .map_err(vault(format!("restore mapping {}", outcome.path))),
        (MappingAction::Created, _) => api
            .delete_cert_role(mount, name)
            .await
            .map_err(vault(format!("delete mapping {}", outcome.path))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_client::MockCertAuthApi;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

    fn spec() -> MappingSpec {
        MappingSpec {
            name: "agent-ncprd1".into(),
            ca_pem: CA.into(),
            allowed_common_names: vec!["agent-ncprd1.prod.privsec.ch".into()],
            token_policies: vec!["pki-issue-ncprd1".into(), "marker-cert-auth".into()],
            token_ttl: 3600,
            token_max_ttl: None,
            keep_if_present: vec!["secret-agent-ncprd1-policy".into()],
            unmanaged: Unmanaged::Refuse,
        }
    }

    #[tokio::test]
    async fn an_unmanaged_ou_constraint_is_refused_or_converged_and_max_ttl_kept() {
        let mut a = actual();
        a.token_max_ttl = 7200;
        a.other.insert(
            "allowed_organizational_units".into(),
            serde_json::json!(["SRE"]),
        );
        let stored = a.clone();
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role()
            .returning(move |_, _| Ok(Some(stored.clone())));
        api.expect_write_cert_role().never();
        let err = upsert_mapping(&api, "cert", &spec(), true)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("allowed_organizational_units") && msg.contains("SRE"),
            "{msg}"
        );

        let stored = a.clone();
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role()
            .returning(move |_, _| Ok(Some(stored.clone())));
        api.expect_write_cert_role()
            .withf(|_, _, r| {
                r.other["allowed_organizational_units"] == serde_json::json!([])
                    && r.token_max_ttl == 7200
            })
            .times(1)
            .returning(|_, _, _| Ok(()));
        let mut s = spec();
        s.unmanaged = Unmanaged::Converge;
        let out = upsert_mapping(&api, "cert", &s, false).await.unwrap();
        assert!(out.drift.iter().any(|d| !d.managed));
    }

    fn actual() -> CertRole {
        CertRole {
            certificate: format!("\n{CA}"),
            allowed_common_names: vec!["agent-ncprd1.prod.privsec.ch".into()],
            token_policies: vec!["marker-cert-auth".into(), "pki-issue-ncprd1".into()],
            token_ttl: 3600,
            ..Default::default()
        }
    }

    #[test]
    fn same_sets_in_other_order_are_not_drift() {
        assert!(diff_mapping(&spec(), &actual()).is_empty());
    }

    #[test]
    fn stray_debug_policy_is_reported_as_removed() {
        let mut a = actual();
        a.token_policies.push("debug-policy".into());
        let d = diff_mapping(&spec(), &a);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "token_policies");
        assert_eq!(d[0].removed, vec!["debug-policy".to_string()]);
        assert!(d[0].added.is_empty());
    }

    #[test]
    fn kept_policies_are_not_drift_but_others_are() {
        let mut a = actual();
        a.token_policies.push("secret-agent-ncprd1-policy".into());
        assert!(diff_mapping(&spec(), &a).is_empty());
        assert_eq!(spec().effective_policies(Some(&a)).len(), 3);
        assert_eq!(spec().effective_policies(None).len(), 2);
    }

    #[tokio::test]
    async fn unchanged_mapping_is_not_written() {
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role()
            .returning(|_, _| Ok(Some(actual())));
        api.expect_write_cert_role().never();
        let o = upsert_mapping(&api, "cert", &spec(), false).await.unwrap();
        assert_eq!(o.action, MappingAction::Unchanged);
        assert_eq!(o.path, "auth/cert/certs/agent-ncprd1");
    }

    #[tokio::test]
    async fn drifted_mapping_is_written_once_and_keeps_unmanaged_fields() {
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role().returning(|_, _| {
            let mut a = actual();
            a.token_ttl = 60;
            a.other
                .insert("ocsp_servers_override".into(), serde_json::json!(["x"]));
            Ok(Some(a))
        });
        api.expect_write_cert_role()
            .withf(|m, n, r| {
                m == "cert"
                    && n == "agent-ncprd1"
                    && r.token_ttl == 3600
                    && r.other.contains_key("ocsp_servers_override")
            })
            .times(1)
            .returning(|_, _, _| Ok(()));
        let o = upsert_mapping(&api, "cert", &spec(), false).await.unwrap();
        assert_eq!(o.action, MappingAction::Updated);
        assert_eq!(o.drift[0].field, "token_ttl");
    }

    #[tokio::test]
    async fn forbidden_write_names_the_path() {
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role().returning(|_, _| Ok(None));
        api.expect_write_cert_role().returning(|_, _, _| {
            Err(vault_client::Error::Api {
                method: "POST".into(),
                path: "auth/cert/certs/agent-ncprd1".into(),
                status: 403,
                errors: vec!["permission denied".into()],
            })
        });
        let err = upsert_mapping(&api, "cert", &spec(), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("write mapping auth/cert/certs/agent-ncprd1:"),
            "{err}"
        );
        assert!(
            err.contains("403") && err.contains("permission denied"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dry_run_and_empty_ca_write_nothing() {
        let mut api = MockCertAuthApi::new();
        api.expect_read_cert_role().returning(|_, _| Ok(None));
        api.expect_write_cert_role().never();
        let o = upsert_mapping(&api, "cert", &spec(), true).await.unwrap();
        assert_eq!(o.action, MappingAction::WouldCreate);
        let mut bad = spec();
        bad.ca_pem = "not pem".into();
        assert!(matches!(
            upsert_mapping(&api, "cert", &bad, false).await,
            Err(Error::EmptyCa { .. })
        ));
    }
}
