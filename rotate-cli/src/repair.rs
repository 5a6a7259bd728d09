//! Before any command reads managed files or builds a client: a key and the certificate it
//! belongs to that an interrupted run (or an interrupted rollback) left from different
//! generations. `run --resume` and `rollback` put them back from the journal first,
//! locally, without Vault (the admin's own pair is how every client reaches Vault);
//! every other command refuses with exit 8, naming the run and the one command that
//! finishes it, instead of failing on a "key mismatch" that names nothing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::rotation::RotationError;
use crate::state::journal::{self, Event, Journal, RunRecord, TargetRecord, TargetState};
use crate::state::lock::StateLock;
use crate::state::undo::UndoAction;

/// A key and certificate of one target that do not belong together on disk.
#[derive(Debug, Clone)]
pub(crate) struct TornPair {
    /// The key.
    pub(crate) key: PathBuf,
    /// The certificate.
    pub(crate) cert: PathBuf,
}

impl std::fmt::Display for TornPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} and {}", self.key.display(), self.cert.display())
    }
}

/// The file names `cfg` gives keys and certificates (besides `*.key`, `*.crt`,
/// `*.fullchain.pem`).
fn named_pairs(cfg: &Config) -> Vec<(String, String)> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut v = Vec::new();
    if let (Some(c), Some(k)) = (&cfg.vault.client_cert, &cfg.vault.client_key) {
        v.push((name(k), name(c)));
    }
    for n in cfg.listener.iter().flat_map(|l| l.servers()) {
        v.push((name(&n.key_file), name(&n.cert_file)));
    }
    if let Some(p) = &cfg.proxy
        && let (Some(c), Some(k)) = (&p.client_cert, &p.client_key)
    {
        v.push((name(k), name(c)));
    }
    v
}

fn stem(name: &str) -> &str {
    name.strip_suffix(".fullchain.pem")
        .or_else(|| name.rsplit_once('.').map(|(s, _)| s))
        .unwrap_or(name)
}

/// The key/certificate pairs among the files `t` replaced, with what reads them: the
/// files of one directory of one tree, a key (`*.key` or a configured key name) with
/// its certificate (same stem, or the only certificate there).
fn pairs_of(
    cfg: &Config,
    t: &TargetRecord,
) -> Vec<(TornPair, pki_ops::FileUndo, Option<pki_ops::Owner>)> {
    let named = named_pairs(cfg);
    // Only what rotate itself replaced (staged, with a temp): a pair an agent's hook
    // installs is the hook's to heal, and it may be mid-render.
    let files: Vec<(&pki_ops::FileUndo, Option<pki_ops::Owner>)> = t
        .undo
        .iter()
        .filter_map(|e| match &e.action {
            UndoAction::File { undo, owner } if undo.temp.is_some() => Some((undo, *owner)),
            _ => None,
        })
        .collect();
    let name_of = |u: &pki_ops::FileUndo| {
        u.rel
            .file_name()
            .map(OsStr::to_string_lossy)
            .unwrap_or_default()
            .into_owned()
    };
    let is_key = |n: &str| n.ends_with(".key") || named.iter().any(|(k, _)| k == n);
    let is_cert = |n: &str| {
        n.ends_with(".crt") || n.ends_with(".fullchain.pem") || named.iter().any(|(_, c)| c == n)
    };
    let mut out = Vec::new();
    for (key, owner) in files.iter().filter(|(u, _)| is_key(&name_of(u))) {
        let kn = name_of(key);
        let same_dir: Vec<&&pki_ops::FileUndo> = files
            .iter()
            .map(|(u, _)| u)
            .filter(|u| u.root == key.root && u.rel.parent() == key.rel.parent())
            .filter(|u| is_cert(&name_of(u)))
            .collect();
        let cert = named
            .iter()
            .find(|(k, _)| *k == kn)
            .and_then(|(_, c)| same_dir.iter().find(|u| name_of(u) == *c))
            .or_else(|| same_dir.iter().find(|u| stem(&name_of(u)) == stem(&kn)))
            .or(if same_dir.len() == 1 {
                same_dir.first()
            } else {
                None
            });
        if let Some(cert) = cert {
            out.push((
                TornPair {
                    key: key.root.join(&key.rel),
                    cert: cert.root.join(&cert.rel),
                },
                (*key).clone(),
                *owner,
            ));
        }
    }
    out
}

