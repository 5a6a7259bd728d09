//! The engine under faults, with `rotate` as a real process: SIGKILL at any point of a run
//! (then `--resume`), and two runs at once (the lock).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rotate_cli::Exit;
use rotate_tests::shared;

use crate::support::{config_in, rotate, target, tempdir};

fn child(cfg: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rotate-child")
}

/// The agent key and certificate in `home` belong together.
fn assert_pair_matches(home: &Path, when: &str) {
    let key = home.join("vault/mtls/agent.key");
    let crt = home.join("vault/mtls/agent.crt");
    if let Err(e) = pki_ops::key_matches_cert_files(&key, &crt) {
        panic!(
            "{when}: {} and {} do not match: {e}",
            key.display(),
            crt.display()
        );
    }
}

fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

#[tokio::test]
async fn sigkill_at_any_point_then_resume_leaves_matching_pairs_and_the_next_run_commits() {
    let lab = shared();
    let apps = ["killapp1", "killapp2"];
    let dir = tempdir("kill");
    let cfg = config_in(lab, &dir, &apps, "");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");

    // How long an undisturbed run takes, as a process.
    let start = Instant::now();
    let out = child(&cfg, &["run", "--step", "agents"])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let span = start.elapsed();

    let rounds = 12u32;
    let mut interrupted = 0;
    for i in 0..rounds {
        let mut c = child(&cfg, &["run", "--step", "agents"]);
        std::thread::sleep(span * i / rounds);
        signal(&c, Signal::SIGKILL);
        let status = c.wait().unwrap();
        let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
        // Killed before its journal existed or after it finished: nothing to resume.
        assert_eq!(exit, Exit::Ok, "round {i} ({status}): {v:#}");
        if v["run_id"].is_string() {
            interrupted += 1;
        }
        for app in apps {
            assert_pair_matches(&dir.join("home").join(app), &format!("round {i}"));
        }
        // The run after it is a normal one: nothing left unfinished.
        let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
        assert_eq!(exit, Exit::Ok, "round {i}, the run after resume: {v:#}");
        for app in apps {
            assert_eq!(target(&v, "agents", app)["outcome"], "committed");
            assert_pair_matches(&dir.join("home").join(app), "after a clean run");
        }
    }
    assert!(
        interrupted > 0,
        "no round killed a run mid-way (run span {span:?}): the test proved nothing"
    );
}

#[tokio::test]
async fn a_second_run_is_refused_naming_the_holder_and_the_first_is_not_disturbed() {
    let lab = shared();
    let dir = tempdir("lock");
    let cfg = config_in(lab, &dir, &["lockapp"], "");
    let lock = dir.join("state/lock");

    let c = child(&cfg, &["run", "--step", "agents"]);
    // Wait until it holds the lock, then freeze it there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = c.id().to_string();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("pid {pid} "))) {
        assert!(Instant::now() < deadline, "the child never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&c, Signal::SIGSTOP);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    signal(&c, Signal::SIGCONT);
    assert_eq!(exit, Exit::Locked, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("pid {pid} ")) && err.contains("rotate run"),
        "{err}"
    );

    // The first run completes, and what it reports is what is on disk.
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let serial = target(&first, "agents", "lockapp")["applied"]["serial_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_disk = pki_ops::CertInfo::from_pem(
        &std::fs::read_to_string(dir.join("home/lockapp/vault/mtls/agent.crt")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk.serial_hex, serial);
    assert_pair_matches(&dir.join("home/lockapp"), "after the locked-out run");
}
