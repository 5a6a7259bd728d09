//! Step 3: agent login mTLS certificates and their cert auth mappings, per app.
//!
//! Per app: PKI role `agent-mtls-<app>` (client certs only, CN `agent-<app>.<domain>`),
//! policies `pki-issue-<app>` and the marker policy, a new certificate (by default from a
//! key generated here and a CSR), mapping `auth/<mount>/certs/agent-<app>`, the files
//! `agent.key` (0600), `agent.crt` and `ca.pem` (0644). Gate: a fresh client built from the
//! files just written logs in against the mapping and its token carries exactly the
//! expected policies, for the new serial. A failed gate restores the files and the mapping.

use std::path::PathBuf;

use cert_auth::{
    EnableAction, LoginProof, MappingOutcome, MappingSpec, PolicyMode, PolicyOutcome,
    ensure_enabled, ensure_policy, login_gate, restore_mapping, upsert_mapping,
};
use pki_ops::{
    CertInfo, CreatePolicy, FileOutcome, FileSpec, IssueMode, KeyAlgorithm, MaterialSet,
    RoleOutcome, RoleSpec, issue_cert, upsert_role,
};
use serde::Serialize;
use vault_client::IssueRequest;

use crate::config::{AppConfig, Config, KeyMode};
use crate::deps::Vault;
use crate::steps::{StepError, ensure_dir};

/// What step 3 did (or would do) for one app.
#[derive(Debug, Serialize)]
pub struct AgentReport {
    /// App name.
    pub app: String,
    /// Agent certificate CN.
    pub cn: String,
    /// `Rotated`, `Planned` or `Failed`.
    pub status: AppStatus,
    /// The PKI role.
    pub role: Option<RoleOutcome>,
    /// The policies the mapping attaches.
    pub policies: Vec<PolicyOutcome>,
    /// The mapping.
    pub mapping: Option<MappingOutcome>,
    /// Files written (or that would be).
    pub files: Vec<FileOutcome>,
    /// The new certificate (or, for a plan, the current one on disk).
    pub certificate: Option<CertInfo>,
    /// The login gate's proof.
    pub login: Option<LoginProof>,
    /// What remains before this is live.
    pub pending: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The exit code this app's failure maps to.
    pub exit_code: Option<u8>,
}

/// Outcome per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    /// New material written and proven by the gate.
    Rotated,
    /// Dry run: nothing written.
    Planned,
    /// Failed; this app's writes were rolled back.
    Failed,
}

/// The whole step's report.
#[derive(Debug, Serialize)]
pub struct AgentsReport {
    /// Environment name.
    pub env: String,
    /// Always `agents`.
    pub step: &'static str,
    /// Dry run?
    pub dry_run: bool,
    /// The cert auth method.
    pub cert_auth: EnableAction,
    /// Per app.
    pub apps: Vec<AgentReport>,
}

impl AgentsReport {
    /// The step's exit code: the first failed app's, else 0, or for a plan 10 when roles,
    /// policies or mappings would change.
    pub fn exit(&self) -> crate::Exit {
        use crate::Exit;
        let failed = crate::steps::exit_of(self.apps.iter().map(|a| a.exit_code));
        if failed != Exit::Ok {
            return failed;
        }
        let drift = self.cert_auth == EnableAction::WouldEnable
            || self.apps.iter().any(|a| {
                a.role
                    .as_ref()
                    .is_some_and(|r| r.action != pki_ops::RoleAction::Unchanged)
                    || a.mapping
                        .as_ref()
                        .is_some_and(|m| m.action != cert_auth::MappingAction::Unchanged)
                    || a.policies
                        .iter()
                        .any(|p| p.action != cert_auth::PolicyAction::Unchanged)
            });
        if self.dry_run && drift {
            Exit::Changes
        } else {
            Exit::Ok
        }
    }
}

/// Names derived from the config for one app.
struct Names {
    role: String,
    cn: String,
    mapping: String,
    issue_policy: String,
}

fn names(cfg: &Config, app: &AppConfig) -> Names {
    Names {
        role: format!("agent-mtls-{}", app.name),
        cn: format!("agent-{}.{}", app.name, cfg.agents.domain),
        mapping: format!("agent-{}", app.name),
        issue_policy: format!("pki-issue-{}", app.name),
    }
}

