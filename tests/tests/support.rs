//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use clap::Parser;
use rotate_cli::{Cli, Exit};
use rotate_tests::Lab;

/// A lab config whose app homes live under `dir`, so tests don't share files.
pub(crate) fn config_in(lab: &Lab, dir: &Path, apps: &[&str], extra: &str) -> PathBuf {
    let mut text = lab.rotate_config();
    let start = text.find("\n[[apps]]").unwrap();
    let end = text.len();
    let mut apps_toml = String::new();
    for app in apps {
        let home = dir.join("home").join(app);
        std::fs::create_dir_all(&home).unwrap();
        apps_toml.push_str(&format!(
            "\n[[apps]]\nname = \"{app}\"\nhome = \"{}\"\nuser = \"root\"\n",
            home.display()
        ));
    }
    text.replace_range(start..end, &apps_toml);
    // Each test has its own journal and lock.
    let state = dir.join("state");
    let text = text.replace(
        &lab.paths.dir.join("state").display().to_string(),
        &state.display().to_string(),
    );
    let text = text.replace("[agents]\n", &format!("[agents]\n{extra}"));
    let path = dir.join("rotate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rotate-agents-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) async fn rotate(config: &Path, args: &[&str]) -> (Exit, serde_json::Value) {
    let c = config.display().to_string();
    let mut argv = vec!["rotate", "--config", &c, "--output", "json"];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let exit = rotate_cli::run(Cli::parse_from(argv), &mut out).await;
    let text = String::from_utf8(out).unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (exit, v)
}

/// Insert `lines` right after the `[section]` header of the config at `path`.
pub(crate) fn add_to_section(path: &Path, section: &str, lines: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let header = format!("[{section}]\n");
    assert!(
        text.contains(&header),
        "no [{section}] in {}",
        path.display()
    );
    std::fs::write(
        path,
        text.replacen(&header, &format!("{header}{lines}\n"), 1),
    )
    .unwrap();
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
