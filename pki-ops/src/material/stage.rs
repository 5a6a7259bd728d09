//! Writing a set of files that belong together: [`MaterialSet::stage`] writes every file
//! completely next to its target first (phase 1), [`Staged::commit`] then keeps each
//! previous version as a hard link and renames the new files into place (phase 2).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use zeroize::Zeroizing;

use super::tree::{FileMeta, Owner, TEMP_PREFIX, Tree, fchown, io_err, rel_components};
use super::undo::FileUndo;
use crate::error::{Error, Result};

/// Where and how one file of a set is written: a path relative to the tree and a mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Relative to the tree root; absolute paths and `..` are refused when staging.
    pub path: PathBuf,
    /// Permission bits (at most `0o777`), the file's mode from its creation.
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

    /// A certificate, chain or CA bundle: `0644`.
    pub fn public(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o644)
    }

    /// An executable (a hook script): `0755`.
    pub fn executable(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o755)
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
    /// Content, mode or owner differ, so it is (or would be) replaced.
    pub changed: bool,
    /// The target existed.
    pub existed: bool,
    /// Where its previous version is kept (relative), when replaced.
    pub previous: Option<PathBuf>,
}

/// The outcome of [`Staged::commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    /// One per file of the set, in order.
    pub files: Vec<FileOutcome>,
}

/// A temp file written and synced, waiting to replace its target.
struct Pending {
    dir: OwnedFd,
    /// `(st_dev, st_ino)` of `dir`, to sync each directory once.
    dir_id: (u64, u64),
    name: OsString,
    temp: OsString,
    prev: Option<OsString>,
}

struct StagedFile {
    outcome: FileOutcome,
    /// `None`: unchanged, nothing to do.
    pending: Option<Pending>,
}

/// A staged set: every changed file written to a synced temp file next to its target,
/// nothing replaced yet. Dropping it without [`Staged::commit`] removes the temps.
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
            .finish_non_exhaustive()
    }
}

/// Like [`io_err`], but a full disk or quota is [`Error::NoSpace`]: only used while
/// staging, when nothing has been replaced.
fn stage_err(op: &'static str, path: &Path, e: Errno) -> Error {
    if e == Errno::NOSPC || e == Errno::DQUOT {
        Error::NoSpace {
            path: path.to_owned(),
        }
    } else {
        io_err(op, path, e)
    }
}

fn stage_io_err(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(code) => stage_err(op, path, Errno::from_raw_os_error(code)),
        None => Error::io(op, path, e),
    }
}

/// `.rotate-tmp-<name>-<run_id>-<token>`, next to the target.
pub(super) fn temp_name(name: &OsStr, run_id: &str, token: &str) -> OsString {
    let mut n = OsString::from(TEMP_PREFIX);
    n.push(name);
    n.push(format!("-{run_id}-{token}"));
    n
}

/// `.<name>.rotate-<run_id>-<token>.prev`, next to the target.
pub(super) fn prev_name(name: &OsStr, run_id: &str, token: &str) -> OsString {
    let mut n = OsString::from(".");
    n.push(name);
    n.push(format!(".rotate-{run_id}-{token}.prev"));
    n
}

/// 16 random hex digits from the kernel: the names of our temp files and kept previous
/// versions cannot be guessed (and so not planted) by the user who owns the directory.
fn random_token() -> Result<String> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(|e| io_err("read random bytes for", Path::new("temp names"), e))?;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// `name` in the directory of `rel`.
fn sibling(rel: &Path, name: &OsStr) -> PathBuf {
    rel.parent().unwrap_or(Path::new("")).join(name)
}

/// A run id goes into file names: letters, digits, `.`, `_`, `-`; at most 64.
fn check_run_id(run_id: &str) -> Result<()> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "run id",
            value: run_id.to_owned(),
            reason: "must be 1 to 64 of [A-Za-z0-9._-]".into(),
        })
    }
}