/// The desired mapping `agent-<app>`: the PKI chain as CA, the agent CN, exactly the
/// agent policies (plus the KV policy when `[leaf] kv_access` is set; kept anyway when an
/// earlier `--with-kv-access` run granted it).
pub(crate) fn mapping_spec(cfg: &Config, app: &AppConfig, chain: &str) -> MappingSpec {
    let n = names(cfg, app);
    let mut token_policies = vec![n.issue_policy, cfg.agents.marker_policy.clone()];
    if cfg.leaf.kv_access {
        token_policies.push(crate::steps::leaf::kv_policy_name(&app.name));
    }
    MappingSpec {
        name: n.mapping,
        ca_pem: chain.to_owned(),
        allowed_common_names: vec![n.cn],
        token_policies,
        token_ttl: cfg.agents.token_ttl,
        token_max_ttl: 0,
        keep_if_present: vec![crate::steps::leaf::kv_policy_name(&app.name)],
    }
}

/// `pki-issue-<app>`: what the app's agent may do with its token.
fn issue_policy_text(cfg: &Config, app: &AppConfig) -> String {
    format!(
        "# Managed by rotate: the {app} agent issues its leaf certificates.\n\
         path \"{mount}/issue/nginx-{app}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n\
         path \"{mount}/sign/nginx-{app}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n",
        app = app.name,
        mount = cfg.pki.mount
    )
}

fn marker_policy_text() -> String {
    "# Marker: this token was obtained through cert auth (created by rotate if missing).\n\
     path \"auth/token/lookup-self\" {\n  capabilities = [\"read\"]\n}\n"
        .to_owned()
}

fn issue_mode(mode: KeyMode) -> IssueMode {
    match mode {
        KeyMode::CsrEcdsaP256 => IssueMode::Csr(KeyAlgorithm::EcdsaP256),
        KeyMode::CsrRsa2048 => IssueMode::Csr(KeyAlgorithm::Rsa2048),
        KeyMode::Vault => IssueMode::VaultKey,
    }
}

fn spec(app: &AppConfig, path: PathBuf, private: bool) -> FileSpec {
    let s = if private {
        FileSpec::private_key(path)
    } else {
        FileSpec::public(path)
    };
    match (&app.user, app.group()) {
        (Some(u), Some(g)) => s.owned_by(u.clone(), g.to_owned()),
        _ => s,
    }
}

/// The PKI mount's CA chain, checked to start with the configured issuer.
pub(crate) async fn ca_chain(cfg: &Config, vault: Vault<'_>) -> Result<String, StepError> {
    let chain = vault.pki.read_ca_chain(&cfg.pki.mount).await.map_err(|e| {
        StepError::vault(format!("read CA chain {}/cert/ca_chain", cfg.pki.mount), e)
    })?;
    let certs = pki_ops::parse_bundle(&chain, &format!("{}/cert/ca_chain", cfg.pki.mount))?;
    let first = certs.first().ok_or_else(|| StepError::Invalid {
        what: format!("{}/cert/ca_chain", cfg.pki.mount),
        reason: "empty CA chain".into(),
    })?;
    first.expect_cn(&cfg.pki.issuer_name)?;
    Ok(chain)
}

/// Run (or, with `dry_run`, plan) step 3 for `apps`.
pub async fn run_agents(
    cfg: &Config,
    apps: &[&AppConfig],
    vault: Vault<'_>,
    dry_run: bool,
    now: i64,
) -> Result<AgentsReport, StepError> {
    let mount = cfg.agents.cert_auth_mount.as_str();
    let cert_auth = ensure_enabled(vault.sys, mount, dry_run).await?;
    let chain = ca_chain(cfg, vault).await?;
    let mut reports = Vec::new();
    for app in apps {
        let n = names(cfg, app);
        let mut report = AgentReport {
            app: app.name.clone(),
            cn: n.cn.clone(),
            status: if dry_run {
                AppStatus::Planned
            } else {
                AppStatus::Rotated
            },
            role: None,
            policies: Vec::new(),
            mapping: None,
            files: Vec::new(),
            certificate: None,
            login: None,
            pending: None,
            error: None,
            exit_code: None,
        };
        if let Err(e) = agent(cfg, app, &n, vault, &chain, dry_run, now, &mut report).await {
            report.status = AppStatus::Failed;
            report.error = Some(format!("{e:#}"));
            report.exit_code = Some(e.exit().code());
        }
        reports.push(report);
    }
    Ok(AgentsReport {
        env: cfg.env.clone(),
        step: "agents",
        dry_run,
        cert_auth,
        apps: reports,
    })
}

