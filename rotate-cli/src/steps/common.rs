//! What the steps share: issuing (intent journaled first), renewal rules, role and
//! policy plans in the change vocabulary, CA bundles.

use std::path::Path;

use crate::change::{Change, ChangeKind, FieldDiff};
use crate::config::{Config, KeyMode};
use crate::deps::Vault;
use pki_ops::{IssueMode, KeyAlgorithm};

use crate::error::StepError;

pub(crate) fn key_algorithm(mode: KeyMode) -> KeyAlgorithm {
    match mode {
        KeyMode::CsrRsa2048 => KeyAlgorithm::Rsa2048,
        KeyMode::CsrEcdsaP256 | KeyMode::Vault => KeyAlgorithm::EcdsaP256,
    }
}

pub(crate) fn issue_mode(mode: KeyMode) -> IssueMode {
    match mode {
        KeyMode::Vault => IssueMode::VaultKey,
        other => IssueMode::Csr(key_algorithm(other)),
    }
}

/// The PKI mount's CA chain, checked to start with the configured issuer.
pub(crate) async fn ca_chain(cfg: &Config, vault: Vault<'_>) -> Result<String, StepError> {
    mount_chain(vault, &cfg.pki.mount, Some(&cfg.pki.issuer_name)).await
}

/// `mount`'s CA chain (`<mount>/cert/ca_chain`), checked to start with `issuer` when given.
pub(crate) async fn mount_chain(
    vault: Vault<'_>,
    mount: &str,
    issuer: Option<&str>,
) -> Result<String, StepError> {
    let what = format!("{mount}/cert/ca_chain");
    let chain = vault
        .pki
        .read_ca_chain(mount)
        .await
        .map_err(|e| StepError::vault(format!("read CA chain {what}"), e))?;
    let certs = pki_ops::parse_bundle(&chain, &what)?;
    let first = certs.first().ok_or_else(|| StepError::Invalid {
        what: what.clone(),
        reason: "empty CA chain".into(),
    })?;
    if let Some(issuer) = issuer
        && first.expect_cn(issuer).is_err()
    {
        return Err(StepError::Invalid {
            what: format!("[pki] issuer_name {issuer:?}"),
            reason: format!(
                "the default issuer of {mount} is {:?}: set issuer_name to it, or make the intended issuer the mount's default",
                first.subject_cn.as_deref().unwrap_or(&first.subject)
            ),
        });
    }
    Ok(chain)
}

/// The planned change "a new certificate `object`", noting the one it replaces (or that
/// there is none); `kept` says the replaced one stays valid (it is not revoked).
pub(crate) fn new_cert_change(
    object: String,
    previous: Option<&pki_ops::CertInfo>,
    kept: bool,
) -> Change {
    Change::new(ChangeKind::Create, object).note(match previous {
        Some(c) => format!(
            "replaces serial {} (not after {}{})",
            c.serial_hex,
            c.not_after_human,
            if kept {
                "; kept valid, not revoked"
            } else {
                ""
            }
        ),
        None => "no current certificate".into(),
    })
}

/// Issue a client certificate for `req.common_name` from `mount/role`, journal its
/// revocation at once (a failed run revokes what it issued; also one that failed the
/// checks right after issuance), then check it: client usage, valid at `clock()` (read
/// after issuance) for at least `min_valid`, chaining to `chain`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn issue_client(
    vault: Vault<'_>,
    tx: &crate::engine::Tx<'_>,
    mount: &str,
    role: &str,
    req: &vault_client::IssueRequest,
    mode: IssueMode,
    chain: &str,
    clock: &(dyn Fn() -> i64 + Send + Sync),
    min_valid: std::time::Duration,
) -> Result<pki_ops::IssuedMaterial, StepError> {
    let issued = issue_journaled(vault, tx, mount, role, req, mode, clock).await?;
    let now = clock();
    issued.info.expect_client_auth()?;
    issued.info.expect_validity(now, min_valid, None)?;
    pki_ops::verify_chain(&issued.cert_pem, &issued.chain_pem, chain, now)?;
    Ok(issued)
}