fn open_temp(dir: impl AsFd, temp: &OsStr, mode: u32) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The umask can only narrow `mode`; the exact mode is set on the fd right after.
    rustix::fs::openat(dir, temp, flags, Mode::from_raw_mode(mode))
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

    /// Paths relative and distinct, modes plain permission bits, names not ours.
    fn check(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for f in &self.files {
            let invalid = |reason: &str| Error::Invalid {
                what: "file spec",
                value: format!("{} mode {:o}", f.spec.path.display(), f.spec.mode),
                reason: reason.to_owned(),
            };
            let comps = rel_components(&f.spec.path)?;
            let Some(name) = comps.last() else {
                return Err(invalid("names no file"));
            };
            if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                return Err(invalid("the name of one of our temp files"));
            }
            if f.spec.mode & !0o777 != 0 {
                return Err(invalid("only permission bits (0o777) are allowed"));
            }
            if !seen.insert(comps) {
                return Err(invalid("listed twice in one set"));
            }
        }
        Ok(())
    }

    /// What replacing `current` with `f` would do.
    fn outcome(
        f: &MaterialFile,
        current: Option<(Zeroizing<Vec<u8>>, FileMeta)>,
        owner: Owner,
    ) -> FileOutcome {
        let same = current.as_ref().is_some_and(|(bytes, meta)| {
            bytes.as_slice() == f.contents() && meta.mode == f.spec.mode && meta.owner == owner
        });
        FileOutcome {
            path: f.spec.path.clone(),
            mode: f.spec.mode,
            bytes: f.contents().len(),
            changed: !same,
            existed: current.is_some(),
            previous: None,
        }
    }

    /// The current version of `name` in `dir`, read without following symlinks.
    fn current(
        dir: impl AsFd,
        name: &OsStr,
        shown: &Path,
    ) -> Result<Option<(Zeroizing<Vec<u8>>, FileMeta)>> {
        match Tree::open_regular(dir, name, shown)? {
            Some((fd, st)) => {
                let meta = FileMeta::of(&st);
                Ok(Some((Tree::read_fd(fd, &st, shown)?, meta)))
            }
            None => Ok(None),
        }
    }

    /// For a plan: which files would change (content, mode or owner), reading only. A
    /// target that is a symlink or not a regular file is [`Error::Unsafe`].
    pub fn diff(&self, tree: &Tree) -> Result<Vec<FileOutcome>> {
        self.check()?;
        let owner = tree.owner_ids();
        self.files
            .iter()
            .map(|f| {
                let shown = tree.root().join(&f.spec.path);
                let current = match tree.split(&f.spec.path)? {
                    Some((dir, name)) => Self::current(&dir, name, &shown)?,
                    None => None,
                };
                Ok(Self::outcome(f, current, owner))
            })
            .collect()
    }

    /// Phase 1, all or nothing. For every changed file (content, mode or owner differ from
    /// the current target, read without following symlinks), a temp file is created next
    /// to the target with `O_CREAT | O_EXCL | O_NOFOLLOW` and the final mode (a key is
    /// never readable by others, whatever the umask), chowned and chmodded on its fd,
    /// written and synced. Any failure removes the temps made so far and replaces nothing;
    /// a full disk or quota is [`Error::NoSpace`]. Target directories must exist
    /// ([`Tree::ensure_dir`]); a target that is a symlink is [`Error::Unsafe`]. A temp left
    /// by a killed attempt with the same `run_id` is replaced.
    pub fn stage(&self, tree: &Tree, run_id: &str) -> Result<Staged> {
        check_run_id(run_id)?;
        self.check()?;
        let owner = tree.owner_ids();
        let mut staged = Staged {
            root: tree.root().to_owned(),
            files: Vec::new(),
            committed: false,
        };
        for f in &self.files {
            let shown = tree.root().join(&f.spec.path);
            let (dir, name) = tree.split_required(&f.spec.path)?;
            let mut outcome = Self::outcome(f, Self::current(&dir, name, &shown)?, owner);
            if !outcome.changed {
                staged.files.push(StagedFile {
                    outcome,
                    pending: None,
                });
                continue;
            }
            let st = rustix::fs::fstat(&dir).map_err(|e| io_err("stat directory of", &shown, e))?;
            let token = random_token()?;
            let temp = temp_name(name, run_id, &token);
            let fd = match open_temp(&dir, &temp, f.spec.mode) {
                Err(Errno::EXIST) => {
                    // Left by a killed attempt (or planted): unlink the name, never follow it.
                    rustix::fs::unlinkat(&dir, temp.as_os_str(), AtFlags::empty())
                        .map_err(|e| io_err("remove stale temp for", &shown, e))?;
                    open_temp(&dir, &temp, f.spec.mode)
                }
                r => r,
            }
            .map_err(|e| stage_err("create temp for", &shown, e))?;
            // Its own token: the temp's name (which the directory's owner can read)
            // says nothing of it.
            let prev = match outcome.existed {
                true => Some(prev_name(name, run_id, &random_token()?)),
                false => None,
            };
            outcome.previous = prev.as_deref().map(|p| sibling(&f.spec.path, p));
            // Registered before writing, so a failure below still removes it (Drop).
            staged.files.push(StagedFile {
                outcome,
                pending: Some(Pending {
                    dir,
                    dir_id: (st.st_dev, st.st_ino),
                    name: name.to_owned(),
                    temp,
                    prev,
                }),
            });
            fchown(&fd, owner).map_err(|e| stage_err("chown temp for", &shown, e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(f.spec.mode))
                .map_err(|e| stage_err("chmod temp for", &shown, e))?;
            let mut file = std::fs::File::from(fd);
            file.write_all(f.contents())
                .map_err(|e| stage_io_err("write temp for", &shown, e))?;
            file.sync_all()
                .map_err(|e| stage_io_err("fsync temp for", &shown, e))?;
        }
        Ok(staged)
    }
}

