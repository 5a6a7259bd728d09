//! Undoing a commit, in this process or a later one (resume after a crash): put the kept
//! previous version back, remove what did not exist, remove created directories; and,
//! once a run is final, drop the kept previous versions.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::AtFlags;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::tree::{Owner, TEMP_PREFIX, Tree, io_err, rel_components};
use crate::error::{Error, Result};

/// How to undo the replacement of one file: journal it before [`Staged::commit`].
///
/// [`Staged::commit`]: crate::Staged::commit
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUndo {
    /// The tree root.
    pub root: PathBuf,
    /// The file, relative to `root`.
    pub rel: PathBuf,
    /// The kept previous version, relative (next to `rel`); `None`: the file did not exist.
    pub prev: Option<PathBuf>,
    /// The staged temp file, relative (next to `rel`): undo removes it when a crash left it
    /// behind (it holds the new bytes, perhaps a private key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp: Option<PathBuf>,
}

/// The file names a record may touch, all in the directory of `rel`.
struct Names<'u> {
    prev: Option<&'u OsStr>,
    temp: Option<&'u OsStr>,
}

impl<'u> Names<'u> {
    /// Refuses a record naming anything but our own prev/temp files next to the target.
    fn of(u: &'u FileUndo) -> Result<Self> {
        let target = rel_components(&u.rel)?;
        let invalid = |what: &'static str, p: &Path, reason: &str| Error::Invalid {
            what,
            value: p.display().to_string(),
            reason: format!("{reason} (undo record for {})", u.rel.display()),
        };
        let sibling = |what, p: &'u Path, ours: fn(&[u8]) -> bool| -> Result<&'u OsStr> {
            let comps = rel_components(p)?;
            match (comps.split_last(), target.split_last()) {
                (Some((name, dir)), Some((_, tdir))) if dir == tdir && ours(name.as_bytes()) => {
                    Ok(*name)
                }
                _ => Err(invalid(what, p, "not one of our files next to the target")),
            }
        };
        Ok(Names {
            prev: match &u.prev {
                Some(p) => Some(sibling("previous version", p, |n| {
                    n.starts_with(b".") && n.ends_with(b".prev") && n.len() > ".x.prev".len()
                })?),
                None => None,
            },
            temp: match &u.temp {
                Some(p) => Some(sibling("temp file", p, |n| {
                    n.starts_with(TEMP_PREFIX.as_bytes())
                })?),
                None => None,
            },
        })
    }
}

fn same_inode(dir: impl AsFd + Copy, a: &OsStr, b: &OsStr) -> bool {
    let stat = |n| rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW);
    matches!((stat(a), stat(b)), (Ok(x), Ok(y)) if (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino))
}

fn unlink_if_present(dir: impl AsFd, name: &OsStr, op: &'static str, shown: &Path) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(op, shown, e)),
    }
}

/// Undo one file in any process: reopen the tree safely (no symlink followed), remove a
/// leftover temp, then `renameat(prev -> target)` (same inode: bytes, mode and owner as
/// before), or `unlinkat(target)` when it did not exist. Idempotent: a missing prev (already
/// undone, or the commit never got to it), a missing target or a missing directory is
/// nothing to do. A commit killed between keeping the previous version and replacing the
/// target left two names of the old file: the extra one is removed.
pub fn undo_file(u: &FileUndo, owner: Option<Owner>) -> Result<()> {
    let names = Names::of(u)?;
    let tree = Tree::open(&u.root, owner)?;
    let shown = u.root.join(&u.rel);
    let Some((dir, name)) = tree.split(&u.rel)? else {
        // Its directory is gone (moved away): a file that did not exist has nothing to
        // remove, but a previous version cannot be put back.
        return match &u.prev {
            None => Ok(()),
            Some(_) => Err(Error::Unsafe {
                path: shown,
                reason:
                    "its directory is gone (moved away?): the previous version cannot be put back"
                        .into(),
            }),
        };
    };
    if let Some(temp) = names.temp {
        unlink_if_present(&dir, temp, "remove temp for", &shown)?;
    }
    match names.prev {
        Some(prev) => match rustix::fs::renameat(&dir, prev, &dir, name) {
            // rename(2) between two links of one inode does nothing and succeeds.
            Ok(()) if same_inode(&dir, prev, name) => {
                unlink_if_present(&dir, prev, "remove previous version of", &shown)?;
            }
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("restore previous version of", &shown, e)),
        },
        None => unlink_if_present(&dir, name, "remove", &shown)?,
    }
    rustix::fs::fsync(&dir).map_err(|e| io_err("fsync directory of", &shown, e))
}

