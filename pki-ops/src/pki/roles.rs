//! PKI role upsert: read, compare the fields we care about, write only when different.

use serde::Serialize;
use serde_json::{Map, Value, json};
use vault_client::PkiApi;

use crate::error::{Error, Result};
use crate::keygen::KeyAlgorithm;

/// The desired parameters of a PKI role, as sent to `POST /:mount/roles/:name`. Only
/// these fields are compared with what Vault has; others are left alone.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct RoleSpec {
    params: Map<String, Value>,
}

impl RoleSpec {
    /// A spec from raw role parameters.
    pub fn new(params: Map<String, Value>) -> Self {
        Self { params }
    }

    /// An agent login role (`agent-mtls-<app>`): client certificates only, for exactly
    /// `domain_cn` (e.g. `agent-ncprd1.prod.privsec.ch`), no IP SANs, no subdomains,
    /// ECDSA P-256 keys (see [`RoleSpec::with_key`]).
    pub fn agent_client(domain_cn: &str, ttl: &str, max_ttl: &str) -> Self {
        Self::from_json(json!({
            "allowed_domains": [domain_cn],
            "allow_bare_domains": true,
            "allow_subdomains": false,
            "allow_glob_domains": false,
            "allow_any_name": false,
            "allow_localhost": false,
            "allow_ip_sans": false,
            "enforce_hostnames": true,
            "client_flag": true,
            "server_flag": false,
            "code_signing_flag": false,
            "email_protection_flag": false,
            "require_cn": true,
            "ttl": ttl,
            "max_ttl": max_ttl,
        }))
        .with_key(KeyAlgorithm::EcdsaP256)
    }

    /// An app or listener leaf role (`nginx-<app>`): server certificates only, for
    /// exactly `names` (e.g. `ncprd1.int.privsec.ch`) and no other name, so one app's agent
    /// cannot mint a certificate for another app or for Vault itself; ECDSA P-256 keys
    /// (see [`RoleSpec::with_key`]).
    pub fn server_leaf(names: Vec<String>, ttl: &str, max_ttl: &str) -> Self {
        Self::server_leaf_subdomains(names, ttl, max_ttl)
            .set("allow_bare_domains", true)
            .set("allow_subdomains", false)
            .set("allow_ip_sans", false)
    }

    /// The write-up's broad leaf role: any subdomain of `allowed_domains` (e.g.
    /// `int.privsec.ch`, `prod.privsec.ch`), IP SANs allowed. Any agent holding it can
    /// mint a certificate for any name under those domains: choose it deliberately.
    pub fn server_leaf_subdomains(allowed_domains: Vec<String>, ttl: &str, max_ttl: &str) -> Self {
        Self::from_json(json!({
            "allowed_domains": allowed_domains,
            "allow_bare_domains": false,
            "allow_subdomains": true,
            "allow_glob_domains": false,
            "allow_any_name": false,
            "allow_localhost": false,
            "allow_ip_sans": true,
            "enforce_hostnames": true,
            "server_flag": true,
            "client_flag": false,
            "code_signing_flag": false,
            "email_protection_flag": false,
            "require_cn": true,
            "ttl": ttl,
            "max_ttl": max_ttl,
        }))
        .with_key(KeyAlgorithm::EcdsaP256)
    }

    fn from_json(v: Value) -> Self {
        match v {
            Value::Object(params) => Self { params },
            _ => Self::default(),
        }
    }

    /// Sets `key_type` / `key_bits` for keys of `alg` (Vault rejects a CSR whose key does
    /// not match the role, and `issue` needs a concrete type).
    #[must_use]
    pub fn with_key(self, alg: KeyAlgorithm) -> Self {
        let (ty, bits) = alg.vault_key_type();
        self.set("key_type", ty).set("key_bits", bits)
    }

    /// Sets one parameter.
    #[must_use]
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.params.insert(field.to_owned(), value.into());
        self
    }

    /// The parameters.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }
}