impl Staged {
    fn pending(&self) -> impl Iterator<Item = (&FileOutcome, &Pending)> {
        self.files
            .iter()
            .filter_map(|f| f.pending.as_ref().map(|p| (&f.outcome, p)))
    }

    /// What undoing [`Staged::commit`] needs, one record per changed file, known before
    /// any rename: journal them durably first.
    pub fn undo_records(&self) -> Vec<FileUndo> {
        self.pending()
            .map(|(o, p)| FileUndo {
                root: self.root.clone(),
                rel: o.path.clone(),
                prev: o.previous.clone(),
                temp: Some(sibling(&o.path, &p.temp)),
            })
            .collect()
    }

    /// What staging found, per file (`previous` set for files that will be replaced).
    pub fn outcomes(&self) -> Vec<FileOutcome> {
        self.files.iter().map(|f| f.outcome.clone()).collect()
    }

    /// Sync each directory holding a changed file, once.
    fn sync_dirs(&self) -> Result<()> {
        let mut done = HashSet::new();
        for (o, p) in self.pending() {
            if done.insert(p.dir_id) {
                rustix::fs::fsync(&p.dir)
                    .map_err(|e| io_err("fsync directory of", &self.root.join(&o.path), e))?;
            }
        }
        Ok(())
    }

    /// Phase 2. First every existing target is kept as
    /// `linkat(dir, name, dir, .<name>.rotate-<run_id>-<token>.prev, 0)`: a hard link
    /// (same inode, bytes, mode and owner; never read through a path; a symlink swapped in
    /// is linked as the symlink, not followed), and the directories are synced; a failure
    /// there removes the links made and replaces nothing. The name is random: one that
    /// already exists was planted (by the directory's owner, who may read the temp's name),
    /// and the commit stops rather than keep it as "the previous version" undo would put
    /// back. Then each temp is renamed over its target and each directory synced once. A
    /// rename failure leaves the earlier files replaced: undo them with
    /// [`Staged::undo_records`].
    pub fn commit(mut self) -> Result<WriteReport> {
        let mut linked: Vec<(&Pending, &OsStr)> = Vec::new();
        let mut keep = || -> Result<()> {
            for (o, p) in self.pending() {
                let Some(prev) = &p.prev else { continue };
                match rustix::fs::linkat(
                    &p.dir,
                    p.name.as_os_str(),
                    &p.dir,
                    prev.as_os_str(),
                    AtFlags::empty(),
                ) {
                    Ok(()) => linked.push((p, prev)),
                    Err(Errno::EXIST) => {
                        return Err(Error::Unsafe {
                            path: self.root.join(sibling(&o.path, prev)),
                            reason: "exists already, though its name was random: planted by the directory's owner; nothing was replaced".into(),
                        });
                    }
                    Err(e) => {
                        let shown = self.root.join(&o.path);
                        return Err(io_err("keep previous version of", &shown, e));
                    }
                }
            }
            self.sync_dirs()
        };
        if let Err(e) = keep() {
            for (p, prev) in linked {
                let _ = rustix::fs::unlinkat(&p.dir, prev, AtFlags::empty());
            }
            return Err(e);
        }
        for (i, (o, p)) in self.pending().enumerate() {
            if i > 0 {
                crate::failpoint("commit-between-renames");
            }
            rustix::fs::renameat(&p.dir, p.temp.as_os_str(), &p.dir, p.name.as_os_str())
                .map_err(|e| io_err("replace", &self.root.join(&o.path), e))?;
        }
        self.committed = true;
        self.sync_dirs()?;
        Ok(WriteReport {
            files: self.outcomes(),
        })
    }
}

