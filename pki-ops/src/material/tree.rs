//! A directory tree opened without following symlinks, and everything done inside it
//! relative to directory fds (`openat`, `mkdirat`, `fchown`, `linkat`, `renameat`).
//!
//! The caller (root) writes into trees an unprivileged user owns, so that user is the
//! attacker: every path component is opened with `O_NOFOLLOW | O_DIRECTORY`, files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` and their final mode (a key is `0600` from
//! the first byte), ownership is set on the open fd, and the previous version of a file is
//! kept as a hard link made with `linkat(.., 0)` (a symlink is linked as itself, never
//! followed), so nothing is ever read, written or chowned through a path the user
//! controls.

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
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

/// Prefix of our temporary files (swept by [`Tree::sweep_temps`]).
const TEMP_PREFIX: &str = ".rotate-tmp-";

/// A directory tree rooted at an fd opened without following any symlink.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    fd: OwnedFd,
    owner: Option<Owner>,
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

fn io_err(op: &'static str, path: &Path, e: Errno) -> Error {
    if e == Errno::NOSPC || e == Errno::DQUOT {
        return Error::NoSpace {
            path: path.to_owned(),
        };
    }
    Error::io(op, path, errno_io(e))
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// Open `name` in `dir` as a directory, never following a symlink.
fn open_dir_at(dir: impl AsFd, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => unsafe_path(shown, "is a symlink or not a directory"),
        e => io_err("open directory", shown, e),
    })
}

