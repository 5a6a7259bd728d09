//! Reloads against the real podman (Debian's, with runc), no registry and no network: a
//! busybox image imported from a local tarball into storage isolated under
//! `target/podman-tests/<pid>`, containers whose shell traps SIGHUP and logs it to a
//! bind-mounted host file, signalled by `hooks::reload` and by the rendered post-hook.
//!
//! `hooks` runs `podman` through `ProgramOverrides` (the post-hook honours `PODMAN`),
//! pointed at a wrapper that execs the real binary with the isolated
//! `--root`/`--runroot` and `CONTAINERS_CONF`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hooks::{PostHookSpec, ProcessRunner, ProgramOverrides, Reloader};
use rotate_tests::{LabCa, write_file};

const IMAGE: &str = "localhost/busybox-rotate:test";
const SETUP_HINT: &str =
    "install them with `bash scripts/setup.sh` (or `apt-get install podman runc busybox-static`)";

/// runc, never crun (podman's first choice when installed; it fails in this sandbox). No
/// default ulimits: podman's default nofile limit cannot be applied here (runc: "error
/// setting rlimit type 7: operation not permitted"). systemd is not PID 1: cgroupfs and a
/// file events log (podman 4.3 picks those itself then; set anyway, explicitly).
const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

/// Traps HUP first, then says it is ready; `sleep & wait` lets the trap run at once.
const CONTAINER_SCRIPT: &str = r#"trap 'echo HUP >> /out/hup' HUP; echo ready > /out/ready; while :; do sleep 0.2 & wait; done"#;

/// Both tests use the label `tls=true` in the one storage of this binary: one at a time,
/// so a label lookup sees only its own test's containers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The isolated podman of this test binary.
struct PodmanEnv {
    /// `target/podman-tests/<pid>`.
    dir: PathBuf,
    /// `bin/podman`.
    wrapper: PathBuf,
}

