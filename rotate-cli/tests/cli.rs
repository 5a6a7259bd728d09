//! The `rotate` binary's behaviour that needs no server, pinned by whole-output snapshots
//! (`tests/cmd/*.toml`: arguments, exit code, stdout, stderr). `TRYCMD=overwrite cargo
//! test -p rotate-cli --test cli` rewrites them after an intended change.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new()
        .env("ROTATE_LOG", "off")
        .case("tests/cmd/*.toml");
}
