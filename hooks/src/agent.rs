//! The OpenBao/Vault Agent configuration of one app (HCL): cert auto-auth,
//! an mTLS `vault` stanza, and the leaf template that runs the post-hook.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything the agent config of one app needs.
///
/// [`AgentConfigSpec::new`] takes the per-app layout as [`AgentFiles`]; every
/// field is public, so override what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfigSpec {
    /// `https://127.0.0.1:22400`.
    pub vault_addr: String,
    /// SNI and verified name of the listener (`vault.prod.privsec.ch`).
    pub tls_server_name: Option<String>,
    /// CA bundle that verifies the listener (`/home/<app>/vault/ca/ca.pem`).
    pub ca_cert: PathBuf,
    /// The agent's login certificate (`/home/<app>/vault/mtls/agent.crt`).
    pub client_cert: PathBuf,
    /// Its key (`/home/<app>/vault/mtls/agent.key`).
    pub client_key: PathBuf,
    /// Mount of the cert auth method (`auth/cert`).
    pub mount: String,
    /// The cert auth role (`agent-<app>`, i.e. `auth/cert/certs/agent-<app>`).
    pub cert_role_name: String,
    /// The PKI mount (`pki-prod`).
    pub pki_mount: String,
    /// The PKI role issuing the leaf (`nginx-<app>`).
    pub leaf_role: String,
    /// The leaf's common name (`<app>.int.privsec.ch`).
    pub leaf_cn: String,
    /// The leaf's TTL, in Vault duration syntax (`24h`).
    pub leaf_ttl: String,
    /// Where the leaf plus chain goes (`/home/<app>/tls/<app>.fullchain.pem`, 0644).
    pub fullchain_path: PathBuf,
    /// Where the leaf's key goes (`/home/<app>/tls/<app>.key`, 0600).
    pub key_path: PathBuf,
    /// The agent's one render of key + fullchain, which the post-hook installs as a
    /// matched pair (`/home/<app>/.vault-agent-<app>/leaf.rendered.pem`, 0600).
    pub rendered_path: PathBuf,
    /// The post-hook run after each render.
    pub post_hook_path: PathBuf,
    /// The agent's pid file.
    pub pid_file: PathBuf,
    /// The token sink file (written 0600).
    pub token_sink: PathBuf,
}

/// Where one app's agent finds and puts its files: the caller's layout (this crate
/// assumes none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFiles {
    /// CA bundle that verifies the listener.
    pub ca_cert: PathBuf,
    /// The agent's login certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Where the leaf plus chain goes (0644).
    pub fullchain: PathBuf,
    /// Where the leaf's key goes (0600).
    pub key: PathBuf,
    /// The agent's one render of key + fullchain (0600), which the post-hook installs.
    pub rendered: PathBuf,
    /// The post-hook run after each render.
    pub post_hook: PathBuf,
    /// The agent's pid file.
    pub pid_file: PathBuf,
    /// The token sink file (written 0600).
    pub token_sink: PathBuf,
}

impl AgentConfigSpec {
    /// The agent of `app` with its files at `files`: cert role `agent-<app>`, leaf role
    /// `nginx-<app>`, cert auth at `auth/cert`, TTL `24h`.
    pub fn new(
        app: &str,
        vault_addr: &str,
        pki_mount: &str,
        leaf_cn: &str,
        files: AgentFiles,
    ) -> Self {
        Self {
            vault_addr: vault_addr.to_owned(),
            tls_server_name: None,
            ca_cert: files.ca_cert,
            client_cert: files.client_cert,
            client_key: files.client_key,
            mount: "auth/cert".to_owned(),
            cert_role_name: format!("agent-{app}"),
            pki_mount: pki_mount.to_owned(),
            leaf_role: format!("nginx-{app}"),
            leaf_cn: leaf_cn.to_owned(),
            leaf_ttl: "24h".to_owned(),
            fullchain_path: files.fullchain,
            key_path: files.key,
            rendered_path: files.rendered,
            post_hook_path: files.post_hook,
            pid_file: files.pid_file,
            token_sink: files.token_sink,
        }
    }
}