/// Whether the pair on disk does not belong together: one of the two is missing, or the
/// key is not the certificate's. Read through the tree without following symlinks.
fn torn(pair: &TornPair, key: &pki_ops::FileUndo, owner: Option<pki_ops::Owner>) -> bool {
    let Ok(tree) = pki_ops::Tree::open(&key.root, owner) else {
        return false;
    };
    let rel = |p: &Path| p.strip_prefix(&key.root).map(Path::to_path_buf).ok();
    let (Some(k), Some(c)) = (rel(&pair.key), rel(&pair.cert)) else {
        return false;
    };
    match (tree.read(&k), tree.read(&c)) {
        (Ok(Some(k)), Ok(Some(c))) => {
            pki_ops::key_matches_cert(&String::from_utf8_lossy(&k), &String::from_utf8_lossy(&c))
                .is_err()
        }
        (Ok(None), Ok(Some(_))) | (Ok(Some(_)), Ok(None)) => true,
        _ => false,
    }
}

/// The torn pairs an unfinished run left, per target.
fn torn_targets<'r>(cfg: &Config, rec: &'r RunRecord) -> Vec<(&'r TargetRecord, Vec<TornPair>)> {
    // Interrupted while writing, or while unwinding: an applied target finished its
    // writes (its pairs were whole when it said so).
    rec.targets
        .iter()
        .filter(|t| {
            matches!(
                t.state,
                TargetState::Applying | TargetState::RollingBack | TargetState::RollbackIncomplete
            )
        })
        .filter_map(|t| {
            let pairs: Vec<TornPair> = pairs_of(cfg, t)
                .into_iter()
                .filter(|(p, k, o)| torn(p, k, *o))
                .map(|(p, _, _)| p)
                .collect();
            (!pairs.is_empty()).then_some((t, pairs))
        })
        .collect()
}

/// For a command that only reads (`status`, `plan`, `verify`, `health`): the error to
/// stop with when the last run left a key and certificate that do not belong together
/// (exit 8, naming the run, the files and the command that finishes it).
pub fn refuse_if_torn(cfg: &Config) -> Result<(), RotationError> {
    let state_dir = cfg.state_dir();
    let Some(rec) = journal::last_run(&state_dir)? else {
        return Ok(());
    };
    if !rec.needs_resume() {
        return Ok(());
    }
    // A run under way (it holds the lock) is between two writes, not interrupted.
    if let Some(holder) = crate::state::lock::StateLock::holder(&state_dir) {
        tracing::warn!(%holder, "a run is under way: what it is replacing may not match yet");
        return Ok(());
    }
    let torn = torn_targets(cfg, &rec);
    if torn.is_empty() {
        tracing::warn!(run = %rec.run_id, "the last run did not finish: `rotate run --resume` finishes it");
        return Ok(());
    }
    let mut e = RotationError::resume_needed(&rec, &state_dir);
    if let RotationError::ResumeNeeded { what, .. } = &mut e {
        *what = format!(
            "was interrupted while replacing {}, which do not belong together now",
            torn.iter()
                .flat_map(|(_, p)| p.iter().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Err(e)
}

/// For `run --resume` and `rollback`, before any client is built: puts back, from the
/// journal and locally, every file of a target whose key and certificate an interrupted
/// run or rollback left from different generations, and journals each restore (so the
/// unwind that follows skips it). Returns what it restored.
pub fn repair_torn_pairs(cfg: &Config, now: i64) -> Result<Vec<String>, RotationError> {
    let state_dir = cfg.state_dir();
    let Some(rec) = journal::last_run(&state_dir)? else {
        return Ok(Vec::new());
    };
    if torn_targets(cfg, &rec).is_empty() {
        return Ok(Vec::new());
    }
    let _lock = StateLock::acquire(&state_dir, "rotate repair (key/certificate pairs)", now)?;
    let Some(journal) = Journal::reopen(&state_dir)? else {
        return Ok(Vec::new());
    };
    let rec = journal.record();
    let mut done = Vec::new();
    for (t, pairs) in torn_targets(cfg, &rec) {
        tracing::warn!(step = %t.step, target = %t.target, "repairing {}", pairs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
        // From here it is being unwound: nothing re-gates it half undone.
        if t.state != TargetState::RollingBack {
            journal.set_state(t.step, &t.target, TargetState::RollingBack, None)?;
        }
        for (index, entry) in t.undo.iter().enumerate().rev() {
            if let (UndoAction::File { undo, owner }, false) = (&entry.action, entry.done) {
                pki_ops::undo_file(undo, *owner).map_err(|e| {
                    RotationError::Repair(format!(
                        "cannot restore {}: {e}; fix it by hand from its kept previous version ({}, run {})",
                        undo.root.join(&undo.rel).display(),
                        undo.prev
                            .as_ref()
                            .map(|p| undo.root.join(p).display().to_string())
                            .unwrap_or_else(|| "none: the file did not exist before".into()),
                        rec.run_id
                    ))
                })?;
                journal.append(Event::UndoDone {
                    step: t.step,
                    target: t.target.clone(),
                    index,
                })?;
                done.push(format!(
                    "{} {}: {}",
                    t.step,
                    t.target,
                    entry.action.describe()
                ));
            }
        }
    }
    Ok(done)
}