/// The components of a relative path; `..`, absolute and empty paths are refused.
fn rel_components(rel: &Path) -> Result<Vec<&OsStr>> {
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

impl Tree {
    /// Open absolute `root`, walking every component from `/` without following a
    /// symlink. `owner` owns what is created inside (`None`: the caller). A root owned by
    /// neither `owner` nor root is refused.
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
                    fd = open_dir_at(&fd, n, &shown)?;
                }
                _ => return Err(unsafe_path(root, "contains `.` or `..`")),
            }
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat", root, e))?;
        let allowed = owner.is_none_or(|o| st.st_uid == o.uid) || st.st_uid == 0;
        if !allowed {
            return Err(unsafe_path(
                root,
                format!("owned by uid {}, expected the app user or root", st.st_uid),
            ));
        }
        Ok(Tree {
            root: root.to_owned(),
            fd,
            owner,
        })
    }

    /// The root path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The owner of what is created here.
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Open relative directory `rel` (which must exist) without following symlinks.
    fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        let mut fd = rustix::io::dup(&self.fd).map_err(|e| io_err("dup", &self.root, e))?;
        let mut shown = self.root.clone();
        for n in rel_components(rel)? {
            shown.push(n);
            fd = open_dir_at(&fd, n, &shown)?;
        }
        Ok(fd)
    }

    fn check_owner(&self, fd: impl AsFd, shown: &Path) -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", shown, e))?;
        let ok = st.st_uid == 0 || self.owner.is_none_or(|o| o.uid == st.st_uid);
        if ok {
            Ok(())
        } else {
            Err(unsafe_path(
                shown,
                format!("owned by uid {}, expected the app user or root", st.st_uid),
            ))
        }
    }

    /// Make sure relative directory `rel` exists: each missing level is created with
    /// `mode`, opened without following symlinks and chowned on its fd; an existing level
    /// must be a real directory owned by the tree's owner or root. Returns the levels it
    /// created (relative, outermost first) so they can be removed on undo.
    pub fn ensure_dir(&self, rel: &Path, mode: u32) -> Result<Vec<PathBuf>> {
        let mut fd = rustix::io::dup(&self.fd).map_err(|e| io_err("dup", &self.root, e))?;
        let mut shown = self.root.clone();
        let mut relpath = PathBuf::new();
        let mut created = Vec::new();
        for n in rel_components(rel)? {
            shown.push(n);
            relpath.push(n);
            let made = match rustix::fs::mkdirat(&fd, n, Mode::from_raw_mode(mode)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(io_err("create directory", &shown, e)),
            };
            let next = open_dir_at(&fd, n, &shown)?;
            if made {
                if let Some(o) = self.owner {
                    rustix::fs::fchown(
                        &next,
                        Some(rustix::fs::Uid::from_raw(o.uid)),
                        Some(rustix::fs::Gid::from_raw(o.gid)),
                    )
                    .map_err(|e| io_err("chown", &shown, e))?;
                }
                // mkdir applies the umask; set the exact mode on the fd.
                rustix::fs::fchmod(&next, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
                created.push(relpath.clone());
            } else {
                self.check_owner(&next, &shown)?;
            }
            fd = next;
        }
        Ok(created)
    }

    /// Read regular file `rel` without following symlinks; `None` if absent.
    pub fn read(&self, rel: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let Some((dir, name)) = self.split_existing(rel)? else {
            return Ok(None);
        };
        let shown = self.root.join(rel);
        let Some(fd) = self.open_file(&dir, name, &shown)? else {
            return Ok(None);
        };
        let mut file = std::fs::File::from(fd);
        let mut buf = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut file, &mut buf)
            .map_err(|e| Error::io("read", &shown, e))?;
        Ok(Some(buf))
    }

    /// The mode, owner and size of regular file `rel` (no symlink followed).
    pub fn stat(&self, rel: &Path) -> Result<Option<(u32, Owner, u64)>> {
        let Some((dir, name)) = self.split_existing(rel)? else {
            return Ok(None);
        };
        let shown = self.root.join(rel);
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((
                st.st_mode & 0o7777,
                Owner {
                    uid: st.st_uid,
                    gid: st.st_gid,
                },
                st.st_size as u64,
            ))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err("stat", &shown, e)),
        }
    }

    fn open_file(&self, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<Option<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(unsafe_path(shown, "is a symlink")),
            Err(e) => return Err(io_err("open", shown, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat", shown, e))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(unsafe_path(shown, "is not a regular file"));
        }
        Ok(Some(fd))
    }

    /// Like [`Tree::split`], but a missing parent directory is `None`.
    fn split_existing<'r>(&self, rel: &'r Path) -> Result<Option<(OwnedFd, &'r OsStr)>> {
        match self.split(rel) {
            Ok(x) => Ok(Some(x)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The directory fd and file name of relative `rel`.
    fn split<'r>(&self, rel: &'r Path) -> Result<(OwnedFd, &'r OsStr)> {
        let comps = rel_components(rel)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::Invalid {
                what: "file path",
                value: rel.display().to_string(),
                reason: "empty".into(),
            });
        };
        let parent: PathBuf = parents.iter().collect();
        Ok((self.dir(&parent)?, name))
    }

    /// Remove leftover temp files of ours in directory `rel` (a killed run may have left
    /// key bytes in one). Returns how many.
    pub fn sweep_temps(&self, rel: &Path) -> Result<usize> {
        let shown = self.root.join(rel);
        let dir = match self.dir(rel) {
            Ok(d) => d,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        let it = rustix::fs::Dir::read_from(&dir).map_err(|e| io_err("list", &shown, e))?;
        for entry in it {
            let entry = entry.map_err(|e| io_err("list", &shown, e))?;
            let n = entry.file_name().to_bytes();
            if n.starts_with(TEMP_PREFIX.as_bytes()) {
                names.push(OsStr::from_bytes(n).to_owned());
            }
        }
        for n in &names {
            rustix::fs::unlinkat(&dir, n.as_os_str(), AtFlags::empty())
                .map_err(|e| io_err("remove", &shown.join(n), e))?;
        }
        Ok(names.len())
    }
}

/// Where and how one file of a set is written: a path relative to the tree and a mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Relative to the tree root.
    pub path: PathBuf,
    /// Permission bits, applied from creation.
    pub mode: u32,
}

impl FileSpec {
    /// A file with `mode`.
    pub fn new(path: impl Into<PathBuf>, mode: u32) -> Self {
        FileSpec {
            path: path.into(),
            mode,
        }
    }
    /// A private key: `0600`.
    pub fn private_key(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o600)
    }
    /// A certificate or CA bundle: `0644`.
    pub fn public(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o644)
    }
}

/// One file of a set: spec and bytes (wiped on drop, never printed).
#[derive(Clone)]
pub struct MaterialFile {
    /// Where and how.
    pub spec: FileSpec,
    contents: Zeroizing<Vec<u8>>,
}

impl MaterialFile {
    /// The bytes.
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl std::fmt::Debug for MaterialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterialFile")
            .field("spec", &self.spec)
            .field("bytes", &self.contents.len())
            .finish_non_exhaustive()
    }
}

