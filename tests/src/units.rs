//! A stand-in for systemd user units in the lab (systemd is not PID 1 on these machines):
//! a fake `systemctl` script that records its arguments and asks a supervisor thread to
//! (re)start real processes, e.g. a real `bao agent` for `vault-agent-<app>.service`.
//!
//! The protocol is files in `<lab>/systemd/` (world-writable and sticky, so app users can
//! call it through `runuser`): `systemctl --user restart U` writes `U.<pid>.req` and waits
//! for `U.<pid>.ack` (`ok` or an error); the supervisor keeps `U.active` while U runs.
//! Every call is logged in `calls.log` (arguments) and `callers.log` (user, arguments).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::lab::spawn_tied;
use crate::pki::write_file;

/// How to run one unit.
#[derive(Debug, Clone)]
pub struct UnitDef {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
}

/// The lab's units and their supervisor.
pub struct Units {
    dir: PathBuf,
    defs: Arc<Mutex<HashMap<String, UnitDef>>>,
    stop: Arc<AtomicBool>,
}

fn script(dir: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Fake `systemctl --user` for the OpenBao lab (systemd is not PID 1 here). Records every
# call; restart/start/stop/is-active are served by the lab's supervisor thread.
set -u
D='{dir}'
printf '%s\n' "$*" >> "$D/calls.log"
printf '%s %s\n' "$(id -un)" "$*" >> "$D/callers.log"
[ "${{1:-}}" = "--user" ] && shift
cmd=${{1:-}}
unit=${{2:-}}
case $cmd in
restart|start|stop)
	req="$D/$unit.$$"
	rm -f "$req.ack"
	printf '%s\n' "$cmd" > "$req.tmp" && mv "$req.tmp" "$req.req"
	i=0
	while [ ! -e "$req.ack" ]; do
		i=$((i + 1))
		if [ "$i" -gt 1000 ]; then
			echo "fake systemctl: $unit: no answer from the lab supervisor" >&2
			exit 1
		fi
		sleep 0.02
	done
	ack=$(cat "$req.ack")
	rm -f "$req.ack"
	if [ "$ack" != ok ]; then
		echo "fake systemctl: $cmd $unit: $ack" >&2
		exit 1
	fi
	;;
is-active)
	if [ -e "$D/$unit.active" ]; then echo active; else echo inactive; exit 3; fi
	;;
*)
	echo "fake systemctl: unsupported: $*" >&2
	exit 1
	;;
esac
"#,
        dir = dir.display()
    )
}

impl Units {
    /// Create `<lab>/systemd/`, the fake `<lab>/bin/systemctl`, and start the supervisor.
    pub fn start(lab_dir: &Path) -> Result<Units> {
        let dir = lab_dir.join("systemd");
        std::fs::create_dir_all(&dir)?;
        // App users call the fake through `runuser`: they must be able to leave requests.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
        for log in ["calls.log", "callers.log"] {
            write_file(&dir.join(log), b"", 0o666)?;
            // Exactly 0666, whatever the umask.
            std::fs::set_permissions(
                dir.join(log),
                std::os::unix::fs::PermissionsExt::from_mode(0o666),
            )?;
        }
        std::fs::create_dir_all(lab_dir.join("bin"))?;
        write_file(
            &lab_dir.join("bin/systemctl"),
            script(&dir).as_bytes(),
            0o755,
        )?;
        let units = Units {
            dir: dir.clone(),
            defs: Arc::default(),
            stop: Arc::default(),
        };
        let defs = units.defs.clone();
        let stop = units.stop.clone();
        std::thread::Builder::new()
            .name("lab-units".into())
            .spawn(move || supervise(&dir, &defs, &stop))
            .context("start the lab's unit supervisor")?;
        Ok(units)
    }

