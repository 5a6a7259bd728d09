//! Interrupted, failed or no-op runs never do harm: kills aimed between two writes (the
//! tests' `rotate-child` has failpoints), a torn journal, a no-op run before a rollback,
//! rollback byte for byte under the app homes with every certificate revoked, agents kept
//! up, a cron `PATH`, a relative `--config`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rotate_cli::Exit;
use rotate_tests::{Lab, shared};
use vault_client::PkiApi;

use crate::support::{after_step_3, config_in, rotate, target, tempdir};

/// `rotate <args>` as a real process; `ROTATE_FAILPOINT=<point>` when given.
fn rotate_process(
    cfg: &Path,
    args: &[&str],
    point: Option<&str>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rotate-child"));
    if !env.is_empty() {
        // Exactly this environment (cron's, say).
        c.env_clear();
    }
    if let Some(p) = point {
        c.env("ROTATE_FAILPOINT", p);
    }
    c.envs(env.iter().copied())
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every file under `dir`: bytes, mode and owner (a byte-for-byte picture).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".log") {
                // The lab's agent log, written by the fake unit manager, not by rotate.
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_owned(),
                    (std::fs::read(e.path()).unwrap(), m.mode() & 0o7777, m.uid()),
                );
            }
        }
    }
    out
}

/// Serials of `mount`'s certificates for `cn`: (serial, revoked).
async fn certs_for(lab: &Lab, cn: &str) -> Vec<(String, bool)> {
    let admin = lab.admin_client().unwrap();
    let mut out = Vec::new();
    for serial in admin.list_certs("pki-prod").await.unwrap() {
        let Some(rec) = admin.read_cert("pki-prod", &serial).await.unwrap() else {
            continue;
        };
        let Ok(info) = pki_ops::CertInfo::from_pem(&rec.certificate) else {
            continue;
        };
        if info.subject_cn.as_deref() == Some(cn) {
            out.push((serial, rec.revocation_time != 0));
        }
    }
    out
}

fn stop_unit(lab: &Lab, app: &str) {
    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &format!("vault-agent-{app}.service")])
        .status();
}

#[tokio::test]
async fn a_kill_between_an_agent_pairs_renames_then_a_torn_journal_then_resume_then_run_works() {
    let lab = shared();
    let app = "intrtorn";
    let (dir, cfg) = after_step_3(lab, "intr-torn", &[app], "").await;
    let home = dir.join("home").join(app);
    let out = rotate_process(
        &cfg,
        &["run", "--step", "agents"],
        Some("commit-between-renames"),
        &[],
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the failpoint was not reached"
    );
    let (key, crt) = (
        home.join("vault/mtls/agent.key"),
        home.join("vault/mtls/agent.crt"),
    );
    assert!(
        pki_ops::key_matches_cert_files(&key, &crt).is_err(),
        "the kill left the pair matching: the test proves nothing"
    );
    // Plan and verify name the run instead of a bare key mismatch.
    for args in [&["plan", "--step", "agents"][..], &["verify"]] {
        let (exit, v) = rotate(&cfg, args).await;
        assert_eq!(exit, Exit::ResumeNeeded, "{args:?}: {v:#}");
        assert!(
            v["error"].as_str().unwrap().contains("rotate run --resume"),
            "{v:#}"
        );
    }
    // Then the state disk tears the journal's last line (a full disk, a power cut).
    let journal = dir.join("state/journal.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"event":"undo_done","step":"ag"#).unwrap();
    drop(f);
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    pki_ops::key_matches_cert_files(&key, &crt).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "the run after: {v:#}");
    // The agent's identity works for a real client.
    crate::support::bao_login(lab, &home);
}

#[tokio::test]
async fn a_certificate_issued_just_before_a_kill_is_revoked_by_the_resume() {
    let lab = shared();
    let app = "intrissue";
    let dir = tempdir("intr-issue");
    let cfg = config_in(lab, &dir, &[app], "");
    let out = rotate_process(&cfg, &["run", "--step", "agents"], Some("after-issue"), &[]);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the failpoint was not reached"
    );
    let cn = format!("agent-{app}.prod.privsec.ch");
    let orphan = certs_for(lab, &cn).await;
    assert_eq!(orphan.len(), 1, "{orphan:?}");
    assert!(
        !orphan[0].1,
        "issued, and its serial never reached the journal"
    );
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let after = certs_for(lab, &cn).await;
    let orphan_now = after.iter().find(|(s, _)| *s == orphan[0].0).unwrap();
    assert!(orphan_now.1, "the orphan was revoked: {after:?}");
    // The resumed run's own certificate is the one in use, and valid.
    let live: Vec<_> = after.iter().filter(|(_, revoked)| !revoked).collect();
    assert_eq!(live.len(), 1, "{after:?}");
}

