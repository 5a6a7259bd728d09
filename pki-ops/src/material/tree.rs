//! A directory tree opened without following symlinks, and the fd-relative primitives
//! every other material operation is built on (`openat`, `mkdirat`, `fchown`, `fstat`).
//!
//! Every path component is opened with `O_DIRECTORY | O_NOFOLLOW`, so a symlink anywhere
//! below (or above) the root is refused rather than followed; directories are created
//! with `mkdirat`, then opened the same way and chowned on their fd; files are only ever
//! read through an `O_NOFOLLOW` fd after `fstat` says they are regular.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Numeric owner of what is created in a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// The effective user and group of this process.
    pub fn current() -> Owner {
        Owner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}

/// Mode, owner and size of a regular file (see [`Tree::stat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileMeta {
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub owner: Owner,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: std::time::SystemTime,
}

impl FileMeta {
    pub(super) fn of(st: &Stat) -> Self {
        FileMeta {
            mode: st.st_mode & 0o7777,
            owner: Owner {
                uid: st.st_uid,
                gid: st.st_gid,
            },
            size: u64::try_from(st.st_size).unwrap_or(0),
            modified: std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    u64::try_from(st.st_mtime).unwrap_or(0),
                    u32::try_from(st.st_mtime_nsec).unwrap_or(0),
                ),
        }
    }
}

/// Prefix of our temporary files (removed by [`Tree::sweep_temps`]).
pub(super) const TEMP_PREFIX: &str = ".rotate-tmp-";

/// The largest file [`Tree::read`] accepts. Keys, certificates, chains, tokens and
/// configs are far smaller; the limit keeps an app from making root read a huge (sparse)
/// file into memory.
pub const MAX_READ: u64 = 1 << 20;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// A plain I/O error for `op` on `path`.
pub(super) fn io_err(op: &'static str, path: &Path, e: Errno) -> Error {
    Error::io(
        op,
        path,
        std::io::Error::from_raw_os_error(e.raw_os_error()),
    )
}

/// A refusal: `path` is not safe to use.
pub(super) fn unsafe_path(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Open `name` in `dir` as a directory, never following a symlink. `Ok(None)` if absent.
fn open_dir_at(dir: impl AsFd, name: &OsStr, shown: &Path) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            Err(unsafe_path(shown, "is a symlink or not a directory"))
        }
        Err(e) => Err(io_err("open directory", shown, e)),
    }
}

fn must_exist(fd: Option<OwnedFd>, shown: &Path) -> Result<OwnedFd> {
    fd.ok_or_else(|| io_err("open directory", shown, Errno::NOENT))
}

/// The components of a relative path; `..`, absolute paths and root are refused.
pub(super) fn rel_components(rel: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(Error::Invalid {
                    what: "relative path",
                    value: rel.display().to_string(),
                    reason: "must be relative, without `..`".into(),
                });
            }
        }
    }
    Ok(out)
}

/// `chown` an open fd.
pub(super) fn fchown(fd: impl AsFd, owner: Owner) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
}

/// A directory tree rooted at an fd opened without following any symlink.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    fd: OwnedFd,
    owner: Option<Owner>,
}