fn podman_env() -> &'static PodmanEnv {
    static ENV: OnceLock<Result<PodmanEnv, String>> = OnceLock::new();
    match ENV.get_or_init(setup) {
        Ok(env) => env,
        Err(e) => panic!("podman test setup failed: {e}"),
    }
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `program args`, returning stdout, or an error with the status and both outputs.
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{} {}` failed ({}):\n{}{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Removes the storage of earlier test processes that are gone (their containers first).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let wrapper = entry.path().join("bin/podman");
        if wrapper.exists() {
            let _ = run(&wrapper, &["rm", "--all", "--force", "--time", "0"]);
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn setup() -> Result<PodmanEnv, String> {
    let podman = find_program("podman", &["/usr/bin"]);
    let runc = find_program("runc", &["/usr/sbin", "/sbin", "/usr/bin"]);
    let busybox = find_program("busybox", &["/bin", "/usr/bin"]);
    let (Some(podman), Some(_), Some(busybox)) = (&podman, &runc, &busybox) else {
        let missing: Vec<&str> = [("podman", &podman), ("runc", &runc), ("busybox", &busybox)]
            .into_iter()
            .filter(|(_, found)| found.is_none())
            .map(|(name, _)| name)
            .collect();
        return Err(format!(
            "{} not found (PATH, /usr/bin, /usr/sbin): {SETUP_HINT}",
            missing.join(", ")
        ));
    };
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");

    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/podman-tests");
    std::fs::create_dir_all(&base).map_err(|e| io("create target/podman-tests", e))?;
    let base = base
        .canonicalize()
        .map_err(|e| io("canonicalize target/podman-tests", e))?;
    remove_stale(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    let rootfs = dir.join("rootfs");
    for d in [&bin, &rootfs.join("bin"), &dir.join("out")] {
        std::fs::create_dir_all(d).map_err(|e| io(&format!("create {}", d.display()), e))?;
    }

    let conf = dir.join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).map_err(|e| io("write containers.conf", e))?;
    let wrapper = bin.join("podman");
    let script = format!(
        "#!/bin/sh\n# podman on the isolated storage of the podman tests\n\
         CONTAINERS_CONF={conf}\nexport CONTAINERS_CONF\n\
         exec {podman} --root {root} --runroot {runroot} --storage-driver vfs \"$@\"\n",
        conf = sh_quote(&conf.to_string_lossy()),
        podman = sh_quote(&podman.to_string_lossy()),
        root = sh_quote(&dir.join("storage").to_string_lossy()),
        runroot = sh_quote(&dir.join("run").to_string_lossy()),
    );
    write_file(&wrapper, script.as_bytes(), 0o755).map_err(|e| format!("{e:#}"))?;

    // A rootfs of the static busybox and its applets; `podman import` needs a tarball.
    std::fs::copy(busybox, rootfs.join("bin/busybox")).map_err(|e| io("copy busybox", e))?;
    for applet in ["sh", "sleep", "echo", "cat", "kill", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(|e| io("symlink applet", e))?;
    }
    let tarball = dir.join("rootfs.tar");
    let (tarball_s, rootfs_s) = (tarball.to_string_lossy(), rootfs.to_string_lossy());
    run(Path::new("tar"), &["-C", &rootfs_s, "-cf", &tarball_s, "."])?;
    run(&wrapper, &["import", "--quiet", &tarball_s, IMAGE])
        .map_err(|e| format!("{e}\n(podman, runc and busybox-static are needed: {SETUP_HINT})"))?;
    Ok(PodmanEnv { dir, wrapper })
}

/// The production runner with `podman` pointed at the isolated wrapper, exactly as a
/// site's `[commands] podman = ...` does.
fn isolated_runner(env: &PodmanEnv) -> ProgramOverrides<ProcessRunner> {
    ProgramOverrides::new(
        ProcessRunner::new(),
        [("podman".to_owned(), env.wrapper.display().to_string())].into(),
    )
}

/// A running container and the host directory mounted at its `/out`.
struct Container {
    name: String,
    out: PathBuf,
}

impl Container {
    fn hups(&self) -> usize {
        std::fs::read_to_string(self.out.join("hup")).map_or(0, |s| s.lines().count())
    }
}

/// The containers of one test, removed (`podman rm -f`) when it ends, even by a panic.
struct Containers {
    env: &'static PodmanEnv,
    names: Vec<String>,
}

impl Containers {
    fn new(env: &'static PodmanEnv) -> Self {
        Self {
            env,
            names: Vec::new(),
        }
    }

    /// Starts `rotate-<tag>-<pid>` with `label`, running [`CONTAINER_SCRIPT`].
    fn start(&mut self, tag: &str, label: &str) -> Container {
        let name = format!("rotate-{tag}-{}", std::process::id());
        let out = self.env.dir.join("out").join(&name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        self.names.push(name.clone());
        let volume = format!("{}:/out", out.display());
        let args = [
            "run",
            "--detach",
            "--name",
            &name,
            "--label",
            label,
            "--network",
            "none",
            "--volume",
            &volume,
            IMAGE,
            "sh",
            "-c",
            CONTAINER_SCRIPT,
        ];
        if let Err(e) = run(&self.env.wrapper, &args) {
            panic!("cannot start container {name} (runc in this sandbox?): {e}");
        }
        Container { name, out }
    }

    /// Waits until every container wrote `ready` (so its trap is set).
    fn wait_ready(&self, containers: &[&Container]) {
        for c in containers {
            let ready = || c.out.join("ready").exists();
            if !wait_until(Duration::from_secs(15), ready) {
                let logs = run(&self.env.wrapper, &["logs", &c.name]).unwrap_or_else(|e| e);
                let ps = run(&self.env.wrapper, &["ps", "--all"]).unwrap_or_else(|e| e);
                panic!("container {} never became ready:\n{logs}\n{ps}", c.name);
            }
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = vec!["rm", "--force", "--time", "0"];
        args.extend(self.names.iter().map(String::as_str));
        if let Err(e) = run(&self.env.wrapper, &args) {
            eprintln!("podman cleanup: {e}");
        }
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until each of `signalled` logged a HUP, gives stray signals time to land, then
/// checks the exact counts: one HUP each for `signalled`, none for `spared`.
fn assert_hups(signalled: &[&Container], spared: &[&Container]) {
    let all_logged = wait_until(Duration::from_secs(10), || {
        signalled.iter().all(|c| c.hups() >= 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    let counts = |cs: &[&Container]| -> Vec<(String, usize)> {
        cs.iter().map(|c| (c.name.clone(), c.hups())).collect()
    };
    assert!(
        all_logged,
        "not every container got SIGHUP: {:?}",
        counts(signalled)
    );
    for (name, n) in counts(signalled) {
        assert_eq!(n, 1, "{name} got {n} HUPs, expected one");
    }
    for (name, n) in counts(spared) {
        assert_eq!(n, 0, "{name} got {n} HUPs, expected none");
    }
}

#[tokio::test]
async fn podman_label_reload_signals_only_labelled_containers() {
    let _serial = SERIAL.lock().await;
    let env = podman_env();
    let mut containers = Containers::new(env);
    let a = containers.start("label-a", "tls=true");
    let b = containers.start("label-b", "tls=true");
    let other = containers.start("label-other", "tls=false");
    containers.wait_ready(&[&a, &b, &other]);

    let reloader = Reloader::PodmanLabel {
        label: "tls=true".into(),
        signal: Some("HUP".into()),
    };
    let runner = isolated_runner(env);
    let report = hooks::reload(&runner, &reloader, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("reload failed: {e}"));

    let mut reloaded = report.reloaded.clone();
    reloaded.sort();
    let mut expected = vec![a.name.clone(), b.name.clone()];
    expected.sort();
    assert_eq!(reloaded, expected, "{report:#?}");
    assert_eq!(
        report.commands[0], "podman ps --filter label=tls=true --format {{.Names}}",
        "{report:#?}"
    );
    let mut kills = report.commands[1..].to_vec();
    kills.sort();
    let expected_kills: Vec<String> = expected
        .iter()
        .map(|n| format!("podman kill --signal HUP {n}"))
        .collect();
    assert_eq!(kills, expected_kills, "{report:#?}");

    assert_hups(&[&a, &b], &[&other]);
}

#[tokio::test]
async fn rendered_post_hook_signals_labelled_containers_and_the_proxy() {
    let _serial = SERIAL.lock().await;
    let env = podman_env();
    let mut containers = Containers::new(env);
    let a = containers.start("hook-a", "tls=true");
    let b = containers.start("hook-b", "tls=true");
    let proxy = containers.start("hook-proxy", "tls=false");
    containers.wait_ready(&[&a, &b, &proxy]);

    // A real leaf and key where the agent would have written them.
    let tls = env.dir.join("posthook");
    let _ = std::fs::remove_dir_all(&tls);
    std::fs::create_dir_all(&tls).unwrap();
    let ca = LabCa::generate().unwrap();
    let leaf = ca
        .leaf(
            "podhook.test",
            &["podhook.test"],
            &[],
            true,
            time::Duration::days(1),
        )
        .unwrap();
    let fullchain = tls.join("podhook.fullchain.pem");
    let key = tls.join("podhook.key");
    let chain = format!("{}{}", leaf.cert_pem, ca.intermediate_pem());
    write_file(&fullchain, chain.as_bytes(), 0o644).unwrap();
    write_file(&key, leaf.key_pem.as_bytes(), 0o600).unwrap();

    let spec = PostHookSpec::new("podhook", fullchain, key)
        .reload_tls_label("tls=true")
        .proxy_reload(format!("podman:{}", proxy.name));
    let script = hooks::render_post_hook(&spec).unwrap();
    let script_path = tls.join("vault-agent-post-leaf.sh");
    write_file(&script_path, script.as_bytes(), 0o755).unwrap();

    // As the agent runs it: with `PODMAN` in its environment (the rootless-podman
    // wrapper of this lab).
    let ran = std::process::Command::new(&script_path)
        .env("PODMAN", &env.wrapper)
        .output()
        .expect("run the post-hook");
    let out = hooks::CommandOutput {
        status: ran.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
    };
    assert!(ran.status.success(), "post-hook failed: {}", out.stderr);
    for c in [&a, &b, &proxy] {
        let line = format!("sent SIGHUP to container {}", c.name);
        assert!(
            out.stdout.contains(&line),
            "no `{line}` in:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("vault-agent-post-leaf[podhook]: done"),
        "{}",
        out.stdout
    );

    assert_hups(&[&a, &b, &proxy], &[]);
}