#[tokio::test]
async fn a_no_op_run_between_a_run_and_its_rollback_does_not_stop_the_rollback() {
    let lab = shared();
    let app = "intrnoop";
    let (dir, cfg) = after_step_3(lab, "intr-noop", &[app], "").await;
    let home = dir.join("home").join(app);
    let before = snapshot(&home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let run = v["run_id"].as_str().unwrap().to_owned();
    assert_ne!(snapshot(&home), before, "the run changed the files");
    // A scheduled run with nothing due commits nothing: it must not take the backups.
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents", "--if-due"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(target(&v, "agents", app)["outcome"], "unchanged");
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        v["run_id"],
        run.as_str(),
        "the rollback names the run it unwinds"
    );
    assert_eq!(snapshot(&home), before, "restored byte for byte");
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("nothing to roll back")
            || v["summary"]
                .as_str()
                .unwrap()
                .contains("already rolled back"),
        "{v:#}"
    );
}

#[tokio::test]
async fn rollback_of_steps_3_and_4_restores_the_home_byte_for_byte_and_revokes_every_certificate() {
    let lab = shared();
    let app = "intrfull";
    let (dir, cfg) = after_step_3(lab, "intr-full", &[app], "").await;
    let home = dir.join("home").join(app);
    lab.define_agent_unit(app, &home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // The agent stopped: nothing rewrites the home behind the rollback's back.
    stop_unit(lab, app);
    let before = snapshot(&home);
    let leaf_cn = format!("{app}.int.privsec.ch");
    let agent_cn = format!("agent-{app}.prod.privsec.ch");
    let issued_before: Vec<String> = certs_for(lab, &leaf_cn)
        .await
        .into_iter()
        .chain(certs_for(lab, &agent_cn).await)
        .map(|(s, _)| s)
        .collect();

    let (exit, v) = rotate(&cfg, &["run", "--step", "agents", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    stop_unit(lab, app);
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    for t in v["rolled_back"].as_array().unwrap() {
        assert_eq!(t["outcome"], "undone", "{t:#}");
    }
    let after = snapshot(&home);
    let diff: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(diff.is_empty(), "not restored byte for byte: {diff:?}");
    // Every certificate the run issued, the agent's leaf included, is revoked.
    for cn in [&leaf_cn, &agent_cn] {
        let new: Vec<_> = certs_for(lab, cn)
            .await
            .into_iter()
            .filter(|(s, _)| !issued_before.contains(s))
            .collect();
        assert!(!new.is_empty(), "the run issued nothing for {cn}");
        assert!(
            new.iter().all(|(_, revoked)| *revoked),
            "{cn}: not revoked: {new:?}"
        );
    }
}

#[tokio::test]
async fn the_agent_that_ran_before_a_failed_step_4_runs_after_it_even_from_cron() {
    let lab = shared();
    let app = "intragent";
    let (dir, cfg) = after_step_3(lab, "intr-agent", &[app], "").await;
    let home = dir.join("home").join(app);
    lab.define_agent_unit(app, &home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let unit = format!("vault-agent-{app}.service");
    assert!(lab.units.is_active(&unit));
    // Root's cron: PATH=/usr/bin:/bin, no VAULT_*. A committed run does not stop the
    // running agent, nor does a rollback of it.
    let cron = [("PATH", "/usr/bin:/bin"), ("HOME", "/root")];
    let out = rotate_process(&cfg, &["run", "--step", "leaf"], None, &cron);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(lab.units.is_active(&unit), "the run stopped the agent");
    let out = rotate_process(&cfg, &["rollback"], None, &cron);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(lab.units.is_active(&unit), "the rollback stopped the agent");

    // A step 4 that fails after restarting the agent (its post-hook cannot reload the
    // proxy): undone, and the agent restarted on its previous config still runs later.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[leaf]\n",
        &format!(
            "[leaf]\nproxy_reload = \"signal:{}:HUP\"\n",
            dir.join("no-such.pid").display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "leaf", app);
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        lab.units.is_active(&unit),
        "the agent died after the rollback: {}",
        std::fs::read_to_string(home.join(format!("agent-{app}.log"))).unwrap_or_default()
    );
    stop_unit(lab, app);
}

#[tokio::test]
async fn a_relative_config_plans_like_an_absolute_one() {
    let lab = shared();
    let dir = tempdir("intr-relative");
    let cfg = config_in(lab, &dir, &["intrrel"], "");
    let absolute = rotate_process(&cfg, &["plan", "--step", "agents"], None, &[]);
    let relative = Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .current_dir(&dir)
        .args([
            "--config",
            "rotate.toml",
            "--output",
            "json",
            "plan",
            "--step",
            "agents",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        relative.status.code(),
        absolute.status.code(),
        "{}",
        String::from_utf8_lossy(&relative.stdout)
    );
    assert_eq!(absolute.status.code(), Some(10));
    // Relative paths inside it are the config directory's, wherever rotate runs.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let ca = lab.paths.ca_bundle.display().to_string();
    std::fs::copy(&lab.paths.ca_bundle, dir.join("ca.pem")).unwrap();
    std::fs::write(&cfg, text.replace(&ca, "ca.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .current_dir("/")
        .arg("--config")
        .arg(&cfg)
        .args(["--output", "json", "plan", "--step", "agents"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_killed_rollback_of_an_earlier_run_blocks_new_runs_and_rollback_finishes_it() {
    let lab = shared();
    let app = "intrarch";
    let (dir, cfg) = after_step_3(lab, "intr-arch", &[app], "").await;
    let home = dir.join("home").join(app);
    let before = snapshot(&home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let run = v["run_id"].as_str().unwrap().to_owned();
    // A no-op run since: the run to roll back is an earlier one, in runs/.
    let (exit, _) = rotate(&cfg, &["run", "--step", "agents", "--if-due"]).await;
    assert_eq!(exit, Exit::Ok);
    let out = rotate_process(&cfg, &["rollback"], Some("unwind-after-file#1"), &[]);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the failpoint was not reached"
    );
    // Every guard sees the unfinished rollback of that run.
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(&run) && err.contains("rotate rollback"),
        "{err}"
    );
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(v["run_id"], run.as_str());
    assert_eq!(snapshot(&home), before, "restored byte for byte");
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "new runs are allowed again: {v:#}");
}

#[tokio::test]
async fn a_rollback_killed_before_it_said_it_ended_is_finished_not_stuck() {
    let lab = shared();
    let app = "intrend";
    let (dir, cfg) = after_step_3(lab, "intr-end", &[app], "").await;
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // As if killed after the last undo, before `run_ended: rolled_back` reached the disk.
    let journal = dir.join("state/journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let cut: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(r#""state":"rolled_back"}"#) || !l.contains("run_ended"))
        .collect();
    std::fs::write(&journal, cut.join("\n") + "\n").unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("finished the rollback"),
        "{v:#}"
    );
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
}

#[tokio::test]
async fn resume_after_an_incomplete_rollback_retries_the_undo_and_never_reapplies_the_run() {
    let lab = shared();
    let app = "intrinc";
    let (dir, cfg) = after_step_3(lab, "intr-inc", &[app], "").await;
    // A rollback that cannot finish: the journal's proxy reload is not the config's.
    let state = dir.join("state");
    let j = rotate_cli::journal::Journal::reopen(&state)
        .unwrap()
        .unwrap();
    use rotate_cli::StepId;
    use rotate_cli::journal::{TargetState, UndoAction};
    j.set_state(StepId::Proxy, "proxy", TargetState::Applying, None)
        .unwrap();
    j.record_undo(
        StepId::Proxy,
        "proxy",
        UndoAction::Reload {
            reload: "podman:elsewhere".into(),
            setting: "proxy.reload".into(),
        },
    )
    .unwrap();
    j.set_state(StepId::Proxy, "proxy", TargetState::Committed, None)
        .unwrap();
    drop(j);
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::RollbackIncomplete, "{v:#}");
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::RollbackIncomplete, "{v:#}");
    assert!(
        v["steps"].as_array().is_none_or(|s| s.is_empty()),
        "the resume ran the run's steps again: {v:#}"
    );
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
}