#[allow(clippy::too_many_arguments)]
async fn agent(
    cfg: &Config,
    app: &AppConfig,
    n: &Names,
    vault: Vault<'_>,
    chain: &str,
    dry_run: bool,
    now: i64,
    report: &mut AgentReport,
) -> Result<(), StepError> {
    let mount = cfg.agents.cert_auth_mount.as_str();
    let home = &app.home;
    if !home.is_dir() {
        return Err(StepError::Invalid {
            what: format!("app {} home {}", app.name, home.display()),
            reason: "is not an existing directory".into(),
        });
    }
    let create = if cfg.agents.create_roles {
        CreatePolicy::CreateIfMissing
    } else {
        CreatePolicy::MustExist
    };
    let role_spec = RoleSpec::agent_client(&n.cn, &cfg.agents.ttl, &cfg.agents.max_ttl);
    report.role = Some(
        upsert_role(
            vault.pki,
            &cfg.pki.mount,
            &n.role,
            &role_spec,
            create,
            dry_run,
        )
        .await?,
    );

    report.policies.push(
        ensure_policy(
            vault.sys,
            &n.issue_policy,
            &issue_policy_text(cfg, app),
            PolicyMode::Converge,
            dry_run,
        )
        .await?,
    );
    report.policies.push(
        ensure_policy(
            vault.sys,
            &cfg.agents.marker_policy,
            &marker_policy_text(),
            PolicyMode::CreateIfMissing,
            dry_run,
        )
        .await?,
    );
    let mapping = mapping_spec(cfg, app, chain);

    if dry_run {
        report.mapping = Some(upsert_mapping(vault.cert, mount, &mapping, true).await?);
        report.certificate = CertInfo::from_pem_file(&app.agent_cert()).ok();
        let placeholder = MaterialSet::new()
            .with(spec(app, app.agent_key(), true), Vec::new())
            .with(spec(app, app.agent_cert(), false), Vec::new())
            .with(spec(app, app.ca_file(), false), chain.as_bytes().to_vec());
        report.files = placeholder
            .files()
            .iter()
            .map(|f| FileOutcome {
                path: f.spec.path.clone(),
                mode: f.spec.mode,
                bytes: f.contents().len(),
                changed: true,
                existed: f.spec.path.exists(),
                previous: f.spec.path.exists().then(|| f.spec.prev_path()),
            })
            .collect();
        report.pending = Some(format!(
            "would issue a new certificate for {} ({})",
            n.cn, cfg.agents.ttl
        ));
        return Ok(());
    }

    // Issue and check everything in memory before touching Vault's mapping or the disk.
    let req = IssueRequest {
        common_name: n.cn.clone(),
        ttl: Some(cfg.agents.ttl.clone()),
        exclude_cn_from_sans: false,
        ..Default::default()
    };
    let issued = issue_cert(
        vault.pki,
        &cfg.pki.mount,
        &n.role,
        &req,
        issue_mode(cfg.agents.key_mode),
    )
    .await?;
    issued.info.expect_cn(&n.cn)?;
    issued.info.expect_issuer_cn(&cfg.pki.issuer_name)?;
    issued.info.expect_client_auth()?;
    issued
        .info
        .expect_validity(now, std::time::Duration::from_secs(3600), None)?;
    pki_ops::verify_chain(&issued.cert_pem, &issued.chain_pem, chain, now)?;
    report.certificate = Some(issued.info.clone());

    ensure_dir(&app.agent_key(), 0o700, app)?;
    ensure_dir(&app.ca_file(), 0o755, app)?;
    let set = MaterialSet::new()
        .with(
            spec(app, app.agent_key(), true),
            issued.key_pem.as_bytes().to_vec(),
        )
        .with(
            spec(app, app.agent_cert(), false),
            issued.fullchain_pem().into_bytes(),
        )
        .with(spec(app, app.ca_file(), false), chain.as_bytes().to_vec());
    let written = set.write()?;
    report.files = written.files.clone();

    let outcome = match upsert_mapping(vault.cert, mount, &mapping, false).await {
        Ok(o) => o,
        Err(e) => {
            let rollback = rollback_files(&written);
            return Err(StepError::RolledBack {
                source: Box::new(e.into()),
                rollback,
            });
        }
    };
    report.mapping = Some(outcome.clone());

    // Gate: a fresh client from the files on disk, as the agent will use them.
    let gate = async {
        let fresh = vault
            .gate
            .connect(&app.agent_cert(), &app.agent_key(), &app.ca_file())
            .map_err(|e| StepError::vault("build the gate client from the new files", e))?;
        let proof = login_gate(
            fresh.as_ref(),
            Some(vault.token),
            mount,
            &n.mapping,
            &outcome.token_policies,
            Some(&issued.info.serial_decimal),
        )
        .await?;
        Ok::<_, StepError>(proof)
    };
    match gate.await {
        Ok(proof) => {
            report.login = Some(proof);
            report.pending = Some(format!(
                "the agent re-reads these files at its next login (reload = true), but its open \
                 connections keep the old certificate until {} restarts (step 4)",
                app.unit()
            ));
            Ok(())
        }
        Err(e) => {
            let files = rollback_files(&written);
            let mapping = undo_mapping(vault, mount, &n.mapping, &outcome).await;
            Err(StepError::Gate {
                step: "agents",
                app: app.name.clone(),
                reason: format!("{e:#}; {files}; {mapping}"),
            })
        }
    }
}