/// One field whose value in Vault differs from the desired one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The role parameter.
    pub field: String,
    /// The desired value, as in the spec.
    pub desired: Value,
    /// What Vault has, `None` when the field (or the role) is absent.
    pub actual: Option<Value>,
}

/// Whether a missing role may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CreatePolicy {
    /// Create the role when it does not exist.
    CreateIfMissing,
    /// The role must exist; a missing role is [`Error::RoleMissing`].
    MustExist,
}

/// What [`upsert_role`] did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleAction {
    /// The role did not exist and was created.
    Created,
    /// Some desired fields differed and were written.
    Updated,
    /// Every desired field already matched; nothing was written.
    Unchanged,
}

/// The result of [`upsert_role`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleOutcome {
    /// PKI mount.
    pub mount: String,
    /// Role name.
    pub role: String,
    /// What happened.
    pub action: RoleAction,
    /// The fields that differed (all desired fields for a created role).
    pub changes: Vec<FieldChange>,
    /// Nothing was written because this was a dry run.
    pub dry_run: bool,
}

/// Compares only the fields of `desired` with `actual` (a role as Vault returns it),
/// normalising Vault's forms: lists come back as arrays (desired may be a comma string),
/// TTLs as integer seconds (desired may be `720h`, `30m`, `3600s` or a number), numbers
/// may be strings and booleans may be `"true"`/`"false"`. List order is ignored.
pub fn diff_role(desired: &RoleSpec, actual: &Map<String, Value>) -> Vec<FieldChange> {
    desired
        .params
        .iter()
        .filter_map(|(field, want)| {
            let have = actual.get(field);
            let same = have.is_some_and(|have| equivalent(field, want, have));
            (!same).then(|| FieldChange {
                field: field.clone(),
                desired: want.clone(),
                actual: have.cloned(),
            })
        })
        .collect()
}

fn is_duration_field(field: &str) -> bool {
    field == "ttl" || field.ends_with("_ttl") || field.ends_with("_duration")
}

fn equivalent(field: &str, want: &Value, have: &Value) -> bool {
    if want == have {
        return true;
    }
    if is_duration_field(field)
        && let (Some(a), Some(b)) = (secs_of(want), secs_of(have))
    {
        return a == b;
    }
    match (want, have) {
        (Value::Array(_), _) | (_, Value::Array(_)) => list_of(want) == list_of(have),
        (Value::Bool(w), h) => bool_of(h) == Some(*w),
        (Value::Number(_), _) | (_, Value::Number(_)) => match (num_of(want), num_of(have)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        (Value::Null, Value::String(s)) | (Value::String(s), Value::Null) => s.is_empty(),
        (Value::String(a), Value::String(b)) => a.trim() == b.trim(),
        _ => false,
    }
}

fn secs_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_duration_secs(s),
        _ => None,
    }
}

fn num_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn list_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.trim().to_owned(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    };
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

/// Parses a Vault duration into seconds: an integer (seconds) or Go-style units
/// `s`, `m`, `h`, `d`, combinable (`1h30m`, `720h`, `3600s`). `None` if malformed or
/// negative.
pub fn parse_duration_secs(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return (n >= 0).then_some(n);
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(total)
}

