//! Prints the write-up's post-hook and agent config for one app.
//!
//! `cargo run -p hooks --example render -- ncprd1 > /dev/null`

fn main() -> Result<(), hooks::Error> {
    let app = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ncprd1".to_owned());
    let hook = hooks::PostHookSpec::new(app.as_str())
        .reload_tls_label("tls=true")
        .proxy_reload("podman:proxyprod");
    println!("# {}", hooks::default_post_hook_path(&app).display());
    println!("{}", hooks::render_post_hook(&hook)?);
    let agent = hooks::AgentConfigSpec {
        tls_server_name: Some("vault.prod.privsec.ch".to_owned()),
        ..hooks::AgentConfigSpec::new(
            &app,
            "https://127.0.0.1:22400",
            "pki-prod",
            &format!("{app}.int.privsec.ch"),
        )
    };
    println!("{}", hooks::render_agent_config(&agent)?);
    Ok(())
}