/// Quotes `s` as an HCL string: `"` and `\` escaped, newlines and tabs as
/// `\n` and `\t`.
///
/// Refuses other control characters, and `${` / `%{`, which HCL 1 (the
/// agent's parser) and HCL 2 read differently.
///
/// ```
/// assert_eq!(hooks::hcl_string(r#"a "b" \c"#)?, r#""a \"b\" \\c""#);
/// assert!(hooks::hcl_string("${HOME}").is_err());
/// # Ok::<(), hooks::Error>(())
/// ```
pub fn hcl_string(s: &str) -> Result<String> {
    let refuse = |reason: &str| Error::InvalidSpec {
        field: "HCL string",
        value: s.escape_debug().to_string(),
        reason: reason.to_owned(),
    };
    if s.contains("${") || s.contains("%{") {
        return Err(refuse("contains `${` or `%{` (template interpolation)"));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => return Err(refuse("contains a control character")),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A value placed inside a Go-template string literal (`"..."`): refuse
/// anything that could end the literal or the action.
fn template_value(field: &'static str, value: &str) -> Result<String> {
    let bad = value.is_empty()
        || value.contains(['"', '\\', '`'])
        || value.contains("{{")
        || value.contains("}}")
        || value.chars().any(char::is_control);
    if bad {
        return Err(Error::InvalidSpec {
            field,
            value: value.escape_debug().to_string(),
            reason:
                "empty, or contains a quote, backslash, backtick, `{{`, `}}` or a control character"
                    .to_owned(),
        });
    }
    Ok(value.to_owned())
}

fn path_value(field: &'static str, path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| Error::InvalidSpec {
        field,
        value: path.display().to_string(),
        reason: "not UTF-8".to_owned(),
    })?;
    if !path.is_absolute() {
        return Err(Error::InvalidSpec {
            field,
            value: text.to_owned(),
            reason: "must be absolute".to_owned(),
        });
    }
    template_value(field, text)
}

/// The leaf template: ONE `secret` call, so the key and the chain always
/// come from the same issuance, rendered into ONE file.
///
/// Two templates each calling `secret "<pki>/issue/<role>"` would issue two
/// certificates (unless consul-template happens to deduplicate the two
/// calls), leaving a key that does not match the fullchain; and a second file
/// written with `writeToFile` is written in place, so a full disk leaves it
/// half written next to the old key. So the template's one destination,
/// [`AgentConfigSpec::rendered_path`], holds key and fullchain (written atomically by the agent
/// with `perms = "0600"`); the post-hook stages the key (0600 from creation)
/// and the fullchain from it completely, checks they match, and only then
/// renames them into place: a full disk fails before the first rename, and the
/// files in use never stay mismatched.
pub fn render_leaf_template(spec: &AgentConfigSpec) -> Result<String> {
    let issue_path = format!(
        "{}/issue/{}",
        template_value("pki_mount", spec.pki_mount.trim_matches('/'))?,
        template_value("leaf_role", &spec.leaf_role)?
    );
    let cn = template_value("leaf_cn", &spec.leaf_cn)?;
    let ttl = template_value("leaf_ttl", &spec.leaf_ttl)?;
    path_value("fullchain_path", &spec.fullchain_path)?;
    Ok(format!(
        concat!(
            "{{{{- with secret \"{issue}\" \"common_name={cn}\" \"ttl={ttl}\" -}}}}\n",
            "{{{{ .Data.private_key }}}}\n",
            "{{{{ .Data.certificate }}}}\n",
            "{{{{- range .Data.ca_chain }}}}\n{{{{ . }}}}{{{{- end }}}}\n",
            "{{{{ end -}}}}\n",
        ),
        issue = issue_path,
        cn = cn,
        ttl = ttl,
    ))
}

