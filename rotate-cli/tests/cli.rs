//! The `rotate` binary's behaviour that needs no server, pinned by whole-output snapshots
//! (`tests/cmd/*.toml`: arguments, exit code, stdout, stderr). `TRYCMD=overwrite cargo
//! test -p rotate-cli --test cli` rewrites them after an intended change.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new()
        .env("ROTATE_LOG", "off")
        .case("tests/cmd/*.toml");
}

/// Run the real binary with `args`, stdin empty, no `VAULT_*`/`BAO_*`/`ROTATE_*`.
fn rotate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rotate"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rotate")
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_command_line() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = rotate(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("rotate") && text.contains("if-due"),
            "{shell}"
        );
    }
    let out = rotate(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH rotate"),
        "{roff}"
    );
    assert!(roff.contains("rollback"), "every subcommand is listed");
    // bash accepts what it is given.
    let check = std::process::Command::new("bash")
        .args(["-n", "-c"])
        .arg(String::from_utf8(rotate(&["completions", "bash"]).stdout).unwrap())
        .status()
        .unwrap();
    assert!(check.success(), "bash -n rejects the completion script");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    // stdout is a pipe whose reader is already gone: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    for args in [
        &["completions", "bash"][..],
        &["man"],
        &["--help"],
        &["run", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotate"))
            .env_clear()
            .args(args)
            .stdout(writer.try_clone().unwrap())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn no_escape_byte_reaches_a_file_and_color_is_asked_for_explicitly() {
    // A usage error and a config error, stderr to a pipe (as to a file or the journal).
    for args in [
        &["run", "--stepp"][..],
        &["--config", "/nonexistent.toml", "plan"],
    ] {
        let out = rotate(args);
        assert!(!out.status.success());
        assert!(!out.stderr.is_empty(), "{args:?} says why");
        assert!(!out.stderr.contains(&0x1b), "{args:?}: {:?}", out.stderr);
        assert!(!out.stdout.contains(&0x1b), "{args:?}");
    }
    let forced = rotate(&["--color", "always", "run", "--stepp"]);
    assert!(
        forced.stderr.contains(&0x1b),
        "--color always colours clap's error"
    );
    let never = rotate(&["--color=never", "run", "--stepp"]);
    assert!(!never.stderr.contains(&0x1b));
}
