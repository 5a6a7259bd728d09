//! The systemd units shipped in `contrib/systemd/`: systemd itself accepts them
//! (`systemd-analyze verify`, with the real `rotate` binary in place of the installed
//! one), their command lines are ones the real binary parses to what they claim, and the
//! timers start their services and make up missed runs.
//!
//! `systemd-analyze` must be installed (Debian: `apt-get install systemd`); without it
//! these tests fail rather than skip. systemd need not be running: `verify` works on the
//! unit files alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rotate_cli::{Cli, Command as Sub, Output as Format};

/// The shipped units, services first.
const UNITS: [&str; 4] = [
    "rotate-renew.service",
    "rotate-verify.service",
    "rotate-renew.timer",
    "rotate-verify.timer",
];
/// Where the units expect the binary (README's install path).
const INSTALLED_BINARY: &str = "/usr/local/bin/rotate";
/// The config path the units name.
const INSTALLED_CONFIG: &str = "/etc/rotate/rotate.toml";

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd")
}

fn unit_text(name: &str) -> String {
    let path = unit_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A unit file as systemd reads it: `[Section]` -> key -> values in order (a repeated key
/// adds a value, an empty assignment clears the list). Comments (`#`, `;`) and blank lines
/// are skipped, a trailing `\` continues a line.
fn parse_unit(name: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let text = unit_text(name);
    let mut units: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None::<String>;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(s.to_owned());
            continue;
        }
        let Some(sec) = &section else {
            panic!("{name}:{}: an assignment before any [section]", n + 1);
        };
        let Some((key, value)) = line.split_once('=') else {
            panic!("{name}:{}: not `key=value`: {line}", n + 1);
        };
        let values = units
            .entry(sec.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default();
        match value.trim() {
            "" => values.clear(),
            v => values.push(v.to_owned()),
        }
    }
    units
}

/// The one value of `[section] key` in `name` (panics naming it when absent or repeated).
fn one(name: &str, section: &str, key: &str) -> String {
    let unit = parse_unit(name);
    match unit
        .get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
    {
        Some([v]) => v.clone(),
        other => panic!("{name}: expected exactly one [{section}] {key}=, found {other:?}"),
    }
}

fn has(name: &str, section: &str, key: &str) -> bool {
    parse_unit(name)
        .get(section)
        .and_then(|s| s.get(key))
        .is_some_and(|v| !v.is_empty())
}

/// The service's `ExecStart=` as the program and its arguments. systemd's own splitting
/// (quotes, `%` specifiers, `$VAR`, `;` separators, `-`/`+`/`@`/`!`/`:` prefixes) is not
/// reimplemented: a command line that would need it is refused here, so that splitting at
/// whitespace is exactly what systemd does. A `-` prefix in particular would make every
/// failure a success.
fn exec_start(service: &str) -> Vec<String> {
    let line = one(service, "Service", "ExecStart");
    assert!(
        !line.contains(['"', '\'', '\\', '%', '$', ';']),
        "{service}: keep ExecStart= free of quotes, escapes, specifiers, variables and `;` \
         (this test splits it at whitespace): {line}"
    );
    assert!(
        !line.starts_with(['-', '+', '@', '!', ':']),
        "{service}: ExecStart= must have no prefix (`-` would ignore the exit status): {line}"
    );
    line.split_whitespace().map(str::to_owned).collect()
}

/// A copy of every unit in a fresh directory with the installed binary's path replaced by
/// the binary this test built (`systemd-analyze verify` checks that ExecStart's program
/// exists and is executable).
fn units_with_the_built_binary() -> (tempfile::TempDir, Vec<PathBuf>) {
    let built = env!("CARGO_BIN_EXE_rotate");
    assert!(
        !built.contains(char::is_whitespace) && !built.contains('%'),
        "the built binary's path must be usable in a unit file as is: {built}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths = Vec::new();
    for name in UNITS {
        let text = unit_text(name);
        assert!(
            text.contains(INSTALLED_BINARY) || name.ends_with(".timer"),
            "{name} does not run {INSTALLED_BINARY}"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace(INSTALLED_BINARY, built)).expect("write unit copy");
        paths.push(path);
    }
    (dir, paths)
}

/// `systemd-analyze`, or a failure that says how to install it.
fn systemd_analyze() -> PathBuf {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("systemd-analyze"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "systemd-analyze not found (/usr/bin, PATH): the systemd units cannot be checked; \
             install it with `apt-get install systemd`"
        )
    })
}