impl Tree {
    /// Open absolute `root`, walking every component from `/` with
    /// `openat(O_DIRECTORY | O_NOFOLLOW)`: a symlink anywhere is refused
    /// ([`Error::Unsafe`], naming the component). `owner` owns what is created inside
    /// (`None`: this process). A root owned by neither `owner` nor root is refused.
    pub fn open(root: &Path, owner: Option<Owner>) -> Result<Tree> {
        if !root.is_absolute() {
            return Err(unsafe_path(root, "must be an absolute path"));
        }
        let mut fd = rustix::fs::open("/", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("open directory", Path::new("/"), e))?;
        let mut shown = PathBuf::from("/");
        for c in root.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => {
                    shown.push(n);
                    fd = must_exist(open_dir_at(&fd, n, &shown)?, &shown)?;
                }
                _ => return Err(unsafe_path(root, "contains `.` or `..`")),
            }
        }
        let tree = Tree {
            root: root.to_owned(),
            fd,
            owner,
        };
        tree.check_owner(&tree.fd, root)?;
        Ok(tree)
    }

    /// The root path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The owner given to [`Tree::open`].
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Who owns what is created here: the given owner, or this process.
    pub(super) fn owner_ids(&self) -> Owner {
        self.owner.unwrap_or_else(Owner::current)
    }

    /// An existing directory must belong to the owner or to root.
    fn check_owner(&self, fd: impl AsFd, shown: &Path) -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", shown, e))?;
        let uid = st.st_uid;
        if uid == 0 || uid == self.owner_ids().uid {
            Ok(())
        } else {
            Err(unsafe_path(
                shown,
                format!("owned by uid {uid}, expected the app user or root"),
            ))
        }
    }

    /// Open relative directory `rel` without following symlinks; `None` if a level is
    /// missing.
    pub(super) fn dir(&self, rel: &Path) -> Result<Option<OwnedFd>> {
        let mut fd = rustix::io::dup(&self.fd).map_err(|e| io_err("dup", &self.root, e))?;
        let mut shown = self.root.clone();
        for n in rel_components(rel)? {
            shown.push(n);
            match open_dir_at(&fd, n, &shown)? {
                Some(next) => fd = next,
                None => return Ok(None),
            }
        }
        Ok(Some(fd))
    }

    /// The parent directory fd and file name of `rel`; `None` if the parent is missing.
    pub(super) fn split<'r>(&self, rel: &'r Path) -> Result<Option<(OwnedFd, &'r OsStr)>> {
        let comps = rel_components(rel)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::Invalid {
                what: "file path",
                value: rel.display().to_string(),
                reason: "names no file".into(),
            });
        };
        let parent: PathBuf = parents.iter().collect();
        Ok(self.dir(&parent)?.map(|d| (d, *name)))
    }

    /// Like [`Tree::split`], but a missing parent is an error naming it.
    pub(super) fn split_required<'r>(&self, rel: &'r Path) -> Result<(OwnedFd, &'r OsStr)> {
        let parent = self.root.join(rel.parent().unwrap_or(Path::new("")));
        self.split(rel)?
            .ok_or_else(|| io_err("open directory", &parent, Errno::NOENT))
    }

    /// Check, without writing, that [`Tree::ensure_dir`] of `rel` would succeed: every
    /// existing level is a real directory (no symlink) owned by the owner or root. Levels
    /// past the first missing one would be created. For plans and preflights.
    pub fn check_dir(&self, rel: &Path) -> Result<()> {
        let mut fd = rustix::io::dup(&self.fd).map_err(|e| io_err("dup", &self.root, e))?;
        let mut shown = self.root.clone();
        for n in rel_components(rel)? {
            shown.push(n);
            match open_dir_at(&fd, n, &shown)? {
                Some(next) => {
                    self.check_owner(&next, &shown)?;
                    fd = next;
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Make sure relative directory `rel` exists. Each missing level is created with
    /// `mkdirat(mode)`, opened without following symlinks, chowned on its fd to the owner
    /// and given exactly `mode` (whatever the umask); an existing level must be a real
    /// directory owned by the owner or root, else [`Error::Unsafe`]. Returns the levels
    /// it created (relative, outermost first) so they can be removed on undo; on error the
    /// levels created by this call are removed again (when still empty).
    pub fn ensure_dir(&self, rel: &Path, mode: u32) -> Result<Vec<PathBuf>> {
        if mode & !0o7777 != 0 {
            return Err(Error::Invalid {
                what: "directory mode",
                value: format!("{mode:o}"),
                reason: "only permission bits (0o7777) are allowed".into(),
            });
        }
        let mut created = Vec::new();
        match self.ensure_levels(rel, mode, &mut created) {
            Ok(()) => Ok(created),
            Err(e) => {
                if let Err(undo) = super::undo::remove_dirs_in(self, &created) {
                    tracing::warn!(error = %undo, "cannot remove directories created before a failure");
                }
                Err(e)
            }
        }
    }

    fn ensure_levels(&self, rel: &Path, mode: u32, created: &mut Vec<PathBuf>) -> Result<()> {
        let owner = self.owner_ids();
        let mut fd = rustix::io::dup(&self.fd).map_err(|e| io_err("dup", &self.root, e))?;
        let mut shown = self.root.clone();
        let mut relpath = PathBuf::new();
        for n in rel_components(rel)? {
            shown.push(n);
            relpath.push(n);
            let made = match rustix::fs::mkdirat(&fd, n, Mode::from_raw_mode(mode)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(io_err("create directory", &shown, e)),
            };
            if made {
                created.push(relpath.clone());
            }
            let next = must_exist(open_dir_at(&fd, n, &shown)?, &shown)?;
            if made {
                fchown(&next, owner).map_err(|e| io_err("chown", &shown, e))?;
                // mkdirat applied the umask; set the exact mode on the fd.
                rustix::fs::fchmod(&next, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
            } else {
                self.check_owner(&next, &shown)?;
            }
            fd = next;
        }
        Ok(())
    }

    /// Open regular file `name` in `dir` for reading: `O_NOFOLLOW`, then `fstat`. A
    /// symlink or anything but a regular file is [`Error::Unsafe`]; `None` if absent.
    pub(super) fn open_regular(
        dir: impl AsFd,
        name: &OsStr,
        shown: &Path,
    ) -> Result<Option<(OwnedFd, Stat)>> {
        // NONBLOCK: opening a FIFO planted in place of a file must not hang.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(unsafe_path(shown, "is a symlink")),
            Err(e) => return Err(io_err("open", shown, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat", shown, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(unsafe_path(shown, "is not a regular file"));
        }
        Ok(Some((fd, st)))
    }

    /// Read all of an fd opened by [`Tree::open_regular`], at most [`MAX_READ`] bytes.
    pub(super) fn read_fd(fd: OwnedFd, st: &Stat, shown: &Path) -> Result<Zeroizing<Vec<u8>>> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > MAX_READ {
            return Err(unsafe_path(
                shown,
                format!("is {size} bytes, more than the {MAX_READ} expected of key material"),
            ));
        }
        // Capacity up front: a reallocation would leave unwiped copies of key bytes.
        let cap = usize::try_from(size).unwrap_or(0) + 1;
        let mut buf = Zeroizing::new(Vec::with_capacity(cap));
        std::fs::File::from(fd)
            .take(MAX_READ + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read", shown, e))?;
        if buf.len() as u64 > MAX_READ {
            return Err(unsafe_path(shown, "grew past the size limit while read"));
        }
        Ok(buf)
    }

    /// Read regular file `rel` without following symlinks (a symlink or a non-regular
    /// file is [`Error::Unsafe`]); `None` if it or its directory is absent. At most
    /// [`MAX_READ`] bytes.
    pub fn read(&self, rel: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let Some((dir, name)) = self.split(rel)? else {
            return Ok(None);
        };
        let shown = self.root.join(rel);
        match Self::open_regular(&dir, name, &shown)? {
            Some((fd, st)) => Self::read_fd(fd, &st, &shown).map(Some),
            None => Ok(None),
        }
    }

    /// Mode, owner and size of regular file `rel` (no symlink followed, as
    /// [`Tree::read`]); `None` if absent.
    pub fn stat(&self, rel: &Path) -> Result<Option<FileMeta>> {
        let Some((dir, name)) = self.split(rel)? else {
            return Ok(None);
        };
        let shown = self.root.join(rel);
        Ok(Self::open_regular(&dir, name, &shown)?.map(|(_, st)| FileMeta::of(&st)))
    }

    /// Remove our leftover temp files (`.rotate-tmp-*`) in directory `rel`: a killed run
    /// may have left key bytes in one. Directories so named are left alone. Returns how
    /// many were removed; a missing directory has none.
    pub fn sweep_temps(&self, rel: &Path) -> Result<usize> {
        let shown = self.root.join(rel);
        let Some(dir) = self.dir(rel)? else {
            return Ok(0);
        };
        let mut names: Vec<OsString> = Vec::new();
        let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| io_err("list", &shown, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &shown, e))?;
            let n = entry.file_name().to_bytes();
            if n.starts_with(TEMP_PREFIX.as_bytes()) && entry.file_type() != FileType::Directory {
                names.push(OsStr::from_bytes(n).to_owned());
            }
        }
        let mut removed = 0;
        for n in &names {
            match rustix::fs::unlinkat(&dir, n.as_os_str(), AtFlags::empty()) {
                Ok(()) => removed += 1,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("remove", &shown.join(n), e)),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    pub(crate) const OWNER: Owner = Owner {
        uid: 4242,
        gid: 4243,
    };

    /// Serialises the tests that change the process umask.
    pub(crate) static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A temp dir holding `home/`, owned by [`OWNER`] as an app's home is.
    pub(crate) fn home() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("home");
        std::fs::create_dir(&h).unwrap();
        std::os::unix::fs::chown(&h, Some(OWNER.uid), Some(OWNER.gid)).unwrap();
        (t, h)
    }

    /// The names in `dir`, sorted.
    pub(crate) fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A root-owned directory outside the home, as an attacker's symlink would target.
    pub(crate) fn rootdir(t: &tempfile::TempDir) -> PathBuf {
        let d = t.path().join("rootowned");
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn open_refuses_a_symlink_anywhere_and_a_foreign_root() {
        let (t, h) = home();
        let link = t.path().join("linkhome");
        std::os::unix::fs::symlink(&h, &link).unwrap();
        let err = Tree::open(&link, Some(OWNER)).unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert!(
            err.to_string().contains("symlink") && err.to_string().contains("linkhome"),
            "{err}"
        );
        // An ancestor that is a symlink.
        std::fs::create_dir(h.join("sub")).unwrap();
        let err = Tree::open(&link.join("sub"), Some(OWNER)).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        // A root owned by someone else.
        let err = Tree::open(
            &h,
            Some(Owner {
                uid: 5555,
                gid: 5555,
            }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("uid 4242"), "{err}");
        // Root-owned is fine; relative is not.
        Tree::open(t.path(), Some(OWNER)).unwrap();
        assert!(Tree::open(Path::new("home"), None).is_err());
    }

    #[test]
    fn ensure_dir_refuses_a_symlinked_level_and_creates_nothing_behind_it() {
        let (t, h) = home();
        let target = rootdir(&t);
        std::os::unix::fs::symlink(&target, h.join(".vault-agent-x")).unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let err = tree
            .ensure_dir(Path::new(".vault-agent-x/bin"), 0o755)
            .unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains(".vault-agent-x"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        // Deeper: the link below a level we create ourselves.
        std::fs::create_dir(h.join("vault")).unwrap();
        std::os::unix::fs::symlink(&target, h.join("vault/mtls")).unwrap();
        assert!(tree.ensure_dir(Path::new("vault/mtls/x"), 0o700).is_err());
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn ensure_dir_refuses_a_level_owned_by_another_user() {
        let (_t, h) = home();
        std::fs::create_dir(h.join("other")).unwrap();
        std::os::unix::fs::chown(h.join("other"), Some(5555), Some(5555)).unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let err = tree.ensure_dir(Path::new("other/tls"), 0o700).unwrap_err();
        assert!(err.to_string().contains("uid 5555"), "{err}");
        assert!(!h.join("other/tls").exists());
    }

    #[test]
    fn created_dirs_are_owned_by_the_owner_with_the_exact_mode_whatever_the_umask() {
        let _g = UMASK.lock().unwrap();
        for umask in [0, 0o077] {
            let (_t, h) = home();
            std::fs::create_dir(h.join("existing")).unwrap();
            let tree = Tree::open(&h, Some(OWNER)).unwrap();
            let old = rustix::process::umask(Mode::from_raw_mode(umask));
            let created = tree.ensure_dir(Path::new("existing/vault/mtls"), 0o750);
            rustix::process::umask(old);
            assert_eq!(
                created.unwrap(),
                [
                    PathBuf::from("existing/vault"),
                    PathBuf::from("existing/vault/mtls")
                ],
                "only the levels it made, outermost first"
            );
            for d in ["existing/vault", "existing/vault/mtls"] {
                let fd = rustix::fs::open(h.join(d), DIR_FLAGS, Mode::empty()).unwrap();
                let st = rustix::fs::fstat(&fd).unwrap();
                assert_eq!(
                    (st.st_uid, st.st_gid, st.st_mode & 0o7777),
                    (OWNER.uid, OWNER.gid, 0o750),
                    "{d} with umask {umask:o}"
                );
            }
            // The existing level was left as it was (root's, untouched).
            assert_eq!(std::fs::metadata(h.join("existing")).unwrap().uid(), 0);
            assert!(
                tree.ensure_dir(Path::new("existing/vault/mtls"), 0o750)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn read_refuses_symlinks_fifos_and_huge_files_and_absent_is_none() {
        let (t, h) = home();
        let secret = t.path().join("shadow");
        std::fs::write(&secret, "root:secret-hash").unwrap();
        std::os::unix::fs::symlink(&secret, h.join("agent.key")).unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let err = tree.read(Path::new("agent.key")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(tree.stat(Path::new("agent.key")).is_err());

        let fifo = h.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = tree.read(Path::new("fifo")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let big = std::fs::File::create(h.join("big")).unwrap();
        big.set_len(1 << 40).unwrap(); // sparse: costs the app nothing
        let err = tree.read(Path::new("big")).unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");

        std::fs::write(h.join("ok.pem"), "PEM").unwrap();
        assert_eq!(
            tree.read(Path::new("ok.pem")).unwrap().unwrap().as_slice(),
            b"PEM"
        );
        let meta = tree.stat(Path::new("ok.pem")).unwrap().unwrap();
        assert_eq!((meta.size, meta.owner.uid), (3, 0));
        assert!(tree.read(Path::new("missing")).unwrap().is_none());
        assert!(
            tree.read(Path::new("vault/mtls/agent.crt"))
                .unwrap()
                .is_none()
        );
        assert!(
            tree.stat(Path::new("vault/mtls/agent.crt"))
                .unwrap()
                .is_none()
        );
        assert!(tree.read(Path::new("../x")).is_err());
        assert!(tree.read(Path::new("/etc/shadow")).is_err());
    }

    #[test]
    fn sweep_removes_leftover_temps_only() {
        let (t, h) = home();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        std::fs::write(h.join(".rotate-tmp-agent.key-r9"), "KEYBYTES").unwrap();
        std::os::unix::fs::symlink(&secret, h.join(".rotate-tmp-link-r9")).unwrap();
        std::fs::create_dir(h.join(".rotate-tmp-dir")).unwrap();
        std::fs::write(h.join("keep.txt"), "x").unwrap();
        assert_eq!(tree.sweep_temps(Path::new("")).unwrap(), 2);
        assert!(!h.join(".rotate-tmp-agent.key-r9").exists());
        assert!(h.join("keep.txt").exists() && h.join(".rotate-tmp-dir").is_dir());
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "s",
            "the link, not its target"
        );
        assert_eq!(tree.sweep_temps(Path::new("missing")).unwrap(), 0);
    }
}