/// Renders the agent's HCL configuration for one app.
///
/// ```
/// let home = std::path::Path::new("/home/ncprd1");
/// let files = hooks::AgentFiles {
///     ca_cert: home.join("vault/ca/ca.pem"),
///     client_cert: home.join("vault/mtls/agent.crt"),
///     client_key: home.join("vault/mtls/agent.key"),
///     fullchain: home.join("tls/ncprd1.fullchain.pem"),
///     key: home.join("tls/ncprd1.key"),
///     rendered: home.join(".vault-agent-ncprd1/leaf.rendered.pem"),
///     post_hook: home.join(".vault-agent-ncprd1/bin/vault-agent-post-leaf.sh"),
///     pid_file: home.join(".vault-agent-ncprd1/agent.pid"),
///     token_sink: home.join(".vault-agent-ncprd1/token"),
/// };
/// let spec = hooks::AgentConfigSpec::new("ncprd1", "https://127.0.0.1:22400", "pki-prod", "ncprd1.int.privsec.ch", files);
/// let hcl = hooks::render_agent_config(&spec)?;
/// assert!(hcl.contains(r#"method "cert""#));
/// # Ok::<(), hooks::Error>(())
/// ```
pub fn render_agent_config(spec: &AgentConfigSpec) -> Result<String> {
    let q = hcl_string;
    let p = |field: &'static str, path: &Path| -> Result<String> {
        path_value(field, path)?;
        hcl_string(&path.to_string_lossy())
    };
    if !(spec.vault_addr.starts_with("https://") || spec.vault_addr.starts_with("http://")) {
        return Err(Error::InvalidSpec {
            field: "vault_addr",
            value: spec.vault_addr.clone(),
            reason: "expected an http(s):// URL".to_owned(),
        });
    }
    let mount = template_value("mount", spec.mount.trim_matches('/'))?;
    let role = template_value("cert_role_name", &spec.cert_role_name)?;
    let sni = match &spec.tls_server_name {
        Some(name) => format!(
            "  tls_server_name = {}\n",
            q(&template_value("tls_server_name", name)?)?
        ),
        None => String::new(),
    };
    let template = render_leaf_template(spec)?;

    let mut hcl = String::new();
    hcl.push_str(
        "# OpenBao/Vault Agent configuration, rendered by the `hooks` crate: do not edit.\n",
    );
    hcl.push_str(&format!(
        "pid_file = {}\n\n",
        p("pid_file", &spec.pid_file)?
    ));
    hcl.push_str("# The listener requires client certificates, so the agent's own\n");
    hcl.push_str("# connections present the login certificate too.\n");
    hcl.push_str("vault {\n");
    hcl.push_str(&format!("  address         = {}\n", q(&spec.vault_addr)?));
    hcl.push_str(&format!(
        "  ca_cert         = {}\n",
        p("ca_cert", &spec.ca_cert)?
    ));
    hcl.push_str(&format!(
        "  client_cert     = {}\n",
        p("client_cert", &spec.client_cert)?
    ));
    hcl.push_str(&format!(
        "  client_key      = {}\n",
        p("client_key", &spec.client_key)?
    ));
    hcl.push_str(&sni);
    hcl.push_str("}\n\n");
    hcl.push_str("auto_auth {\n");
    hcl.push_str("  method \"cert\" {\n");
    hcl.push_str(&format!("    mount_path = {}\n", q(&mount)?));
    hcl.push_str("    config = {\n");
    hcl.push_str(&format!("      name        = {}\n", q(&role)?));
    hcl.push_str(&format!(
        "      ca_cert     = {}\n",
        p("ca_cert", &spec.ca_cert)?
    ));
    hcl.push_str(&format!(
        "      client_cert = {}\n",
        p("client_cert", &spec.client_cert)?
    ));
    hcl.push_str(&format!(
        "      client_key  = {}\n",
        p("client_key", &spec.client_key)?
    ));
    hcl.push_str("      # Re-read the key pair from disk on every login attempt.\n");
    hcl.push_str("      reload      = true\n");
    hcl.push_str("    }\n");
    hcl.push_str("  }\n\n");
    hcl.push_str("  sink \"file\" {\n");
    hcl.push_str("    config = {\n");
    hcl.push_str(&format!(
        "      path = {}\n",
        p("token_sink", &spec.token_sink)?
    ));
    hcl.push_str("      mode = 384 # 0600\n");
    hcl.push_str("    }\n");
    hcl.push_str("  }\n");
    hcl.push_str("}\n\n");
    hcl.push_str("template_config {\n");
    hcl.push_str(
        "  # Fail (and let systemd restart us) rather than serve a stale leaf silently.\n",
    );
    hcl.push_str("  exit_on_retry_failure = true\n");
    hcl.push_str("}\n\n");
    hcl.push_str("# One issuance, one file (0600, written atomically): key and fullchain.\n");
    hcl.push_str("# The post-hook stages both, checks they match, renames, then reloads.\n");
    hcl.push_str("template {\n");
    p("key_path", &spec.key_path)?;
    hcl.push_str(&format!(
        "  destination          = {}\n",
        p("rendered_path", &spec.rendered_path)?
    ));
    hcl.push_str("  perms                = \"0600\"\n");
    hcl.push_str("  error_on_missing_key = true\n");
    hcl.push_str(&format!("  contents             = {}\n", q(&template)?));
    hcl.push_str(&format!(
        "  command              = {}\n",
        p("post_hook_path", &spec.post_hook_path)?
    ));
    hcl.push_str("}\n");
    Ok(hcl)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write-up's layout under `/home/<app>`.
    fn seed_files(app: &str) -> AgentFiles {
        let home = PathBuf::from(format!("/home/{app}"));
        let state = home.join(format!(".vault-agent-{app}"));
        AgentFiles {
            ca_cert: home.join("vault/ca/ca.pem"),
            client_cert: home.join("vault/mtls/agent.crt"),
            client_key: home.join("vault/mtls/agent.key"),
            fullchain: home.join(format!("tls/{app}.fullchain.pem")),
            key: home.join(format!("tls/{app}.key")),
            rendered: state.join("leaf.rendered.pem"),
            post_hook: state.join("bin/vault-agent-post-leaf.sh"),
            pid_file: state.join("agent.pid"),
            token_sink: state.join("token"),
        }
    }

    fn spec() -> AgentConfigSpec {
        AgentConfigSpec {
            tls_server_name: Some("vault.prod.privsec.ch".into()),
            ..AgentConfigSpec::new(
                "ncprd1",
                "https://127.0.0.1:22400",
                "pki-prod",
                "ncprd1.int.privsec.ch",
                seed_files("ncprd1"),
            )
        }
    }

    #[test]
    fn renders_every_field() {
        let hcl = render_agent_config(&spec()).expect("renders");
        for needle in [
            r#"pid_file = "/home/ncprd1/.vault-agent-ncprd1/agent.pid""#,
            r#"address         = "https://127.0.0.1:22400""#,
            r#"ca_cert         = "/home/ncprd1/vault/ca/ca.pem""#,
            r#"client_cert     = "/home/ncprd1/vault/mtls/agent.crt""#,
            r#"client_key      = "/home/ncprd1/vault/mtls/agent.key""#,
            r#"tls_server_name = "vault.prod.privsec.ch""#,
            r#"method "cert" {"#,
            r#"mount_path = "auth/cert""#,
            r#"name        = "agent-ncprd1""#,
            "reload      = true",
            r#"sink "file" {"#,
            r#"path = "/home/ncprd1/.vault-agent-ncprd1/token""#,
            r#"destination          = "/home/ncprd1/.vault-agent-ncprd1/leaf.rendered.pem""#,
            r#"perms                = "0600""#,
            r#"command              = "/home/ncprd1/.vault-agent-ncprd1/bin/vault-agent-post-leaf.sh""#,
            r#"with secret \"pki-prod/issue/nginx-ncprd1\" \"common_name=ncprd1.int.privsec.ch\" \"ttl=24h\""#,
            r#"{{ .Data.private_key }}"#,
        ] {
            assert!(hcl.contains(needle), "missing {needle} in:\n{hcl}");
        }
        // Exactly one issuance.
        assert_eq!(hcl.matches("with secret").count(), 1);
        assert_eq!(hcl.matches("template {").count(), 1);
        // Balanced braces outside strings: a cheap well-formedness check.
        let mut depth = 0i32;
        let mut in_string = false;
        let mut escaped = false;
        for c in hcl.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => in_string = !in_string,
                (false, _, '{') => depth += 1,
                (false, _, '}') => {
                    depth -= 1;
                    assert!(depth >= 0);
                }
                _ => {}
            }
        }
        assert_eq!((depth, in_string), (0, false));
    }

    #[test]
    fn template_round_trips_through_hcl_escaping() {
        let template = render_leaf_template(&spec()).expect("renders");
        assert!(template.starts_with("{{- with secret \"pki-prod/issue/nginx-ncprd1\""));
        assert!(template.contains("{{ .Data.private_key }}"));
        assert!(template.contains("{{- range .Data.ca_chain }}"));
        assert!(
            !template.contains("writeToFile"),
            "no second, in-place write"
        );
        let quoted = hcl_string(&template).expect("quotes");
        assert!(!quoted[1..quoted.len() - 1].contains('\n'));
        // Undo the escaping the way an HCL parser does.
        let mut back = String::new();
        let mut chars = quoted[1..quoted.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => back.push('\n'),
                    Some('t') => back.push('\t'),
                    Some(other) => back.push(other),
                    None => panic!("dangling backslash"),
                }
            } else {
                back.push(c);
            }
        }
        assert_eq!(back, template);
    }

    #[test]
    fn without_sni_there_is_no_tls_server_name() {
        let hcl = render_agent_config(&AgentConfigSpec {
            tls_server_name: None,
            ..spec()
        })
        .expect("renders");
        assert!(!hcl.contains("tls_server_name"));
    }

    #[test]
    fn refuses_values_that_would_break_out() {
        let cases: Vec<(&str, AgentConfigSpec)> = vec![
            (
                "leaf_cn",
                AgentConfigSpec {
                    leaf_cn: "a\" \"ttl=1s".into(),
                    ..spec()
                },
            ),
            (
                "leaf_role",
                AgentConfigSpec {
                    leaf_role: "x}}{{".into(),
                    ..spec()
                },
            ),
            (
                "leaf_ttl",
                AgentConfigSpec {
                    leaf_ttl: String::new(),
                    ..spec()
                },
            ),
            (
                "key_path",
                AgentConfigSpec {
                    key_path: "relative.key".into(),
                    ..spec()
                },
            ),
            (
                "fullchain_path",
                AgentConfigSpec {
                    fullchain_path: "/tmp/a\nb".into(),
                    ..spec()
                },
            ),
            (
                "vault_addr",
                AgentConfigSpec {
                    vault_addr: "127.0.0.1:22400".into(),
                    ..spec()
                },
            ),
            (
                "tls_server_name",
                AgentConfigSpec {
                    tls_server_name: Some("a\"b".into()),
                    ..spec()
                },
            ),
        ];
        for (field, bad) in cases {
            match render_agent_config(&bad) {
                Err(Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidSpec, got {other:?}"),
            }
        }
    }

    #[test]
    fn hcl_string_escapes() {
        assert_eq!(hcl_string("plain").expect("ok"), "\"plain\"");
        assert_eq!(
            hcl_string("a\"b\\c\nd\te").expect("ok"),
            r#""a\"b\\c\nd\te""#
        );
        assert!(hcl_string("x${y}").is_err());
        assert!(hcl_string("x%{y}").is_err());
        assert!(hcl_string("bell\u{7}").is_err());
        assert_eq!(
            hcl_string("$HOME {{ x }}").expect("ok"),
            "\"$HOME {{ x }}\""
        );
    }
}