/// Once the run is final: unlink the kept previous version (an old private key must not
/// linger). Already gone, or no previous version, is fine.
pub fn discard_prev(u: &FileUndo, owner: Option<Owner>) -> Result<()> {
    let names = Names::of(u)?;
    let (Some(prev), Some(prev_rel)) = (names.prev, &u.prev) else {
        return Ok(());
    };
    let tree = Tree::open(&u.root, owner)?;
    let Some((dir, _)) = tree.split(&u.rel)? else {
        return Ok(());
    };
    unlink_if_present(&dir, prev, "remove", &u.root.join(prev_rel))
}

/// Remove directories a run created (relative, outermost first, as
/// [`Tree::ensure_dir`] returns them): innermost first, each only if empty
/// (`unlinkat(AT_REMOVEDIR)`). A non-empty one is left and logged; missing is fine.
pub fn remove_created_dirs(root: &Path, dirs: &[PathBuf], owner: Option<Owner>) -> Result<()> {
    let tree = Tree::open(root, owner)?;
    remove_dirs_in(&tree, dirs).map(|_| ())
}

/// [`remove_created_dirs`] in an open tree; returns the directories left.
pub(super) fn remove_dirs_in(tree: &Tree, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut left = Vec::new();
    for d in dirs.iter().rev() {
        let Some((parent, name)) = tree.split(d)? else {
            continue;
        };
        let shown = tree.root().join(d);
        match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => {
                tracing::warn!(dir = %shown.display(), "created directory not empty (or replaced); left");
                left.push(d.clone());
            }
            Err(e) => return Err(io_err("remove directory", &shown, e)),
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::super::tree::tests::{OWNER, home, names_in, rootdir};
    use super::*;
    use crate::{FileSpec, MaterialSet};

    fn pair(key: &str, cert: &str) -> MaterialSet {
        MaterialSet::new()
            .with(
                FileSpec::private_key("vault/mtls/agent.key"),
                key.as_bytes(),
            )
            .with(FileSpec::public("vault/mtls/agent.crt"), cert.as_bytes())
    }

    #[derive(Debug, PartialEq)]
    struct Snapshot {
        bytes: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        ino: u64,
    }

    fn snapshot(p: &Path) -> Snapshot {
        let m = std::fs::symlink_metadata(p).unwrap();
        Snapshot {
            bytes: std::fs::read(p).unwrap(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            ino: m.ino(),
        }
    }

    #[test]
    fn undo_in_a_fresh_tree_restores_bytes_mode_owner_exactly_and_is_idempotent() {
        let (_t, h) = home();
        let created = {
            let tree = Tree::open(&h, Some(OWNER)).unwrap();
            tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap()
        };
        // The app's own old key, with a mode and group of its choosing; no cert yet.
        let key = h.join("vault/mtls/agent.key");
        std::fs::write(&key, "OLDKEY").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        std::os::unix::fs::chown(&key, Some(OWNER.uid), Some(100)).unwrap();
        let before = snapshot(&key);

        let journal = {
            let tree = Tree::open(&h, Some(OWNER)).unwrap();
            let staged = pair("NEWKEY", "NEWCERT").stage(&tree, "r1").unwrap();
            let journal = serde_json::to_string(&staged.undo_records()).unwrap();
            staged.commit().unwrap();
            journal
        };
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "NEWKEY");

        // As a resumed process would: only the journal.
        let undo: Vec<FileUndo> = serde_json::from_str(&journal).unwrap();
        for _ in 0..2 {
            for u in undo.iter().rev() {
                undo_file(u, Some(OWNER)).unwrap();
            }
            assert_eq!(snapshot(&key), before);
            assert!(
                !h.join("vault/mtls/agent.crt").exists(),
                "did not exist: removed"
            );
            assert_eq!(names_in(&h.join("vault/mtls")), ["agent.key"]);
        }
        std::fs::remove_file(&key).unwrap();
        remove_created_dirs(&h, &created, Some(OWNER)).unwrap();
        assert_eq!(names_in(&h), Vec::<String>::new());
        // Its directory gone: a created file has nothing left to remove, but a previous
        // version cannot be put back, and undo says so instead of "restored".
        for u in &undo {
            match &u.prev {
                None => undo_file(u, Some(OWNER)).unwrap(),
                Some(_) => {
                    let err = undo_file(u, Some(OWNER)).unwrap_err().to_string();
                    assert!(err.contains("directory is gone"), "{err}");
                }
            }
            discard_prev(u, Some(OWNER)).unwrap();
        }
    }

    #[test]
    fn undo_after_a_commit_killed_between_keeping_and_replacing() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
        pair("K0", "C0")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let key = h.join("vault/mtls/agent.key");
        let before = snapshot(&key);
        let staged = pair("K1", "C1").stage(&tree, "r1").unwrap();
        let undo = staged.undo_records();
        // Killed after the links, before any rename: temps and prevs stay behind.
        for u in &undo {
            std::fs::hard_link(h.join(&u.rel), h.join(u.prev.as_ref().unwrap())).unwrap();
        }
        std::mem::forget(staged);
        assert_eq!(names_in(&h.join("vault/mtls")).len(), 6);
        for u in undo.iter().rev() {
            undo_file(u, Some(OWNER)).unwrap();
        }
        assert_eq!(snapshot(&key), before);
        assert_eq!(std::fs::metadata(&key).unwrap().nlink(), 1);
        assert_eq!(
            names_in(&h.join("vault/mtls")),
            ["agent.crt", "agent.key"],
            "no old key left under another name, no new key in a temp"
        );
    }

    #[test]
    fn discard_prev_removes_the_old_key() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
        pair("K0", "C0")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let staged = pair("K1", "C1").stage(&tree, "r1").unwrap();
        let undo = staged.undo_records();
        staged.commit().unwrap();
        let prev = h.join(undo[0].prev.as_ref().unwrap());
        assert_eq!(std::fs::read_to_string(&prev).unwrap(), "K0");
        for _ in 0..2 {
            for u in &undo {
                discard_prev(u, Some(OWNER)).unwrap();
            }
        }
        assert_eq!(names_in(&h.join("vault/mtls")), ["agent.crt", "agent.key"]);
        assert_eq!(
            std::fs::read_to_string(h.join("vault/mtls/agent.key")).unwrap(),
            "K1"
        );
    }

    #[test]
    fn undo_never_acts_through_a_directory_swapped_for_a_symlink() {
        let (t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault"), 0o700).unwrap();
        let staged = MaterialSet::new()
            .with(FileSpec::public("vault/new.pem"), "x")
            .stage(&tree, "r1")
            .unwrap();
        let undo = staged.undo_records();
        staged.commit().unwrap();
        // The app points `vault` at a root directory holding a file of the same name.
        let target = rootdir(&t);
        std::fs::write(target.join("new.pem"), "root's").unwrap();
        std::fs::rename(h.join("vault"), h.join("old")).unwrap();
        std::os::unix::fs::symlink(&target, h.join("vault")).unwrap();
        let err = undo_file(&undo[0], Some(OWNER)).unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        let err = remove_created_dirs(&h, &[PathBuf::from("vault")], Some(OWNER));
        assert!(err.is_ok(), "the link is not a directory: left");
        assert_eq!(
            std::fs::read_to_string(target.join("new.pem")).unwrap(),
            "root's"
        );
    }

    #[test]
    fn a_record_naming_other_files_is_refused() {
        let (_t, h) = home();
        std::fs::write(h.join("keep"), "x").unwrap();
        let rec = |prev: &str, temp: Option<&str>| FileUndo {
            root: h.clone(),
            rel: "vault/agent.key".into(),
            prev: Some(prev.into()),
            temp: temp.map(PathBuf::from),
        };
        for u in [
            rec("keep", None),
            rec("vault/agent.crt", None),
            rec("other/.agent.key.rotate-r1.prev", None),
            rec("vault/../.agent.key.rotate-r1.prev", None),
            rec("vault/.agent.key.rotate-r1.prev", Some("keep")),
        ] {
            let err = undo_file(&u, Some(OWNER)).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{u:?}: {err}");
            assert!(discard_prev(&u, Some(OWNER)).is_err());
        }
        assert!(h.join("keep").exists());
    }

    #[test]
    fn created_dirs_are_removed_innermost_first_and_only_when_empty() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let created = tree.ensure_dir(Path::new("a/b/c"), 0o700).unwrap();
        std::fs::write(h.join("a/b/app-file"), "x").unwrap();
        remove_created_dirs(&h, &created, Some(OWNER)).unwrap();
        assert!(!h.join("a/b/c").exists());
        assert!(
            h.join("a/b/app-file").exists(),
            "a non-empty directory is left"
        );
        std::fs::remove_file(h.join("a/b/app-file")).unwrap();
        remove_created_dirs(&h, &created, Some(OWNER)).unwrap();
        assert_eq!(names_in(&h), Vec::<String>::new());
    }
}