/// Files that belong together (key + certificate + chain): staged completely before any
/// of them replaces its target.
#[derive(Debug, Clone, Default)]
pub struct MaterialSet {
    files: Vec<MaterialFile>,
}

/// What happened (or would happen) to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOutcome {
    /// Relative path.
    pub path: PathBuf,
    /// Mode.
    pub mode: u32,
    /// Size of the new content.
    pub bytes: usize,
    /// Content, mode or owner differ (so it is, or would be, replaced).
    pub changed: bool,
    /// The target existed.
    pub existed: bool,
    /// Where its previous version is kept (relative), when replaced.
    pub previous: Option<PathBuf>,
}

/// The outcome of [`Staged::commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    /// One per file, in order.
    pub files: Vec<FileOutcome>,
}

/// How to undo the replacement of one file (journal this before [`Staged::commit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUndo {
    /// The tree root.
    pub root: PathBuf,
    /// The file, relative.
    pub rel: PathBuf,
    /// The kept previous version, relative; `None`: the file did not exist.
    pub prev: Option<PathBuf>,
}

struct StagedFile {
    dir: OwnedFd,
    name: std::ffi::OsString,
    temp: std::ffi::OsString,
    outcome: FileOutcome,
}

/// A staged set: every temp file written and synced, nothing replaced yet. Dropping it
/// removes the temps.
pub struct Staged {
    root: PathBuf,
    files: Vec<StagedFile>,
    committed: bool,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("root", &self.root)
            .field(
                "files",
                &self.files.iter().map(|s| &s.outcome).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MaterialSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file.
    #[must_use]
    pub fn with(mut self, spec: FileSpec, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push(MaterialFile {
            spec,
            contents: Zeroizing::new(contents.into()),
        });
        self
    }

    /// The files, in order.
    pub fn files(&self) -> &[MaterialFile] {
        &self.files
    }

    /// Read-only: which files would change.
    pub fn diff(&self, tree: &Tree) -> Result<Vec<FileOutcome>> {
        self.files
            .iter()
            .map(|f| {
                let current = tree.read(&f.spec.path)?;
                let stat = tree.stat(&f.spec.path)?;
                let same = current.as_deref().map(|c| c.as_slice()) == Some(f.contents())
                    && stat.is_some_and(|(mode, owner, _)| {
                        mode == f.spec.mode && tree.owner.is_none_or(|o| o == owner)
                    });
                Ok(FileOutcome {
                    path: f.spec.path.clone(),
                    mode: f.spec.mode,
                    bytes: f.contents().len(),
                    changed: !same,
                    existed: stat.is_some(),
                    previous: None,
                })
            })
            .collect()
    }

    /// Phase 1, all or nothing: a temp file next to each changed target, created with its
    /// final mode, chowned on its fd, written and synced. Any failure (a full disk:
    /// [`Error::NoSpace`]) removes the temps and replaces nothing.
    pub fn stage(&self, tree: &Tree, run_id: &str) -> Result<Staged> {
        let diff = self.diff(tree)?;
        let mut staged = Staged {
            root: tree.root.clone(),
            files: Vec::new(),
            committed: false,
        };
        for (f, mut outcome) in self.files.iter().zip(diff) {
            if !outcome.changed {
                staged.files.push(StagedFile {
                    dir: tree.dir(Path::new(""))?,
                    name: Default::default(),
                    temp: Default::default(),
                    outcome,
                });
                continue;
            }
            let (dir, name) = tree.split(&f.spec.path)?;
            let shown = tree.root.join(&f.spec.path);
            let temp = std::ffi::OsString::from(format!(
                "{TEMP_PREFIX}{}-{}",
                name.to_string_lossy(),
                run_id
            ));
            let fd = rustix::fs::openat(
                &dir,
                temp.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(f.spec.mode),
            )
            .map_err(|e| io_err("create temp", &shown, e))?;
            // Registered first, so a failure below still removes it.
            if outcome.existed {
                outcome.previous = Some(prev_rel(&f.spec.path, run_id));
            }
            staged.files.push(StagedFile {
                dir,
                name: name.to_owned(),
                temp,
                outcome,
            });
            let fill = || -> Result<()> {
                if let Some(o) = tree.owner {
                    rustix::fs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(o.uid)),
                        Some(rustix::fs::Gid::from_raw(o.gid)),
                    )
                    .map_err(|e| io_err("chown", &shown, e))?;
                }
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(f.spec.mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
                let mut file =
                    std::fs::File::from(fd.try_clone().map_err(|e| Error::io("dup", &shown, e))?);
                file.write_all(f.contents())
                    .map_err(|e| match e.raw_os_error() {
                        Some(code)
                            if code == Errno::NOSPC.raw_os_error()
                                || code == Errno::DQUOT.raw_os_error() =>
                        {
                            Error::NoSpace {
                                path: shown.clone(),
                            }
                        }
                        _ => Error::io("write", &shown, e),
                    })?;
                file.sync_all().map_err(|e| match e.raw_os_error() {
                    Some(code) if code == Errno::NOSPC.raw_os_error() => Error::NoSpace {
                        path: shown.clone(),
                    },
                    _ => Error::io("fsync", &shown, e),
                })
            };
            fill()?;
        }
        Ok(staged)
    }
}