/// `systemd-analyze verify --man=no FILES...` with its log at the default level, on the
/// console, uncoloured: whatever a caller's `SYSTEMD_LOG_*` says, warnings are printed.
fn analyze_verify(files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .args(files)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env_remove("SYSTEMD_UNIT_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn systemd_analyze_verify_accepts_the_units_without_a_warning() {
    let (dir, paths) = units_with_the_built_binary();
    let (code, text) = analyze_verify(&paths);
    let dir_s = dir.path().display().to_string();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&dir_s) || UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(
        code == Some(0) && ours.is_empty(),
        "systemd-analyze verify: exit {code:?}, about our units:\n{}\n--- whole output:\n{text}",
        ours.join("\n")
    );
    if !text.trim().is_empty() {
        // Lines about units of the host (network-online.target, ...), not ours.
        eprintln!("systemd-analyze verify, about other units:\n{text}");
    }
}

#[test]
fn systemd_analyze_reports_what_this_test_must_catch() {
    // The check above is only worth something if its tool speaks up here: a missing
    // binary, an unknown key and a bad exit status each make it say so.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("rotate-canary.service");
    std::fs::write(
        &broken,
        "[Unit]\nDescription=canary\n\n[Service]\nType=oneshot\n\
         ExecStart=/nonexistent/rotate verify\nSuccessExitStatus=9 NINE\nKillMod=process\n",
    )
    .unwrap();
    let (code, out) = analyze_verify(&[broken]);
    assert_ne!(code, Some(0), "a missing binary must fail: {out}");
    for expected in ["/nonexistent/rotate", "KillMod", "NINE"] {
        assert!(out.contains(expected), "no word about {expected}:\n{out}");
    }
}

/// The built binary run with `args`, nothing inherited from the test's environment.
fn rotate(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotate"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rotate")
}

/// The service's arguments (ExecStart without the program), with its config path checked
/// and replaced by `config`.
fn args_with_config(service: &str, config: &Path) -> Vec<String> {
    let mut args = exec_start(service);
    assert_eq!(args[0], INSTALLED_BINARY, "{service}: the program");
    args.remove(0);
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{service}: no `--config PATH` in {args:?}"));
    assert_eq!(
        args.get(at + 1).map(String::as_str),
        Some(INSTALLED_CONFIG),
        "{service}: the config path the README and the unit comments name"
    );
    args[at + 1] = config.display().to_string();
    args
}

/// The binary's own parser (clap) on a unit's ExecStart, program included.
fn parse(args: &[String]) -> Cli {
    use clap::Parser as _;
    Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"))
}

#[test]
fn each_services_command_line_means_what_it_says() {
    let renew = exec_start("rotate-renew.service");
    let cli = parse(&renew);
    assert_eq!(cli.config.as_deref(), Some(Path::new(INSTALLED_CONFIG)));
    assert!(cli.quiet, "renew: --quiet (silent when nothing was due)");
    assert_eq!(cli.output, Format::Human);
    match &cli.command {
        Sub::Run { selection, resume } => {
            assert!(selection.if_due, "renew: --if-due");
            assert!(!resume, "renew: a scheduled run never resumes on its own");
            assert!(
                selection.step.is_empty() && selection.apps.is_empty(),
                "renew: every step and app"
            );
            assert!(!selection.kv.with_kv_access && !selection.kv.with_kv_seed);
        }
        other => panic!("renew runs {other:?}, not `run`"),
    }

    let verify = exec_start("rotate-verify.service");
    let cli = parse(&verify);
    assert_eq!(cli.config.as_deref(), Some(Path::new(INSTALLED_CONFIG)));
    assert!(cli.quiet, "verify: --quiet (only the failed checks)");
    match &cli.command {
        Sub::Verify { apps, .. } => assert!(apps.is_empty(), "verify: every app"),
        other => panic!("verify runs {other:?}, not `verify`"),
    }
}