/// Restore a mapping this step changed; say how it went (it goes into the user's error).
pub(crate) async fn undo_mapping(
    vault: Vault<'_>,
    mount: &str,
    name: &str,
    outcome: &MappingOutcome,
) -> String {
    match restore_mapping(vault.cert, mount, name, outcome).await {
        Ok(()) => "mapping restored".to_owned(),
        Err(e) => format!(
            "MAPPING RESTORE FAILED ({e}): check {} by hand",
            outcome.path
        ),
    }
}

/// Roll written files back; say how it went (it goes into the error the user sees).
pub(crate) fn rollback_files(written: &pki_ops::WriteReport) -> String {
    match written.rollback() {
        Ok(()) => "files restored".to_owned(),
        Err(e) => {
            tracing::error!(error = %e, "rollback of written files incomplete");
            format!("FILE ROLLBACK INCOMPLETE ({e}): check the .prev files by hand")
        }
    }
}

impl std::fmt::Display for AgentsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Step 3: agent login mTLS certs ({}{})  cert auth: {:?}",
            self.env,
            if self.dry_run { ", plan" } else { "" },
            self.cert_auth
        )?;
        for a in &self.apps {
            writeln!(f, "\n{}  [{:?}]", a.app, a.status)?;
            writeln!(f, "  CN:       {}", a.cn)?;
            if let Some(r) = &a.role {
                let action = crate::steps::role_action_text(r);
                writeln!(
                    f,
                    "  role:     {}/roles/{} ({action}{})",
                    r.mount,
                    r.role,
                    changes(r)
                )?;
            }
            if let Some(m) = &a.mapping {
                writeln!(f, "  mapping:  {} ({:?})", m.path, m.action)?;
                for d in &m.drift {
                    writeln!(
                        f,
                        "            drift {}: {} -> {}",
                        d.field, d.actual, d.desired
                    )?;
                }
            }
            if !a.policies.is_empty() {
                let p: Vec<String> = a
                    .policies
                    .iter()
                    .map(|p| format!("{} ({:?})", p.name, p.action))
                    .collect();
                writeln!(f, "  policies: {}", p.join(", "))?;
            }
            for file in &a.files {
                writeln!(
                    f,
                    "  file:     {} ({:04o}{})",
                    file.path.display(),
                    file.mode,
                    if self.dry_run {
                        ", would write"
                    } else if file.changed {
                        ", written"
                    } else {
                        ", unchanged"
                    }
                )?;
            }
            if let Some(c) = &a.certificate {
                writeln!(f, "  serial:   {}", c.serial_hex)?;
                writeln!(
                    f,
                    "  validity: notBefore {}  notAfter {}",
                    c.not_before_human, c.not_after_human
                )?;
            }
            if let Some(l) = &a.login {
                writeln!(
                    f,
                    "  gate:     cert login OK, token policies {}",
                    l.token_policies.join(",")
                )?;
            }
            if let Some(p) = &a.pending {
                writeln!(f, "  pending:  {p}")?;
            }
            if let Some(e) = &a.error {
                writeln!(f, "  error:    {e}")?;
            }
        }
        Ok(())
    }
}