/// `.<name>.rotate-<run_id>.prev` next to `rel`.
fn prev_rel(rel: &Path, run_id: &str) -> PathBuf {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let p = format!(".{name}.rotate-{run_id}.prev");
    match rel.parent() {
        Some(parent) => parent.join(p),
        None => PathBuf::from(p),
    }
}

impl Staged {
    /// How to undo [`Staged::commit`], one record per changed file; known before any
    /// rename, so the caller journals them first.
    pub fn undo_records(&self) -> Vec<FileUndo> {
        self.files
            .iter()
            .filter(|f| f.outcome.changed)
            .map(|f| FileUndo {
                root: self.root.clone(),
                rel: f.outcome.path.clone(),
                prev: f.outcome.previous.clone(),
            })
            .collect()
    }

    /// Phase 2: per changed file, keep the current target as a hard link (its previous
    /// version: same inode, bytes, mode, owner), then rename the temp over the target.
    /// Each directory is synced once at the end.
    pub fn commit(mut self) -> Result<WriteReport> {
        for f in self.files.iter().filter(|f| f.outcome.changed) {
            let shown = self.root.join(&f.outcome.path);
            if let Some(prev) = &f.outcome.previous {
                let prev_name = prev.file_name().unwrap_or_default();
                match rustix::fs::linkat(
                    &f.dir,
                    f.name.as_os_str(),
                    &f.dir,
                    prev_name,
                    AtFlags::empty(),
                ) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err("keep previous version of", &shown, e)),
                }
            }
            rustix::fs::renameat(&f.dir, f.temp.as_os_str(), &f.dir, f.name.as_os_str())
                .map_err(|e| io_err("replace", &shown, e))?;
        }
        self.committed = true;
        for f in self.files.iter().filter(|f| f.outcome.changed) {
            rustix::fs::fsync(&f.dir)
                .map_err(|e| io_err("fsync directory of", &self.root.join(&f.outcome.path), e))?;
        }
        Ok(WriteReport {
            files: self.files.iter().map(|f| f.outcome.clone()).collect(),
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for f in self.files.iter().filter(|f| f.outcome.changed) {
            let _ = rustix::fs::unlinkat(&f.dir, f.temp.as_os_str(), AtFlags::empty());
        }
    }
}

/// Undo one replaced file, in any process (resume after a crash): the kept previous
/// version is renamed back over the target, or the target removed when there was none.
/// Idempotent.
pub fn undo_file(u: &FileUndo, owner: Option<Owner>) -> Result<()> {
    let tree = Tree::open(&u.root, owner)?;
    let (dir, name) = tree.split(&u.rel)?;
    let shown = u.root.join(&u.rel);
    match &u.prev {
        Some(prev) => {
            let prev_name = prev.file_name().unwrap_or_default();
            match rustix::fs::renameat(&dir, prev_name, &dir, name) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("restore previous version of", &shown, e)),
            }
        }
        None => match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("remove", &shown, e)),
        },
    }
    rustix::fs::fsync(&dir).map_err(|e| io_err("fsync directory of", &shown, e))
}