/// Creates or updates `mount/roles/name` so that every field of `spec` has the desired
/// value: reads the role, compares with [`diff_role`], and writes only when something
/// differs (never in a dry run). With [`CreatePolicy::MustExist`] a missing role is an
/// error and nothing is written.
pub async fn upsert_role(
    api: &dyn PkiApi,
    mount: &str,
    name: &str,
    spec: &RoleSpec,
    policy: CreatePolicy,
    dry_run: bool,
) -> Result<RoleOutcome> {
    let actual = api
        .read_role(mount, name)
        .await
        .map_err(Error::vault(format!("read role {mount}/roles/{name}")))?;
    // Vault rebuilds a role from its defaults on every write: send what it has, overlaid
    // with what we want, so fields we don't manage (issuer_ref, key_usage, ...) survive.
    let mut params = actual.clone().unwrap_or_default();
    for (k, v) in spec.params() {
        params.insert(k.clone(), v.clone());
    }
    let (action, changes) = match actual {
        None if policy == CreatePolicy::MustExist => {
            return Err(Error::RoleMissing {
                mount: mount.to_owned(),
                role: name.to_owned(),
            });
        }
        None => (RoleAction::Created, diff_role(spec, &Map::new())),
        Some(actual) => {
            let changes = diff_role(spec, &actual);
            let action = if changes.is_empty() {
                RoleAction::Unchanged
            } else {
                RoleAction::Updated
            };
            (action, changes)
        }
    };
    if action != RoleAction::Unchanged && !dry_run {
        api.write_role(mount, name, params)
            .await
            .map_err(Error::vault(format!("write role {mount}/roles/{name}")))?;
    }
    tracing::info!(
        mount,
        role = name,
        ?action,
        changes = changes.len(),
        dry_run,
        "pki role upsert"
    );
    Ok(RoleOutcome {
        mount: mount.to_owned(),
        role: name.to_owned(),
        action,
        changes,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vault_client::MockPkiApi;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("720h", Some(2_592_000)),
            ("30m", Some(1800)),
            ("3600s", Some(3600)),
            ("3600", Some(3600)),
            ("1h30m", Some(5400)),
            ("2d", Some(172_800)),
            (" 0 ", Some(0)),
            ("", None),
            ("h", None),
            ("10", Some(10)),
            ("10x", None),
            ("5h3", None),
            ("-5", None),
        ] {
            assert_eq!(parse_duration_secs(s), want, "{s:?}");
        }
    }

    #[test]
    fn normalisation_table() {
        // (field, desired, actual as Vault returns it, equal?)
        let cases = [
            ("ttl", json!("720h"), json!(2_592_000), true),
            ("max_ttl", json!("30m"), json!(1800), true),
            ("ttl", json!("3600s"), json!(3600), true),
            ("ttl", json!(3600), json!(3600), true),
            ("ttl", json!("1h"), json!(7200), false),
            ("not_before_duration", json!("30s"), json!(30), true),
            (
                "allowed_domains",
                json!("a.ch, b.ch"),
                json!(["a.ch", "b.ch"]),
                true,
            ),
            (
                "allowed_domains",
                json!(["b.ch", "a.ch"]),
                json!(["a.ch", "b.ch"]),
                true,
            ),
            (
                "allowed_domains",
                json!("a.ch"),
                json!(["a.ch", "b.ch"]),
                false,
            ),
            ("allowed_domains", json!(["a.ch"]), json!("a.ch"), true),
            ("allowed_domains", json!([]), json!(null), true),
            ("client_flag", json!(true), json!(true), true),
            ("client_flag", json!(true), json!("true"), true),
            ("server_flag", json!(false), json!(true), false),
            ("key_bits", json!(256), json!("256"), true),
            ("key_bits", json!("2048"), json!(2048), true),
            ("key_bits", json!(256), json!(384), false),
            ("key_type", json!("ec"), json!("ec"), true),
            ("key_type", json!("ec"), json!("rsa"), false),
            ("key_type", json!("ec"), json!(null), false),
        ];
        for (field, want, have, eq) in cases {
            let spec = RoleSpec::new(map(json!({ field: want })));
            let d = diff_role(&spec, &map(json!({ field: have })));
            assert_eq!(d.is_empty(), eq, "{field}: {want} vs {have}: {d:?}");
        }
    }

    #[test]
    fn diff_only_desired_fields_and_reports_missing() {
        let spec = RoleSpec::new(map(json!({ "ttl": "1h", "key_type": "ec" })));
        let d = diff_role(&spec, &map(json!({ "ttl": 3600, "no_store": true })));
        assert_eq!(
            d,
            [FieldChange {
                field: "key_type".into(),
                desired: json!("ec"),
                actual: None
            }]
        );
    }

    #[test]
    fn typed_constructors() {
        let a = RoleSpec::agent_client("agent-ncprd1.prod.privsec.ch", "720h", "720h");
        let p = a.params();
        assert_eq!(
            p["allowed_domains"],
            json!(["agent-ncprd1.prod.privsec.ch"])
        );
        assert_eq!(
            (p["client_flag"].clone(), p["server_flag"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(p["allow_subdomains"], json!(false));
        assert_eq!(p["allow_bare_domains"], json!(true));
        assert_eq!(p["enforce_hostnames"], json!(true));
        assert_eq!(p["key_type"], json!("ec"));
        let s = RoleSpec::server_leaf(
            vec!["int.privsec.ch".into(), "prod.privsec.ch".into()],
            "720h",
            "8760h",
        )
        .with_key(KeyAlgorithm::Rsa2048);
        let p = s.params();
        assert_eq!(
            (p["server_flag"].clone(), p["client_flag"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(p["allow_subdomains"], json!(false), "exact names only");
        assert_eq!(
            (p["key_type"].clone(), p["key_bits"].clone()),
            (json!("rsa"), json!(2048))
        );
    }

    #[test]
    fn leaf_roles_allow_exact_names_only_unless_subdomains_are_chosen() {
        let names = vec!["ncprd1.int.privsec.ch".to_owned(), "ncprd1".to_owned()];
        let s = RoleSpec::server_leaf(names.clone(), "720h", "8760h");
        let p = s.params();
        assert_eq!(p["allowed_domains"], json!(names));
        for (field, want) in [
            ("allow_bare_domains", true),
            ("allow_subdomains", false),
            ("allow_glob_domains", false),
            ("allow_any_name", false),
            ("enforce_hostnames", true),
            ("server_flag", true),
            ("client_flag", false),
        ] {
            assert_eq!(p[field], json!(want), "{field}");
        }
        let broad = RoleSpec::server_leaf_subdomains(
            vec!["int.privsec.ch".into(), "prod.privsec.ch".into()],
            "720h",
            "8760h",
        );
        assert_eq!(broad.params()["allow_subdomains"], json!(true));
        assert_eq!(broad.params()["allow_glob_domains"], json!(false));
    }

    #[test]
    fn the_rsa_key_mode_gives_rsa_2048_roles() {
        for spec in [
            RoleSpec::agent_client("agent-x.prod.privsec.ch", "1h", "2h"),
            RoleSpec::server_leaf(vec!["x.int.privsec.ch".into()], "1h", "2h"),
        ] {
            assert_eq!(
                (&spec.params()["key_type"], &spec.params()["key_bits"]),
                (&json!("ec"), &json!(256)),
                "EC P-256 by default"
            );
            let rsa = spec.with_key(KeyAlgorithm::Rsa2048);
            assert_eq!(rsa.params()["key_type"], json!("rsa"));
            assert_eq!(rsa.params()["key_bits"], json!(2048));
        }
    }

    fn vault_form(spec: &RoleSpec) -> Map<String, Value> {
        // What Vault would return after writing `spec`: TTLs in seconds, plus extra fields.
        let mut m = spec.params().clone();
        m.insert("ttl".into(), json!(2_592_000));
        m.insert("max_ttl".into(), json!(2_592_000));
        m.insert("no_store".into(), json!(false));
        m
    }

    #[tokio::test]
    async fn unchanged_does_not_write() {
        let spec = RoleSpec::agent_client("agent-x.prod.privsec.ch", "720h", "720h");
        let actual = vault_form(&spec);
        let mut api = MockPkiApi::new();
        api.expect_read_role()
            .withf(|m, n| m == "pki-prod" && n == "agent-mtls-x")
            .times(1)
            .returning(move |_, _| Ok(Some(actual.clone())));
        api.expect_write_role().never();
        let out = upsert_role(
            &api,
            "pki-prod",
            "agent-mtls-x",
            &spec,
            CreatePolicy::MustExist,
            false,
        )
        .await
        .unwrap();
        assert_eq!(out.action, RoleAction::Unchanged);
        assert!(out.changes.is_empty());
    }

    #[tokio::test]
    async fn changed_writes_once() {
        let spec = RoleSpec::agent_client("agent-x.prod.privsec.ch", "720h", "720h");
        let mut actual = vault_form(&spec);
        actual.insert("server_flag".into(), json!(true));
        actual.insert("issuer_ref".into(), json!("pinned-issuer"));
        let mut sent = actual.clone();
        for (k, v) in spec.params() {
            sent.insert(k.clone(), v.clone());
        }
        assert_eq!(
            sent["issuer_ref"], "pinned-issuer",
            "unmanaged fields are sent back"
        );
        let mut api = MockPkiApi::new();
        api.expect_read_role()
            .returning(move |_, _| Ok(Some(actual.clone())));
        api.expect_write_role()
            .withf(move |m, n, p| m == "pki-prod" && n == "agent-mtls-x" && *p == sent)
            .times(1)
            .returning(|_, _, _| Ok(()));
        let out = upsert_role(
            &api,
            "pki-prod",
            "agent-mtls-x",
            &spec,
            CreatePolicy::MustExist,
            false,
        )
        .await
        .unwrap();
        assert_eq!(out.action, RoleAction::Updated);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].field, "server_flag");
        assert_eq!(out.changes[0].actual, Some(json!(true)));
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["action"], "updated");
    }

    #[tokio::test]
    async fn missing_must_exist_is_an_error_without_write() {
        let mut api = MockPkiApi::new();
        api.expect_read_role().returning(|_, _| Ok(None));
        api.expect_write_role().never();
        let spec = RoleSpec::server_leaf(vec!["int.privsec.ch".into()], "720h", "720h");
        let e = upsert_role(
            &api,
            "pki-prod",
            "nginx-ncprd1",
            &spec,
            CreatePolicy::MustExist,
            false,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, Error::RoleMissing { mount, role } if mount == "pki-prod" && role == "nginx-ncprd1")
        );
        assert!(e.to_string().contains("pki-prod/roles/nginx-ncprd1"));
    }

    #[tokio::test]
    async fn missing_is_created() {
        let mut api = MockPkiApi::new();
        api.expect_read_role().returning(|_, _| Ok(None));
        api.expect_write_role().times(1).returning(|_, _, _| Ok(()));
        let spec = RoleSpec::server_leaf(vec!["int.privsec.ch".into()], "720h", "720h");
        let out = upsert_role(
            &api,
            "pki-prod",
            "nginx-ncprd1",
            &spec,
            CreatePolicy::CreateIfMissing,
            false,
        )
        .await
        .unwrap();
        assert_eq!(out.action, RoleAction::Created);
        assert_eq!(out.changes.len(), spec.params().len());
    }

    #[tokio::test]
    async fn dry_run_never_writes() {
        let spec = RoleSpec::agent_client("agent-x.prod.privsec.ch", "720h", "720h");
        for existing in [None, Some(Map::new())] {
            let mut api = MockPkiApi::new();
            api.expect_read_role()
                .returning(move |_, _| Ok(existing.clone()));
            api.expect_write_role().never();
            let out = upsert_role(
                &api,
                "pki-prod",
                "r",
                &spec,
                CreatePolicy::CreateIfMissing,
                true,
            )
            .await
            .unwrap();
            assert!(out.dry_run);
            assert_ne!(out.action, RoleAction::Unchanged);
            assert!(!out.changes.is_empty());
        }
    }
}