/// Issue from `mount/role`, intent before effect: a `RevokeIssued` is journaled before
/// Vault is asked (a kill right after issuance still leaves a record that finds the
/// certificate), then the precise `Revoke` of the serial once known (also for one the
/// checks right after issuance refuse), which resolves the intent.
pub(crate) async fn issue_journaled(
    vault: Vault<'_>,
    tx: &crate::engine::Tx<'_>,
    mount: &str,
    role: &str,
    req: &vault_client::IssueRequest,
    mode: IssueMode,
    clock: &(dyn Fn() -> i64 + Send + Sync),
) -> Result<pki_ops::IssuedMaterial, StepError> {
    use crate::state::undo::UndoAction;
    let now = clock();
    let intent = tx.record_indexed(UndoAction::RevokeIssued {
        mount: mount.to_owned(),
        cn: req.common_name.clone(),
        after: now,
        // Longer than any one issuance (request timeout and retries) takes.
        until: now + 600,
    })?;
    let revoke = |serial: &str| -> Result<(), StepError> {
        tx.record(UndoAction::Revoke {
            mount: mount.to_owned(),
            serial: serial.to_owned(),
            cn: req.common_name.clone(),
        })?;
        tx.resolved(intent)
    };
    match pki_ops::issue_cert(vault.pki, mount, role, req, mode).await {
        Ok(issued) => {
            pki_ops::failpoint("after-issue");
            revoke(&issued.info.serial_hex)?;
            Ok(issued)
        }
        Err(e) => {
            match &e {
                pki_ops::Error::Rejected { serial, .. } => revoke(serial)?,
                // Vault answered with an error: nothing was issued.
                pki_ops::Error::Vault {
                    source: vault_client::Error::Api { .. },
                    ..
                } => tx.resolved(intent)?,
                // No answer (reset, timeout): it may have issued; the intent stays.
                _ => {}
            }
            Err(e.into())
        }
    }
}

/// `Some(why)` when role `mount/roles/role` exists and pins (`issuer_ref`) an issuer
/// other than the mount's default: its certificates would not chain to
/// `<mount>/cert/ca_chain`, which every gate, mapping and bundle here is checked against.
pub(crate) async fn pinned_issuer(
    vault: Vault<'_>,
    mount: &str,
    role: &str,
) -> Result<Option<String>, StepError> {
    let path = format!("{mount}/roles/{role}");
    let Some(params) = vault
        .pki
        .read_role(mount, role)
        .await
        .map_err(|e| StepError::vault(format!("read role {path}"), e))?
    else {
        return Ok(None);
    };
    let pin = params
        .get("issuer_ref")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    if pin.is_empty() || pin == "default" {
        return Ok(None);
    }
    let id = |r: String| async move {
        let what = format!("read issuer {mount}/issuer/{r}");
        vault
            .pki
            .read_issuer(mount, &r)
            .await
            .map_err(|e| StepError::vault(what, e))
            .map(|i| i.map(|i| (i.issuer_id, i.issuer_name)))
    };
    let default = id("default".to_owned()).await?;
    let pinned = id(pin.to_owned()).await?;
    match (pinned, default) {
        (Some((p, _)), Some((d, _))) if p == d => Ok(None),
        (pinned, default) => Ok(Some(format!(
            "role {path} pins issuer_ref {pin:?} ({}) but the mount's default issuer is {}: certificates it signs would not chain to {mount}/cert/ca_chain, which rotate checks everything against; set issuer_ref = \"default\" on the role (or make that issuer the default)",
            pinned.map_or("no such issuer".to_owned(), |(id, name)| format!(
                "issuer {id} {name:?}"
            )),
            default.map_or("unset".to_owned(), |(id, name)| format!("{id} {name:?}")),
        ))),
    }
}

