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

/// The report of `app` in `step` (`agents`, `leaf`) of a run or plan report.
pub(crate) fn target<'v>(
    report: &'v serde_json::Value,
    step: &str,
    app: &str,
) -> &'v serde_json::Value {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == step)
        .flat_map(|s| s["targets"].as_array().into_iter().flatten())
        .find(|t| t["app"] == app)
        .unwrap_or_else(|| panic!("no target {app} in step {step}: {report:#}"))
}

/// The change kind (`create`, `update`, `unchanged`, `delete`, `kept`) reported for the
/// object ending in `object`.
pub(crate) fn change_kind(target: &serde_json::Value, object: &str) -> String {
    target["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["object"].as_str().is_some_and(|o| o.ends_with(object)))
        .and_then(|c| c["kind"].as_str())
        .unwrap_or_else(|| panic!("no change for {object}: {target:#}"))
        .to_owned()
}

/// Every error a report carries, joined: the top-level error, failed preflight checks and
/// failed targets.
pub(crate) fn errors(report: &serde_json::Value) -> String {
    let mut out: Vec<String> = report["error"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    for c in report["preflight"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["ok"] == false {
            out.push(format!("{}: {}", c["name"], c["detail"]));
        }
    }
    for s in report["steps"].as_array().into_iter().flatten() {
        for t in s["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["error"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    assert!(!out.is_empty(), "the report carries no error: {report:#}");
    out.join("\n")
}

/// `bao login -method=cert` with the agent files under `home`, as the agent would.
pub(crate) fn bao_login(lab: &Lab, home: &Path) -> serde_json::Value {
    let out = std::process::Command::new(&lab.bao)
        .env_clear()
        .env("VAULT_ADDR", &lab.addr)
        .env("VAULT_CACERT", home.join("vault/ca/ca.pem"))
        .env("VAULT_TLS_SERVER_NAME", rotate_tests::SERVER_NAME)
        .env("HOME", home)
        .args([
            "login",
            "-method=cert",
            "-format=json",
            "-no-store",
            &format!(
                "-client-cert={}",
                home.join("vault/mtls/agent.crt").display()
            ),
            &format!(
                "-client-key={}",
                home.join("vault/mtls/agent.key").display()
            ),
        ])
        .output()
        .expect("run bao");
    assert!(
        out.status.success(),
        "bao login -method=cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A fresh test directory `tag` with a config for `apps` (see [`config_in`]) on which
/// step 3 has run successfully: the common start of the step-4 and fault tests.
pub(crate) async fn after_step_3(
    lab: &Lab,
    tag: &str,
    apps: &[&str],
    extra: &str,
) -> (PathBuf, PathBuf) {
    let dir = tempdir(tag);
    let cfg = config_in(lab, &dir, apps, extra);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "step 3 for {apps:?}: {v:#}");
    (dir, cfg)
}

/// A real nginx (master + one worker) on a loopback port, stopped on drop.
pub(crate) struct Nginx {
    child: std::process::Child,
    /// Its port.
    pub(crate) port: u16,
    /// Its pid file (what `signal:<pid file>:HUP` reloads).
    pub(crate) pid_file: PathBuf,
    /// Its error log.
    pub(crate) error_log: PathBuf,
}

impl Nginx {
    /// Start nginx under `dir/nginx` with the `server { ... }` block `server(port)`.
    pub(crate) fn start(dir: &Path, server: impl Fn(u16) -> String) -> Nginx {
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let port = free_port();
        let pid_file = root.join("nginx.pid");
        let error_log = root.join("error.log");
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {pid};\nerror_log {log} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root}/tmp/body;\n  proxy_temp_path {root}/tmp/proxy;\n\
             fastcgi_temp_path {root}/tmp/fastcgi;\n  uwsgi_temp_path {root}/tmp/uwsgi;\n  scgi_temp_path {root}/tmp/scgi;\n\
             {server}\n}}\n",
            pid = pid_file.display(),
            log = error_log.display(),
            root = root.display(),
            server = server(port),
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new(nginx_binary());
        cmd.arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = rotate_tests::spawn_tied_with(&mut cmd, libc::SIGTERM).expect("start nginx");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !pid_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start; log:\n{}",
                std::fs::read_to_string(&error_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            pid_file,
            error_log,
        }
    }
}

impl Drop for Nginx {
    /// SIGTERM (fast shutdown: the master stops its workers), then SIGKILL if needed.
    fn drop(&mut self) {
        use std::time::{Duration, Instant};
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> &'static str {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("nginx is not installed: run `bash scripts/setup.sh` (apt-get install nginx)");
}

/// `bao status` as a real client with exactly `env` (plus `HOME`): its exit code and
/// output.
pub(crate) fn bao_status_env(lab: &Lab, env: &[(&str, &std::ffi::OsStr)]) -> (i32, String) {
    let out = std::process::Command::new(&lab.bao)
        .env_clear()
        .envs(env.iter().copied())
        .env("HOME", &lab.paths.dir)
        .args(["status", "-format=json"])
        .output()
        .expect("run bao status");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Make sure system user `name` exists (no home, no login shell); its uid.
pub(crate) fn system_user(name: &str) -> u32 {
    if let Some(u) = nix::unistd::User::from_name(name).unwrap() {
        return u.uid.as_raw();
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .expect("useradd (Debian package passwd) is needed: apt-get install passwd");
    assert!(
        out.status.success(),
        "useradd {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}