/// For a file someone else is about to replace (an agent renders it, a hook installs it):
/// what undoing that needs, decided before anything happens. When `rel` exists (a
/// regular file, never followed through a symlink), its previous version will be kept
/// under a random name next to it; when it does not, undo removes whatever appears there.
/// Journal the record, then [`keep_previous`].
pub fn plan_keep(tree: &Tree, rel: &Path, run_id: &str) -> Result<FileUndo> {
    check_run_id(run_id)?;
    let shown = tree.root().join(rel);
    let mut prev = None;
    if let Some((dir, name)) = tree.split(rel)?
        && Tree::open_regular(&dir, name, &shown)?.is_some()
    {
        prev = Some(sibling(rel, &prev_name(name, run_id, &random_token()?)));
    }
    Ok(FileUndo {
        root: tree.root().to_owned(),
        rel: rel.to_owned(),
        prev,
        temp: None,
    })
}

/// Keeps the previous version [`plan_keep`] named: a hard link (same inode: bytes, mode,
/// owner), made without following symlinks. A name that exists already was planted: an
/// error, nothing kept. A file gone meanwhile has nothing to keep.
pub fn keep_previous(tree: &Tree, u: &FileUndo) -> Result<()> {
    let Some(prev) = &u.prev else {
        return Ok(());
    };
    let Some((dir, name)) = tree.split(&u.rel)? else {
        return Ok(());
    };
    let prev_name = prev.file_name().unwrap_or_default();
    let shown = tree.root().join(&u.rel);
    match rustix::fs::linkat(&dir, name, &dir, prev_name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(Errno::EXIST) => {
            return Err(Error::Unsafe {
                path: tree.root().join(prev),
                reason:
                    "exists already, though its name was random: planted by the directory's owner"
                        .into(),
            });
        }
        Err(e) => return Err(io_err("keep previous version of", &shown, e)),
    }
    rustix::fs::fsync(&dir).map_err(|e| io_err("fsync directory of", &shown, e))
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (_, p) in self.pending() {
            let _ = rustix::fs::unlinkat(&p.dir, p.temp.as_os_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::super::tree::tests::{OWNER, UMASK, home, names_in, rootdir};
    use super::*;

    const MTLS: &str = "vault/mtls";

    fn pair(key: &str, cert: &str) -> MaterialSet {
        MaterialSet::new()
            .with(
                FileSpec::private_key("vault/mtls/agent.key"),
                key.as_bytes(),
            )
            .with(FileSpec::public("vault/mtls/agent.crt"), cert.as_bytes())
    }

    fn tree_with_mtls(h: &Path) -> Tree {
        let tree = Tree::open(h, Some(OWNER)).unwrap();
        tree.ensure_dir(Path::new(MTLS), 0o700).unwrap();
        tree
    }

    fn fstat_nofollow(p: &Path) -> rustix::fs::Stat {
        let fd = rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        rustix::fs::fstat(&fd).unwrap()
    }

    #[test]
    fn files_have_their_exact_mode_and_owner_from_creation_whatever_the_umask() {
        let _g = UMASK.lock().unwrap();
        for umask in [0, 0o077] {
            let (_t, h) = home();
            let tree = tree_with_mtls(&h);
            let set = pair("KEY", "CERT").with(FileSpec::executable("vault/hook"), "#!/bin/sh\n");
            let old = rustix::process::umask(Mode::from_raw_mode(umask));
            let staged = set.stage(&tree, "r1");
            rustix::process::umask(old);
            let staged = staged.unwrap();
            // The temps, before any rename: already the final mode and owner.
            let temps = staged.undo_records();
            for (u, (name, mode)) in
                temps
                    .iter()
                    .zip([("agent.key", 0o600), ("agent.crt", 0o644), ("hook", 0o755)])
            {
                let temp = h.join(u.temp.as_ref().unwrap());
                assert!(
                    temp.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!(".rotate-tmp-{name}-r1-")),
                    "{}",
                    temp.display()
                );
                let st = fstat_nofollow(&temp);
                assert_eq!(
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid),
                    (mode, OWNER.uid, OWNER.gid),
                    "temp {name} with umask {umask:o}"
                );
            }
            staged.commit().unwrap();
            for (rel, mode) in [
                ("vault/mtls/agent.key", 0o600),
                ("vault/mtls/agent.crt", 0o644),
                ("vault/hook", 0o755),
            ] {
                let st = fstat_nofollow(&h.join(rel));
                assert_eq!(
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid),
                    (mode, OWNER.uid, OWNER.gid),
                    "{rel} with umask {umask:o}"
                );
            }
            assert_eq!(names_in(&h.join(MTLS)), ["agent.crt", "agent.key"]);
        }
    }

    #[test]
    fn a_symlinked_directory_is_refused_by_stage_and_nothing_lands_behind_it() {
        let (t, h) = home();
        let target = rootdir(&t);
        std::os::unix::fs::symlink(&target, h.join(".vault-agent-x")).unwrap();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let set = MaterialSet::new().with(FileSpec::private_key(".vault-agent-x/agent.key"), "K");
        let err = set.stage(&tree, "r1").unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(set.diff(&tree).is_err());
        assert_eq!(names_in(&target), Vec::<String>::new());
    }

    #[test]
    fn a_target_that_is_a_symlink_is_refused_before_anything_is_written() {
        let (t, h) = home();
        let secret = t.path().join("shadow");
        std::fs::write(&secret, "root:secret-hash").unwrap();
        let tree = tree_with_mtls(&h);
        std::os::unix::fs::symlink(&secret, h.join("vault/mtls/agent.key")).unwrap();
        let err = pair("NEW", "CERT").stage(&tree, "r1").unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert_eq!(names_in(&h.join(MTLS)), ["agent.key"], "no temp left");
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "root:secret-hash"
        );
    }

    #[test]
    fn a_target_swapped_for_a_symlink_before_commit_is_kept_as_the_link_never_its_target() {
        let (t, h) = home();
        let secret = t.path().join("shadow");
        std::fs::write(&secret, "root:secret-hash").unwrap();
        let tree = tree_with_mtls(&h);
        pair("OLD", "OLDCERT")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let staged = pair("NEW", "NEWCERT").stage(&tree, "r1").unwrap();
        // The app swaps its key for a symlink to a root secret between stage and commit.
        let key = h.join("vault/mtls/agent.key");
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(&secret, &key).unwrap();
        let undo = staged.undo_records();
        staged.commit().unwrap();

        let prev = h.join(undo[0].prev.as_ref().unwrap());
        assert!(
            std::fs::symlink_metadata(&prev)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_link(&prev).unwrap(),
            secret,
            "the link itself"
        );
        assert!(
            std::fs::symlink_metadata(&key)
                .unwrap()
                .file_type()
                .is_file()
        );
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "NEW");
        // No regular file anywhere in the home holds the secret's bytes.
        let mut stack = vec![h.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let bytes = std::fs::read(&p).unwrap();
                    assert!(!bytes.windows(11).any(|w| w == b"secret-hash"), "{p:?}");
                }
            }
        }
        assert!(tree.read(undo[0].prev.as_ref().unwrap()).is_err());
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "root:secret-hash"
        );
        let st = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            (st.uid(), st.nlink()),
            (0, 1),
            "secret not chowned nor linked"
        );
    }

    #[test]
    fn unchanged_files_are_skipped_and_mode_or_owner_alone_is_a_change() {
        let (_t, h) = home();
        let tree = tree_with_mtls(&h);
        pair("K", "C").stage(&tree, "r0").unwrap().commit().unwrap();
        let staged = pair("K", "C").stage(&tree, "r1").unwrap();
        assert!(staged.undo_records().is_empty());
        assert_eq!(
            names_in(&h.join(MTLS)),
            ["agent.crt", "agent.key"],
            "no temp"
        );
        let report = staged.commit().unwrap();
        assert!(report.files.iter().all(|f| !f.changed && f.existed));

        std::fs::set_permissions(
            h.join("vault/mtls/agent.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::chown(h.join("vault/mtls/agent.crt"), Some(0), Some(0)).unwrap();
        let diff = pair("K", "C").diff(&tree).unwrap();
        assert!(diff.iter().all(|f| f.changed && f.existed), "{diff:?}");
        let staged = pair("K", "C").stage(&tree, "r2").unwrap();
        assert_eq!(staged.undo_records().len(), 2);
        staged.commit().unwrap();
        let k = std::fs::metadata(h.join("vault/mtls/agent.key")).unwrap();
        assert_eq!(k.mode() & 0o777, 0o600);
        let c = std::fs::metadata(h.join("vault/mtls/agent.crt")).unwrap();
        assert_eq!(c.uid(), OWNER.uid);
    }

    #[test]
    fn diff_only_reads() {
        let (_t, h) = home();
        let tree = Tree::open(&h, Some(OWNER)).unwrap();
        let d = pair("K", "C").diff(&tree).unwrap();
        assert!(
            d.iter()
                .all(|f| f.changed && !f.existed && f.previous.is_none())
        );
        assert_eq!(names_in(&h), Vec::<String>::new());
    }

    #[test]
    fn bad_specs_and_run_ids_are_refused_before_anything_is_created() {
        let (_t, h) = home();
        let tree = tree_with_mtls(&h);
        for run in ["", "a/b", "../x", "r 1", &"r".repeat(65)] {
            let err = pair("K", "C").stage(&tree, run).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{run:?}: {err}");
        }
        for set in [
            MaterialSet::new().with(FileSpec::public("/etc/passwd"), "x"),
            MaterialSet::new().with(FileSpec::public("vault/../../x"), "x"),
            MaterialSet::new().with(FileSpec::public(""), "x"),
            MaterialSet::new().with(FileSpec::new("vault/x", 0o4755), "x"),
            MaterialSet::new().with(FileSpec::public("vault/.rotate-tmp-x"), "x"),
            pair("K", "C").with(FileSpec::public("vault/./mtls/agent.crt"), "x"),
        ] {
            let err = set.stage(&tree, "r1").unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{set:?}: {err}");
        }
        assert_eq!(names_in(&h.join(MTLS)), Vec::<String>::new());
        assert_eq!(names_in(&h.join("vault")), ["mtls"]);
    }

    #[test]
    fn a_full_disk_fails_while_staging_and_replaces_nothing() {
        let (t, _) = home();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (this test needs root and CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result = std::panic::catch_unwind(|| {
            std::os::unix::fs::chown(&mnt, Some(OWNER.uid), Some(OWNER.gid)).unwrap();
            let tree = tree_with_mtls(&mnt);
            pair("OLDKEY", "OLDCERT")
                .stage(&tree, "r0")
                .unwrap()
                .commit()
                .unwrap();
            let ino = |n: &str| std::fs::metadata(mnt.join(MTLS).join(n)).unwrap().ino();
            let before = (ino("agent.key"), ino("agent.crt"));
            // Fill the disk, then free two pages: the key fits, the certificate does not.
            let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
            let chunk = [0u8; 4096];
            while filler.write_all(&chunk).is_ok() {}
            let len = filler.metadata().unwrap().len();
            filler.set_len(len.saturating_sub(8192)).unwrap();
            let err = pair(&"K".repeat(100), &"C".repeat(32 * 1024))
                .stage(&tree, "r1")
                .unwrap_err();
            assert!(
                matches!(&err, Error::NoSpace { path } if path.ends_with("agent.crt")),
                "{err}"
            );
            assert!(err.to_string().contains("nothing was replaced"), "{err}");
            assert_eq!(
                std::fs::read(mnt.join("vault/mtls/agent.key")).unwrap(),
                b"OLDKEY"
            );
            assert_eq!(
                std::fs::read(mnt.join("vault/mtls/agent.crt")).unwrap(),
                b"OLDCERT"
            );
            assert_eq!((ino("agent.key"), ino("agent.crt")), before);
            assert_eq!(
                names_in(&mnt.join(MTLS)),
                ["agent.crt", "agent.key"],
                "the key's temp was removed too"
            );
        });
        let out = std::process::Command::new("umount")
            .arg(&mnt)
            .output()
            .unwrap();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn two_runs_keep_distinct_previous_versions_under_unguessable_names() {
        let (_t, h) = home();
        let tree = tree_with_mtls(&h);
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
        let report = b.commit().unwrap();
        assert_eq!(report.files[0].previous, ub[0].prev);
        let read =
            |u: &FileUndo| std::fs::read_to_string(h.join(u.prev.as_ref().unwrap())).unwrap();
        assert_ne!(ua[0].prev, ub[0].prev);
        assert_eq!((read(&ua[0]), read(&ua[1])), ("K0".into(), "C0".into()));
        assert_eq!((read(&ub[0]), read(&ub[1])), ("K1".into(), "C1".into()));
        let name = ub[0]
            .prev
            .as_deref()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        let token = name
            .strip_prefix(".agent.key.rotate-r2-")
            .and_then(|t| t.strip_suffix(".prev"))
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }

    #[test]
    fn a_planted_previous_version_stops_the_commit_and_replaces_nothing() {
        let (_t, h) = home();
        let tree = tree_with_mtls(&h);
        pair("K0", "C0")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let staged = pair("K1", "C1").stage(&tree, "r1").unwrap();
        let u = staged.undo_records();
        // The owner reads the temp's name from the directory and plants the prev it wants
        // undo to restore.
        std::fs::write(h.join(u[1].prev.as_ref().unwrap()), "PLANTED").unwrap();
        let err = staged.commit().unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("planted"), "{err}");
        assert_eq!(
            std::fs::read_to_string(h.join("vault/mtls/agent.key")).unwrap(),
            "K0"
        );
        assert_eq!(
            std::fs::read_to_string(h.join("vault/mtls/agent.crt")).unwrap(),
            "C0"
        );
        assert!(
            !h.join(u[0].prev.as_ref().unwrap()).exists(),
            "our own link of the key was taken back"
        );
        assert!(
            !names_in(&h.join(MTLS))
                .iter()
                .any(|n| n.starts_with(".rotate-tmp-")),
            "temps removed"
        );
    }

    #[test]
    fn a_commit_failing_before_any_rename_replaces_nothing() {
        let (_t, h) = home();
        let tree = tree_with_mtls(&h);
        pair("K0", "C0")
            .stage(&tree, "r0")
            .unwrap()
            .commit()
            .unwrap();
        let staged = pair("K1", "C1").stage(&tree, "r1").unwrap();
        // The certificate vanishes between stage and commit: it cannot be kept.
        std::fs::remove_file(h.join("vault/mtls/agent.crt")).unwrap();
        let err = staged.commit().unwrap_err();
        assert!(err.to_string().contains("keep previous version"), "{err}");
        assert_eq!(
            std::fs::read_to_string(h.join("vault/mtls/agent.key")).unwrap(),
            "K0"
        );
        assert_eq!(names_in(&h.join(MTLS)), ["agent.key"], "no prev, no temp");
    }
}