#[test]
fn the_real_binary_takes_each_command_line_and_fails_only_on_the_missing_config() {
    // Usage errors exit 2 before anything is read; a missing config file exits 3. So 3 with
    // the config named proves the binary accepted the whole command line.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir/rotate.toml");
    for service in ["rotate-renew.service", "rotate-verify.service"] {
        let args = args_with_config(service, &missing);
        let out = rotate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{service}: `rotate {}`: want exit 3 (config), got {:?}; stderr:\n{stderr}",
            args.join(" "),
            out.status.code()
        );
        assert!(
            stderr.contains(&missing.display().to_string()),
            "{service}: the error names the config: {stderr}"
        );
        // --quiet: nothing on stdout, even for a failure (the reason is on stderr).
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{service}");

        // And the same line with one unknown flag is a usage error: the 3 above is not
        // something every command line gets.
        let mut bad = args.clone();
        bad.push("--no-such-flag".into());
        let out = rotate(&bad);
        assert_eq!(out.status.code(), Some(2), "{service}: {bad:?}: {out:?}");
    }
}

#[test]
fn timers_start_their_services_and_make_up_missed_runs() {
    for (timer, service) in [
        ("rotate-renew.timer", "rotate-renew.service"),
        ("rotate-verify.timer", "rotate-verify.service"),
    ] {
        assert_eq!(one(timer, "Timer", "Unit"), service, "{timer}: Unit=");
        assert!(
            unit_dir().join(service).is_file(),
            "{timer} starts {service}, which is not shipped"
        );
        let persistent = one(timer, "Timer", "Persistent");
        assert!(
            ["true", "yes", "on", "1"].contains(&persistent.to_ascii_lowercase().as_str()),
            "{timer}: Persistent={persistent}, want true (a run missed while off is made up)"
        );
        assert!(has(timer, "Timer", "OnCalendar"), "{timer}: no OnCalendar=");
        assert!(
            has(timer, "Timer", "RandomizedDelaySec"),
            "{timer}: no RandomizedDelaySec="
        );
        assert_eq!(
            one(timer, "Install", "WantedBy"),
            "timers.target",
            "{timer}"
        );
        // Enabled through the timer alone: the service has no [Install] of its own.
        assert!(
            !parse_unit(service).contains_key("Install"),
            "{service}: started by {timer} only"
        );
    }
}

#[test]
fn the_services_tell_the_truth_about_failures() {
    for service in ["rotate-renew.service", "rotate-verify.service"] {
        assert_eq!(one(service, "Service", "Type"), "oneshot", "{service}");
        // Only 0 is success: 3-11 each mean something was not done or is wrong (9: the
        // renewal did not even look; see the comment in rotate-renew.service).
        for key in [
            "SuccessExitStatus",
            "RestartForceExitStatus",
            "Restart",
            "RemainAfterExit",
        ] {
            assert!(
                !has(service, "Service", key),
                "{service}: {key}= would hide or repeat a failure"
            );
        }
        assert!(
            has(service, "Service", "TimeoutStartSec"),
            "{service}: a hung run must end"
        );
        assert_eq!(one(service, "Service", "UMask"), "0077", "{service}");
    }
    // The renewal restarts containers and daemons: no hardening they would inherit, no
    // private mount namespace they would keep (see the comments in the unit).
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ReadWritePaths",
        "SystemCallFilter",
        "RestrictNamespaces",
        "CapabilityBoundingSet",
        "MemoryDenyWriteExecute",
        "RestrictSUIDSGID",
    ] {
        assert!(
            !has("rotate-renew.service", "Service", key),
            "rotate-renew.service: {key}= breaks what a renewal restarts (see the unit's comments)"
        );
    }
    assert_eq!(
        one("rotate-renew.service", "Service", "KillMode"),
        "process",
        "a stop goes to rotate alone, which finishes the targets under way"
    );
    assert_eq!(
        one("rotate-verify.service", "Service", "NoNewPrivileges"),
        "yes"
    );
}
