//! Prints the write-up's post-hook and agent config for one app, in its layout under
//! `/home/<app>`.
//!
//! `cargo run -p hooks --example render -- ncprd1 > /dev/null`

use std::path::PathBuf;

fn main() -> Result<(), hooks::Error> {
    let app = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ncprd1".to_owned());
    let home = PathBuf::from(format!("/home/{app}"));
    let state = home.join(format!(".vault-agent-{app}"));
    let files = hooks::AgentFiles {
        ca_cert: home.join("vault/ca/ca.pem"),
        client_cert: home.join("vault/mtls/agent.crt"),
        client_key: home.join("vault/mtls/agent.key"),
        fullchain: home.join(format!("tls/{app}.fullchain.pem")),
        key: home.join(format!("tls/{app}.key")),
        rendered: state.join("leaf.rendered.pem"),
        post_hook: state.join("bin/vault-agent-post-leaf.sh"),
        pid_file: state.join("agent.pid"),
        token_sink: state.join("token"),
    };
    let hook = hooks::PostHookSpec::new(app.as_str(), &files.fullchain, &files.key)
        .reload_tls_label("tls=true")
        .proxy_reload("podman:proxyprod");
    println!("# {}", files.post_hook.display());
    println!("{}", hooks::render_post_hook(&hook)?);
    let agent = hooks::AgentConfigSpec {
        tls_server_name: Some("vault.prod.privsec.ch".to_owned()),
        ..hooks::AgentConfigSpec::new(
            &app,
            "https://127.0.0.1:22400",
            "pki-prod",
            &format!("{app}.int.privsec.ch"),
            files,
        )
    };
    println!("{}", hooks::render_agent_config(&agent)?);
    Ok(())
}