/// A CA bundle to write: `chain` (the PKI mount's) first, then every certificate of the
/// `current` bundle it lacks, so a refreshed bundle never drops a CA its user trusted.
pub(crate) fn merged_bundle(chain: &str, current: Option<&[u8]>) -> Result<String, StepError> {
    let mut out = chain.trim_end().to_owned();
    out.push('\n');
    let have: Vec<String> = pki_ops::parse_bundle(chain, "PKI chain")?
        .into_iter()
        .map(|c| c.sha256_fingerprint)
        .collect();
    if let Some(cur) = current {
        let text = String::from_utf8_lossy(cur);
        for block in text.split_inclusive("-----END CERTIFICATE-----") {
            let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
                continue;
            };
            let pem = &block[start..];
            if let Ok(info) = pki_ops::CertInfo::from_pem_labeled(pem, "current CA bundle")
                && !have.contains(&info.sha256_fingerprint)
            {
                out.push_str(pem);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Whether a certificate must be renewed by an `--if-due` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Renew it, because…
    Due(String),
    /// Leave it (and everything its step would write) alone, because…
    NotDue(String),
}

/// Due when there is no certificate, it expired, it was not signed by the first of
/// `chain` (what signs now, checked by signature, not by name: a re-keyed intermediate
/// keeps its name, and Vault Agent's `pkiCert` would keep the old certificate), or less
/// than `share` of its lifetime is left (one third by default, as step-ca and
/// cert-manager renew). `current` is the certificate's PEM (a fullchain works).
pub(crate) fn renewal(
    what: &str,
    current: Option<&str>,
    chain: &str,
    now: i64,
    share: f64,
) -> Renewal {
    let Some(pem) = current else {
        return Renewal::Due(format!("{what}: no current certificate"));
    };
    let c = match pki_ops::CertInfo::from_pem_labeled(pem, what) {
        Ok(c) => c,
        Err(e) => return Renewal::Due(format!("{what}: unreadable ({e})")),
    };
    if now >= c.not_after {
        return Renewal::Due(format!("{what}: expired on {}", c.not_after_human));
    }
    let issuing = chain
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap_or_default();
    if let Err(e) = pki_ops::verify_chain(pem, "", issuing, now) {
        return Renewal::Due(format!("{what}: not signed by the CA that signs now ({e})"));
    }
    let life = (c.not_after - c.not_before).max(1) as f64;
    let left = (c.not_after - now) as f64 / life;
    let pct = |x: f64| (x * 100.0).round() as i64;
    if left < share {
        Renewal::Due(format!(
            "{what}: {}% of its lifetime left (renews below {}%)",
            pct(left),
            pct(share)
        ))
    } else {
        Renewal::NotDue(format!(
            "{what} serial {}: not due, {}% of its lifetime left (not after {}; renews below {}%)",
            c.serial_hex,
            pct(left),
            c.not_after_human,
            pct(share)
        ))
    }
}

/// Also due, whatever the dates: a key that does not match its certificate.
pub(crate) fn pair_broken(what: &str, key: Option<&[u8]>, cert: Option<&str>) -> Option<String> {
    let (Some(key), Some(cert)) = (key, cert) else {
        return Some(format!("{what}: key or certificate missing"));
    };
    pki_ops::key_matches_cert(&String::from_utf8_lossy(key), cert)
        .err()
        .map(|e| format!("{what}: {e}"))
}

/// A step's `not_due` answer for a key + certificate pair: `Some(why)` when the pair
/// matches and [`renewal`] says it is not due; `None` (renew) otherwise.
pub(crate) fn pair_not_due(
    cfg: &Config,
    now: i64,
    what: &str,
    key: Option<&[u8]>,
    cert: Option<&str>,
    chain: &str,
) -> Option<String> {
    if let Some(broken) = pair_broken(what, key, cert) {
        tracing::info!(%broken, "due");
        return None;
    }
    not_due_reason(renewal(what, cert, chain, now, cfg.run.renew_share))
}

/// [`pair_not_due`] for the key `key` and certificate `cert` of `tree`, read without
/// following symlinks.
pub(crate) fn pair_in_tree_not_due(
    cfg: &Config,
    now: i64,
    what: &str,
    tree: &pki_ops::Tree,
    (cert, key): (&Path, &Path),
    chain: &str,
) -> Result<Option<String>, StepError> {
    let cert = tree
        .read(cert)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let key = tree.read(key)?;
    Ok(pair_not_due(
        cfg,
        now,
        what,
        key.as_deref().map(|k| k.as_slice()),
        cert.as_deref(),
        chain,
    ))
}

/// [`renewal`] as a step's `not_due` answer: `Some(why)` when not due.
pub(crate) fn not_due_reason(r: Renewal) -> Option<String> {
    match r {
        Renewal::Due(why) => {
            tracing::info!(%why, "due for renewal");
            None
        }
        Renewal::NotDue(why) => Some(why),
    }
}

/// Plan PKI role `mount/roles/role` against `desired`: the change, and for apply
/// `Some(previous)` when it must be written (`Some(None)`: it does not exist yet). A
/// missing role with `create` off is refused, naming `setting`.
pub(crate) async fn plan_role(
    vault: Vault<'_>,
    mount: &str,
    role: &str,
    desired: &pki_ops::RoleSpec,
    create: bool,
    setting: &str,
) -> Result<
    (
        Change,
        Option<Option<serde_json::Map<String, serde_json::Value>>>,
    ),
    StepError,
> {
    let path = format!("{mount}/roles/{role}");
    let current = vault
        .pki
        .read_role(mount, role)
        .await
        .map_err(|e| StepError::vault(format!("read {path}"), e))?;
    match current {
        None if !create => Err(StepError::Invalid {
            what: path,
            reason: format!("missing, and {setting} = false"),
        }),
        None => Ok((Change::new(ChangeKind::Create, &path), Some(None))),
        Some(actual) => {
            let diff = pki_ops::diff_role(desired, &actual);
            if diff.is_empty() {
                Ok((Change::new(ChangeKind::Unchanged, &path), None))
            } else {
                Ok((
                    Change::new(ChangeKind::Update, &path).fields(role_fields(&diff)),
                    Some(Some(actual)),
                ))
            }
        }
    }
}

/// `rotate verify`: role `mount/roles/role` is as `spec` says (drift listed), or why not.
pub(crate) async fn role_drift(
    vault: Vault<'_>,
    mount: &str,
    role: &str,
    spec: &pki_ops::RoleSpec,
) -> Result<String, String> {
    match vault.pki.read_role(mount, role).await {
        Ok(Some(actual)) => {
            let diff = pki_ops::diff_role(spec, &actual);
            if diff.is_empty() {
                return Ok("as rotate manages it".into());
            }
            Err(format!(
                "drifted: {}",
                diff.iter()
                    .map(|d| format!(
                        "{} is {} (want {})",
                        d.field,
                        d.actual.as_ref().map_or("unset".into(), |v| v.to_string()),
                        d.desired
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
        Ok(None) => Err("missing".into()),
        Err(x) => Err(format!("{x:#}")),
    }
}

/// Role field differences in the change vocabulary.
pub(crate) fn role_fields(diff: &[pki_ops::FieldChange]) -> Vec<FieldDiff> {
    diff.iter()
        .map(|d| FieldDiff {
            field: d.field.clone(),
            from: d.actual.as_ref().map_or("-".into(), |v| v.to_string()),
            to: d.desired.to_string(),
        })
        .collect()
}

/// Mapping drift in the change vocabulary.
pub(crate) fn drift_fields(drift: &[cert_auth::Drift]) -> Vec<FieldDiff> {
    drift
        .iter()
        .map(|d| FieldDiff {
            field: d.field.clone(),
            from: d.actual.clone(),
            to: d.desired.clone(),
        })
        .collect()
}

/// The change to policy `name` from `current` to `desired`. An existing policy that
/// differs is never narrowed: it is kept, with the text diff shown (the gate then proves
/// the token can still do what it must). `create_only` policies are never compared.
pub(crate) fn policy_change(
    name: &str,
    current: Option<&str>,
    desired: &str,
    create_only: bool,
) -> Change {
    let object = format!("sys/policies/acl/{name}");
    match current {
        None => Change::new(ChangeKind::Create, object),
        Some(c) if c.trim() == desired.trim() || create_only => {
            Change::new(ChangeKind::Unchanged, object)
        }
        Some(c) => {
            let theirs: Vec<&str> = c.lines().collect();
            let ours: Vec<&str> = desired.lines().collect();
            let mut fields: Vec<FieldDiff> = theirs
                .iter()
                .filter(|l| !ours.contains(l))
                .map(|l| FieldDiff {
                    field: "only in Vault".into(),
                    from: (*l).to_owned(),
                    to: "-".into(),
                })
                .collect();
            fields.extend(
                ours.iter()
                    .filter(|l| !theirs.contains(l))
                    .map(|l| FieldDiff {
                        field: "only in rotate's text".into(),
                        from: "-".into(),
                        to: (*l).to_owned(),
                    }),
            );
            Change::new(ChangeKind::Kept, object)
                .fields(fields)
                .note("differs from rotate's text; kept as the operator has it (never narrowed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ca_and_leaf;

    /// A certificate Vault issued but for another CN than asked: refused, and its
    /// revocation journaled before the error comes back.
    #[tokio::test]
    async fn a_certificate_rejected_after_issuance_is_journaled_for_revocation() {
        use crate::state::journal::{Journal, RunRequest, StepId};
        let (ca, evil) = ca_and_leaf("PrivSec Intermediate CA (prod)");
        let mut mocks = crate::testing::Mocks::default();
        mocks.pki.expect_sign().returning(move |_, _, _, _| {
            Ok(vault_client::IssuedCert {
                certificate: evil.clone(),
                issuing_ca: ca.clone(),
                ca_chain: vec![],
                private_key: None,
                private_key_type: None,
                serial_number: "0a:0b:0c".into(),
                expiration: 0,
            })
        });
        let vault = mocks.vault();
        let dir = tempfile::tempdir().unwrap();
        let request = RunRequest {
            steps: vec![StepId::Agents],
            apps: vec![],
            kv_access: false,
            kv_seed: false,
            if_due: false,
        };
        let journal = Journal::start(dir.path(), "r1", "test", 1, request).unwrap();
        let tx = crate::engine::Tx::new(&journal, StepId::Agents, "a");
        let req = vault_client::IssueRequest {
            common_name: "agent-a.prod.privsec.ch".into(),
            ..Default::default()
        };
        let err = issue_client(
            vault,
            &tx,
            "pki-prod",
            "agent-mtls-a",
            &req,
            IssueMode::Csr(KeyAlgorithm::EcdsaP256),
            "",
            &|| 1_767_225_600,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("a.int.privsec.ch"), "{err}");
        let record = journal.record();
        let undo = &record.target(StepId::Agents, "a").unwrap().undo;
        // The intent first (done once the precise revocation is recorded), then that.
        use crate::state::undo::UndoAction;
        assert!(
            matches!(&undo[..], [i, r]
                if matches!(&i.action, UndoAction::RevokeIssued { cn, .. } if cn == "agent-a.prod.privsec.ch") && i.done
                && matches!(&r.action, UndoAction::Revoke { serial, .. } if serial == "0a:0b:0c") && !r.done),
            "{undo:?}"
        );
    }

    #[test]
    fn renewal_is_due_by_lifetime_share_expiry_and_a_rekeyed_ca_of_the_same_name() {
        let (t0, day) = (1_767_225_600_i64, 86_400_i64);
        let (ca, leaf) = ca_and_leaf("PrivSec Intermediate CA (prod)");
        let due = |pem: Option<&str>, chain: &str, now: i64| {
            matches!(renewal("x", pem, chain, now, 1.0 / 3.0), Renewal::Due(_))
        };
        assert!(!due(Some(&leaf), &ca, t0 + day), "fresh: not due");
        assert!(
            due(Some(&leaf), &ca, t0 + 21 * day),
            "less than a third left"
        );
        assert!(due(Some(&leaf), &ca, t0 + 31 * day), "expired");
        assert!(due(None, &ca, t0), "missing");
        // Same name, new key: Vault Agent's pkiCert would keep the leaf; we renew it.
        let (rekeyed, _) = ca_and_leaf("PrivSec Intermediate CA (prod)");
        match renewal("x", Some(&leaf), &rekeyed, t0 + day, 1.0 / 3.0) {
            Renewal::Due(why) => assert!(why.contains("not signed by the CA"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_extended_policy_is_kept_with_its_diff() {
        let ours = "path \"a\" {}\n";
        let theirs = "path \"a\" {}\npath \"extra\" {}\n";
        let c = policy_change("p", Some(theirs), ours, false);
        assert_eq!(c.kind, ChangeKind::Kept);
        assert!(!c.is_change());
        assert_eq!(c.fields.len(), 1);
        assert_eq!(c.fields[0].from, "path \"extra\" {}");
        assert_eq!(
            policy_change("p", None, ours, false).kind,
            ChangeKind::Create
        );
        assert_eq!(
            policy_change("p", Some(ours), ours, false).kind,
            ChangeKind::Unchanged
        );
        assert_eq!(
            policy_change("p", Some(theirs), ours, true).kind,
            ChangeKind::Unchanged
        );
    }
}