/// Unlink the kept previous version of a committed file (an old private key must not
/// linger once no undo needs it). Absent is fine.
pub fn discard_prev(u: &FileUndo, owner: Option<Owner>) -> Result<()> {
    let Some(prev) = &u.prev else { return Ok(()) };
    let tree = Tree::open(&u.root, owner)?;
    let (dir, name) = tree.split(prev)?;
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err("remove", &u.root.join(prev), e)),
    }
}

/// Remove directories a run created (relative, outermost first), innermost first and only
/// while empty; a non-empty one is left (and logged).
pub fn remove_created_dirs(root: &Path, dirs: &[PathBuf], owner: Option<Owner>) -> Result<()> {
    let tree = Tree::open(root, owner)?;
    for d in dirs.iter().rev() {
        let (parent, name) = match tree.split(d) {
            Ok(x) => x,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                tracing::warn!(dir = %root.join(d).display(), "created directory not empty; left");
            }
            Err(e) => return Err(io_err("remove directory", &root.join(d), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    const OWNER: Owner = Owner {
        uid: 4242,
        gid: 4243,
    };

    fn home() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("home");
        std::fs::create_dir(&h).unwrap();
        std::os::unix::fs::chown(&h, Some(OWNER.uid), Some(OWNER.gid)).unwrap();
        (t, h)
    }

    fn pair(key: &str, cert: &str) -> MaterialSet {
        MaterialSet::new()
            .with(
                FileSpec::private_key("vault/mtls/agent.key"),
                key.as_bytes(),
            )
            .with(FileSpec::public("vault/mtls/agent.crt"), cert.as_bytes())
    }

    #[test]
    fn a_symlinked_directory_is_refused_and_nothing_is_created_behind_it() {
        let (t, h) = home();
        let target = t.path().join("rootowned");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, h.join(".vault-agent-x")).unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let err = tree
            .ensure_dir(Path::new(".vault-agent-x/bin"), 0o755)
            .unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        // A symlinked home itself is refused too.
        let link = t.path().join("linkhome");
        std::os::unix::fs::symlink(&h, &link).unwrap();
        let err = Tree::open(&link, Some(OWNER)).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn files_and_dirs_get_exact_modes_and_owner_from_creation() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let old = rustix::process::umask(Mode::from_raw_mode(0o077));
        let created = tree.ensure_dir(Path::new("vault/mtls"), 0o755).unwrap();
        rustix::process::umask(old);
        assert_eq!(
            created,
            [PathBuf::from("vault"), PathBuf::from("vault/mtls")]
        );
        for d in ["vault", "vault/mtls"] {
            let m = std::fs::metadata(h.join(d)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o777),
                (OWNER.uid, OWNER.gid, 0o755)
            );
        }
        let staged = pair("KEY", "CERT").stage(&tree, "r1").unwrap();
        staged.commit().unwrap();
        let k = std::fs::metadata(h.join("vault/mtls/agent.key")).unwrap();
        assert_eq!((k.uid(), k.mode() & 0o777), (OWNER.uid, 0o600));
        let c = std::fs::metadata(h.join("vault/mtls/agent.crt")).unwrap();
        assert_eq!(c.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_target_swapped_for_a_symlink_is_kept_as_the_link_never_its_target() {
        let (t, h) = home();
        let secret = t.path().join("shadow");
        std::fs::write(&secret, "root:secret-hash").unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
        std::fs::write(h.join("vault/mtls/agent.key"), "OLD").unwrap();
        let staged = pair("NEW", "CERT").stage(&tree, "r1").unwrap();
        // The attacker swaps the key for a symlink between the check and the commit.
        std::fs::remove_file(h.join("vault/mtls/agent.key")).unwrap();
        std::os::unix::fs::symlink(&secret, h.join("vault/mtls/agent.key")).unwrap();
        let undo = staged.undo_records();
        staged.commit().unwrap();
        let prev = h.join(undo[0].prev.as_ref().unwrap());
        let meta = std::fs::symlink_metadata(&prev).unwrap();
        assert!(meta.file_type().is_symlink(), "the link itself was kept");
        for entry in std::fs::read_dir(h.join("vault/mtls")).unwrap() {
            let p = entry.unwrap().path();
            if !std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                assert!(!std::fs::read_to_string(&p).unwrap().contains("secret-hash"));
            }
        }
        // And reading through it is refused.
        assert!(tree.read(&undo[0].prev.clone().unwrap()).is_err());
    }

    #[test]
    fn undo_restores_bytes_mode_owner_and_is_idempotent() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
        pair("OLDKEY", "OLDCERT")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let staged = pair("NEWKEY", "OLDCERT").stage(&tree, "r1").unwrap();
        let undo = staged.undo_records();
        assert_eq!(undo.len(), 1, "the unchanged cert is not replaced");
        staged.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(h.join("vault/mtls/agent.key")).unwrap(),
            "NEWKEY"
        );
        undo_file(&undo[0], Some(OWNER)).unwrap();
        undo_file(&undo[0], Some(OWNER)).unwrap();
        let k = h.join("vault/mtls/agent.key");
        assert_eq!(std::fs::read_to_string(&k).unwrap(), "OLDKEY");
        let m = std::fs::metadata(&k).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (OWNER.uid, 0o600));

        // A file the run created is removed by undo; discard_prev drops an old key.
        let staged = MaterialSet::new()
            .with(FileSpec::public("vault/new.pem"), b"x".to_vec())
            .stage(&tree, "r2")
            .unwrap();
        let u = staged.undo_records();
        staged.commit().unwrap();
        undo_file(&u[0], Some(OWNER)).unwrap();
        assert!(!h.join("vault/new.pem").exists());

        let staged = pair("K3", "C3").stage(&tree, "r3").unwrap();
        let u = staged.undo_records();
        staged.commit().unwrap();
        let prev = h.join(u[0].prev.as_ref().unwrap());
        assert!(prev.exists());
        discard_prev(&u[0], Some(OWNER)).unwrap();
        assert!(!prev.exists());
    }

    #[test]
    fn two_runs_keep_distinct_previous_versions() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
        pair("K0", "C0")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let a = pair("K1", "C1").stage(&tree, "r1").unwrap();
        let ua = a.undo_records();
        a.commit().unwrap();
        let b = pair("K2", "C2").stage(&tree, "r2").unwrap();
        let ub = b.undo_records();
        b.commit().unwrap();
        assert_ne!(ua[0].prev, ub[0].prev);
        assert_eq!(
            std::fs::read_to_string(h.join(ua[0].prev.as_ref().unwrap())).unwrap(),
            "K0"
        );
    }

    #[test]
    fn a_full_disk_fails_before_anything_is_replaced() {
        let (t, _) = home();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .status()
            .expect("run mount (util-linux); this test needs root");
        assert!(st.success(), "mount -t tmpfs failed: run the tests as root");
        let result = std::panic::catch_unwind(|| {
            std::os::unix::fs::chown(&mnt, Some(OWNER.uid), Some(OWNER.gid)).unwrap();
            let tree = Tree::open(&mnt, Some(OWNER)).unwrap();
            tree.ensure_dir(Path::new("vault/mtls"), 0o700).unwrap();
            pair("OLDKEY", "OLDCERT")
                .stage(&tree, "r0")
                .unwrap()
                .commit()
                .unwrap();
            // Fill the disk.
            let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
            let chunk = vec![0u8; 4096];
            while filler.write_all(&chunk).is_ok() {}
            let big = "K".repeat(32 * 1024);
            let err = pair(&big, &big).stage(&tree, "r1").unwrap_err();
            assert!(matches!(err, Error::NoSpace { .. }), "{err}");
            assert_eq!(
                std::fs::read_to_string(mnt.join("vault/mtls/agent.key")).unwrap(),
                "OLDKEY"
            );
            assert_eq!(
                std::fs::read_to_string(mnt.join("vault/mtls/agent.crt")).unwrap(),
                "OLDCERT"
            );
            assert_eq!(
                tree.sweep_temps(Path::new("vault/mtls")).unwrap(),
                0,
                "no temp left"
            );
        });
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn reading_below_a_missing_directory_is_absent_not_an_error() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
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
    }

    #[test]
    fn sweep_removes_leftover_temps_only() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        std::fs::write(h.join(".rotate-tmp-agent.key-r9"), "KEYBYTES").unwrap();
        std::fs::write(h.join("keep.txt"), "x").unwrap();
        assert_eq!(tree.sweep_temps(Path::new("")).unwrap(), 1);
        assert!(h.join("keep.txt").exists());
    }
}
