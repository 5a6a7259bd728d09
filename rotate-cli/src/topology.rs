//! The topology: every app's names, file layout and policy texts, derived from the config
//! in one place. The only definition of where an app's files are: the steps, preflight,
//! verify, repair and the hooks' specs all take their paths from here (relative to the
//! app's home in [`rel`], absolute through [`home_path`]).

use std::path::{Path, PathBuf};

use crate::config::{AppConfig, Config};

/// The names of one app's objects.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `agent-mtls-<app>`: the PKI role of the agent's login certificate.
    pub agent_role: String,
    /// `agent-<app>.<agents.domain>`.
    pub agent_cn: String,
    /// `agent-<app>`: the cert auth mapping.
    pub mapping: String,
    /// `pki-issue-<app>`.
    pub issue_policy: String,
    /// `nginx-<app>`: the PKI role of the app's leaf.
    pub leaf_role: String,
    /// `<app>.<leaf.cn_domain>`.
    pub leaf_cn: String,
    /// `secret-agent-<app>-policy`.
    pub kv_policy: String,
}

impl Names {
    pub(crate) fn new(cfg: &Config, app: &AppConfig) -> Names {
        Names {
            agent_role: format!("agent-mtls-{}", app.name),
            agent_cn: format!("agent-{}.{}", app.name, cfg.agents.domain),
            mapping: format!("agent-{}", app.name),
            issue_policy: format!("pki-issue-{}", app.name),
            leaf_role: format!("nginx-{}", app.name),
            leaf_cn: format!("{}.{}", app.name, cfg.leaf.cn_domain),
            kv_policy: kv_policy_name(&app.name),
        }
    }
}

/// The name of an app's KV policy: `secret-agent-<app>-policy`.
pub fn kv_policy_name(app: &str) -> String {
    format!("secret-agent-{app}-policy")
}

/// Paths inside an app's home (relative, for the safe writer).
pub(crate) mod rel {
    use super::*;

    /// `vault/mtls/agent.key`.
    pub(crate) fn agent_key() -> PathBuf {
        PathBuf::from("vault/mtls/agent.key")
    }
    /// `vault/mtls/agent.crt`.
    pub(crate) fn agent_cert() -> PathBuf {
        PathBuf::from("vault/mtls/agent.crt")
    }
    /// `vault/ca/ca.pem`.
    pub(crate) fn ca_file() -> PathBuf {
        PathBuf::from("vault/ca/ca.pem")
    }
    /// `.vault-agent-<app>`.
    pub(crate) fn agent_dir(app: &AppConfig) -> PathBuf {
        PathBuf::from(format!(".vault-agent-{}", app.name))
    }
    /// `.vault-agent-<app>/agent.hcl`.
    pub(crate) fn agent_config(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("agent.hcl")
    }
    /// `.vault-agent-<app>/bin/vault-agent-post-leaf.sh`.
    pub(crate) fn post_hook(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("bin/vault-agent-post-leaf.sh")
    }
    /// `.vault-agent-<app>/leaf.rendered.pem`: the agent's one render of key + fullchain.
    pub(crate) fn leaf_render(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("leaf.rendered.pem")
    }
    /// Where the post-hook reports its outcome (see `hooks::parse_status`).
    pub(crate) fn post_hook_status(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("post-hook.status")
    }
    /// `tls/<app>.fullchain.pem`: the leaf the agent renders.
    pub(crate) fn fullchain(app: &AppConfig) -> PathBuf {
        PathBuf::from(format!("tls/{}.fullchain.pem", app.name))
    }
    /// `tls/<app>.key`: the leaf's key.
    pub(crate) fn leaf_key(app: &AppConfig) -> PathBuf {
        PathBuf::from(format!("tls/{}.key", app.name))
    }
    /// `.vault-agent-<app>/token`: the agent's token sink.
    pub(crate) fn sink(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("token")
    }
    /// `.vault-agent-<app>/agent.pid`.
    pub(crate) fn agent_pid(app: &AppConfig) -> PathBuf {
        agent_dir(app).join("agent.pid")
    }
    /// The directories the leaf step needs and their modes: the agent's (private), its
    /// `bin/` (the hook), its `render/`, and `tls/` (group-readable, for the web server).
    pub(crate) fn leaf_dirs(app: &AppConfig) -> [(PathBuf, u32); 4] {
        let agent_dir = agent_dir(app);
        [
            (agent_dir.clone(), 0o700),
            (parent(&post_hook(app)), 0o755),
            (agent_dir.join("render"), 0o700),
            (parent(&fullchain(app)), 0o750),
        ]
    }
    /// A relative path's parent (`""` for a bare name).
    pub(crate) fn parent(p: &Path) -> PathBuf {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// `rel` inside the app's home, as an absolute path.
pub(crate) fn home_path(app: &AppConfig, rel: impl AsRef<Path>) -> PathBuf {
    app.home.join(rel)
}

/// Where the app's agent finds and puts its files (for its config, `hooks::AgentFiles`).
pub(crate) fn agent_files(app: &AppConfig) -> hooks::AgentFiles {
    let p = |r: PathBuf| home_path(app, r);
    hooks::AgentFiles {
        ca_cert: p(rel::ca_file()),
        client_cert: p(rel::agent_cert()),
        client_key: p(rel::agent_key()),
        fullchain: p(rel::fullchain(app)),
        key: p(rel::leaf_key(app)),
        rendered: p(rel::leaf_render(app)),
        post_hook: p(rel::post_hook(app)),
        pid_file: p(rel::agent_pid(app)),
        token_sink: p(rel::sink(app)),
    }
}

/// `pki-issue-<app>`: what the app's agent may do with its token.
pub(crate) fn issue_policy_text(cfg: &Config, app: &AppConfig) -> String {
    format!(
        "# Managed by rotate: the {app} agent issues its leaf certificates.\n\
         path \"{mount}/issue/nginx-{app}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n\
         path \"{mount}/sign/nginx-{app}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n",
        app = app.name,
        mount = cfg.pki.mount
    )
}

/// The marker policy (created if missing, never changed).
pub(crate) fn marker_policy_text() -> String {
    "# Marker: this token was obtained through cert auth (created by rotate if missing).\n\
     path \"auth/token/lookup-self\" {\n  capabilities = [\"read\"]\n}\n"
        .to_owned()
}

/// `secret-agent-<app>-policy`: read the app's KV v2 secret.
pub(crate) fn kv_policy_text(mount: &str, app: &str) -> String {
    format!(
        "# Managed by rotate: the {app} agent reads its secret.\n\
         path \"{mount}/data/{app}\" {{\n  capabilities = [\"read\"]\n}}\n\
         path \"{mount}/metadata/{app}\" {{\n  capabilities = [\"read\"]\n}}\n"
    )
}