    /// Define (or redefine) unit `name`.
    pub fn define(&self, name: &str, def: UnitDef) {
        self.defs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), def);
    }

    /// Every `systemctl` call so far, one line each (arguments joined by spaces).
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every `systemctl` call so far as `<user> <arguments>`: who called it.
    pub fn callers(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("callers.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Is the unit running?
    pub fn is_active(&self, name: &str) -> bool {
        self.dir.join(format!("{name}.active")).exists()
    }
}

impl Drop for Units {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn start_child(def: &UnitDef) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&def.log)?;
    let mut cmd = Command::new(&def.argv[0]);
    cmd.args(&def.argv[1..])
        .env_clear()
        .envs(def.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(spawn_tied(&mut cmd)?)
}

/// The units now running, one lock per unit (its requests are served in order), and the
/// thread that starts them: PR_SET_PDEATHSIG ties a child to the thread that spawned it,
/// so children are spawned by one thread that lives as long as the supervisor.
struct Running {
    children: Mutex<HashMap<String, Child>>,
    turns: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    spawner: Mutex<std::sync::mpsc::Sender<Spawn>>,
}

/// A child to start, and where its answer goes.
type Spawn = (UnitDef, std::sync::mpsc::Sender<Result<Child>>);

impl Running {
    fn new() -> Running {
        let (tx, rx) = std::sync::mpsc::channel::<Spawn>();
        std::thread::spawn(move || {
            for (def, answer) in rx {
                let _ = answer.send(start_child(&def));
            }
        });
        Running {
            children: Mutex::default(),
            turns: Mutex::default(),
            spawner: Mutex::new(tx),
        }
    }

    fn start(&self, def: UnitDef) -> Result<Child> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((def, tx))
            .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?
    }
}

/// The supervisor loop: serve requests (each in its own thread, as systemd starts units
/// in parallel; one unit's requests one at a time), track exits. Children are tied to
/// the spawner thread, which ends with the process.
fn supervise(dir: &Path, defs: &Arc<Mutex<HashMap<String, UnitDef>>>, stop: &AtomicBool) {
    let running = Arc::new(Running::new());
    while !stop.load(Ordering::SeqCst) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `<unit>.<caller pid>.req`, answered by `<unit>.<caller pid>.ack`.
                let Some((unit, caller)) = name
                    .strip_suffix(".req")
                    .and_then(|stem| stem.rsplit_once('.'))
                else {
                    continue;
                };
                let (unit, caller) = (unit.to_owned(), caller.to_owned());
                // The caller may remove its answer (the directory is sticky).
                let requester = std::fs::metadata(e.path()).map_or(0, |m| m.uid());
                let req = std::fs::read_to_string(e.path()).unwrap_or_default();
                let _ = std::fs::remove_file(e.path());
                let (dir, defs, running) = (dir.to_owned(), defs.clone(), running.clone());
                std::thread::spawn(move || {
                    let ack = serve(&dir, &defs, &running, &unit, req.trim());
                    let tmp = dir.join(format!("{unit}.{caller}.ack.tmp"));
                    let _ = std::fs::write(&tmp, ack);
                    let _ = std::os::unix::fs::chown(&tmp, Some(requester), None);
                    let _ = std::fs::rename(&tmp, dir.join(format!("{unit}.{caller}.ack")));
                });
            }
        }
        running
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|unit, child| match child.try_wait() {
                Ok(None) => true,
                _ => {
                    let _ = std::fs::remove_file(dir.join(format!("{unit}.active")));
                    false
                }
            });
        std::thread::sleep(Duration::from_millis(10));
    }
    let children = std::mem::take(&mut *running.children.lock().unwrap_or_else(|p| p.into_inner()));
    for (_, mut child) in children {
        stop_child(&mut child);
    }
}

/// One request (`restart`, `start`, `stop`) for `unit`: its answer (`ok` or why not).
fn serve(
    dir: &Path,
    defs: &Mutex<HashMap<String, UnitDef>>,
    running: &Running,
    unit: &str,
    req: &str,
) -> String {
    let Some(def) = defs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(unit)
        .cloned()
    else {
        return format!("Unit {unit} not found.");
    };
    let turn = running
        .turns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(unit.to_owned())
        .or_default()
        .clone();
    let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
    let old = running
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(unit);
    if let Some(mut child) = old {
        stop_child(&mut child);
    }
    let _ = std::fs::remove_file(dir.join(format!("{unit}.active")));
    if req == "stop" {
        return "ok".to_owned();
    }
    match running.start(def) {
        Ok(child) => {
            running
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(unit.to_owned(), child);
            let _ = std::fs::write(dir.join(format!("{unit}.active")), "");
            "ok".to_owned()
        }
        Err(e) => format!("failed to start: {e:#}"),
    }
}