fn changes(r: &RoleOutcome) -> String {
    if r.changes.is_empty() || r.action == pki_ops::RoleAction::Created {
        String::new()
    } else {
        let fields: Vec<&str> = r.changes.iter().map(|c| c.field.as_str()).collect();
        format!(": {}", fields.join(", "))
    }
}

#[cfg(test)]
mod tests {
    //! Step 3's logic against mocked Vault: what an embedding tool's unit tests look like.

    use super::*;
    use crate::deps::MockGateConnector;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
        DnType, IsCa, KeyPair,
    };
    use vault_client::{
        IssuedCert, MockCertAuthApi, MockKvApi, MockPkiApi, MockSysApi, MockTokenApi, MountInfo,
    };

    fn config(home: &std::path::Path) -> Config {
        let text = format!(
            "env = \"test\"\n[vault]\naddr = \"https://127.0.0.1:1\"\n\
             [pki]\nmount = \"pki-prod\"\nissuer_name = \"PrivSec Intermediate CA (prod)\"\n\
             [[apps]]\nname = \"ncprd1\"\nhome = \"{}\"\n",
            home.display()
        );
        Config::parse(&text, std::path::Path::new("/etc/rotate/test.toml")).unwrap()
    }

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "PrivSec Intermediate CA (prod)");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    /// A PKI mock whose `sign` returns a certificate for `cn` whatever the CSR asked.
    fn pki_signing_as(cn: &'static str) -> MockPkiApi {
        let issuer = std::sync::Arc::new(ca());
        let chain = issuer.pem();
        let mut pki = MockPkiApi::new();
        pki.expect_read_ca_chain()
            .returning(move |_| Ok(chain.clone()));
        pki.expect_read_role().returning(|_, _| Ok(None));
        pki.expect_write_role().times(1).returning(|_, _, _| Ok(()));
        pki.expect_issue().never();
        pki.expect_sign().times(1).returning(move |_, _, csr, _| {
            let mut req = CertificateSigningRequestParams::from_pem(csr).unwrap();
            req.params.distinguished_name = rcgen::DistinguishedName::new();
            req.params.distinguished_name.push(DnType::CommonName, cn);
            let cert = req.signed_by(&issuer).unwrap();
            Ok(serde_json::from_value::<IssuedCert>(serde_json::json!({
                "certificate": cert.pem(),
                "issuing_ca": issuer.pem(),
                "ca_chain": [issuer.pem()],
                "serial_number": "01:02",
            }))
            .unwrap())
        });
        pki
    }

    #[tokio::test]
    async fn an_issued_cert_with_another_cn_fails_the_app_and_writes_nothing() {
        let home = tempfile::tempdir().unwrap();
        let cfg = config(home.path());
        let mut sys = MockSysApi::new();
        sys.expect_list_auth().returning(|| {
            Ok([(
                "cert/".to_string(),
                MountInfo {
                    mount_type: "cert".into(),
                    description: String::new(),
                    accessor: String::new(),
                    options: None,
                },
            )]
            .into())
        });
        sys.expect_read_policy().returning(|_| Ok(None));
        sys.expect_write_policy().returning(|_, _| Ok(()));
        let pki = pki_signing_as("evil.example.com");
        let mut cert = MockCertAuthApi::new();
        cert.expect_read_cert_role().returning(|_, _| Ok(None));
        cert.expect_write_cert_role().never();
        let token = MockTokenApi::new();
        let kv = MockKvApi::new();
        let mut gate = MockGateConnector::new();
        gate.expect_connect().never();
        let vault = Vault {
            sys: &sys,
            pki: &pki,
            cert: &cert,
            token: &token,
            kv: &kv,
            gate: &gate,
        };
        let apps = cfg.select_apps(&[]).unwrap();
        let report = run_agents(&cfg, &apps, vault, false, 0).await.unwrap();
        let app = &report.apps[0];
        assert_eq!(app.status, AppStatus::Failed);
        let err = app.error.as_deref().unwrap();
        assert!(
            err.contains("agent-ncprd1.prod.privsec.ch") && err.contains("evil.example.com"),
            "{err}"
        );
        assert_eq!(report.exit(), crate::Exit::GateFailed);
        assert!(!home.path().join("vault").exists(), "no file written");
    }
}
