//! Safe writes of keys, certificates and chains.
//!
//! Every file is written to a temporary file in the target's directory that is created
//! with its final mode (so a key is `0600` from the first moment, whatever the umask),
//! then owned, filled, synced, and renamed over the target; the directory is synced. The
//! replaced version is kept as `<name>.prev` (same bytes, mode and owner) so that
//! [`restore`] and [`WriteReport::rollback`] can put it back.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::{AccessFlags, Gid, Group, Uid, User};
use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where and how one file is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// The target path.
    pub path: PathBuf,
    /// Permission bits (`0o600` for keys, `0o644` for certificates).
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    /// Owner user name; setting it needs root.
    pub owner: Option<String>,
    /// Owner group name.
    pub group: Option<String>,
}

impl FileSpec {
    /// A file with `mode`, owned by whoever writes it.
    pub fn new(path: impl Into<PathBuf>, mode: u32) -> Self {
        Self {
            path: path.into(),
            mode,
            owner: None,
            group: None,
        }
    }

    /// A private key file: mode `0600`.
    pub fn private_key(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o600)
    }

    /// A certificate or CA file: mode `0644`.
    pub fn public(path: impl Into<PathBuf>) -> Self {
        Self::new(path, 0o644)
    }

    /// Sets owner and group by name (e.g. the app user `ncprd1`).
    #[must_use]
    pub fn owned_by(mut self, owner: impl Into<String>, group: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self.group = Some(group.into());
        self
    }

    /// Where the previous version is kept: `<path>.prev`.
    pub fn prev_path(&self) -> PathBuf {
        prev_path(&self.path)
    }
}

fn octal<S: Serializer>(mode: &u32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

/// `<path>.prev`.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".prev");
    PathBuf::from(s)
}

/// One file to write: where, how, and its bytes (wiped on drop, never printed).
#[derive(Clone)]
pub struct MaterialFile {
    /// Where and how.
    pub spec: FileSpec,
    contents: Zeroizing<Vec<u8>>,
}

impl MaterialFile {
    /// A file with `contents`.
    pub fn new(spec: FileSpec, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            spec,
            contents: Zeroizing::new(contents.into()),
        }
    }

    /// The bytes to write.
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

/// Files written as a unit (e.g. key, cert, chain of one identity).
#[derive(Debug, Clone, Default)]
pub struct MaterialSet {
    files: Vec<MaterialFile>,
}

impl MaterialSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file.
    #[must_use]
    pub fn with(mut self, spec: FileSpec, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push(MaterialFile::new(spec, contents));
        self
    }

    /// The files, in write order.
    pub fn files(&self) -> &[MaterialFile] {
        &self.files
    }

    /// [`write_all`] of this set.
    pub fn write(&self) -> Result<WriteReport> {
        write_all(&self.files)
    }

    /// [`dry_run`] of this set.
    pub fn dry_run(&self) -> Result<WriteReport> {
        dry_run(&self.files)
    }
}

/// What happened (or would happen) to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOutcome {
    /// The target path.
    pub path: PathBuf,
    /// Its mode.
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    /// Size of the new content.
    pub bytes: usize,
    /// Content, mode or owner differed, so the file was (or would be) written.
    pub changed: bool,
    /// The target existed before.
    pub existed: bool,
    /// Where the previous version was kept, when one was replaced.
    pub previous: Option<PathBuf>,
}

/// The outcome of [`write_all`] or [`dry_run`]; able to undo a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// One entry per file, in order.
    pub files: Vec<FileOutcome>,
}

impl WriteReport {
    /// Whether any file changed (or would change).
    pub fn any_changed(&self) -> bool {
        self.files.iter().any(|f| f.changed)
    }

    /// Undoes the write: every replaced file is restored from its `.prev` byte for byte,
    /// every newly created file is removed. Unchanged files are left alone. A dry run has
    /// nothing to undo.
    pub fn rollback(&self) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let mut first_err = None;
        for f in self.files.iter().rev().filter(|f| f.changed) {
            let r = if f.existed {
                restore(&f.path)
            } else {
                remove(&f.path)
            };
            if let Err(e) = r {
                tracing::error!(path = %f.path.display(), error = %e, "rollback failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Puts `<path>.prev` back at `path` (same bytes, mode, owner), atomically; the `.prev`
/// stays.
pub fn restore(path: &Path) -> Result<()> {
    let prev = prev_path(path);
    let meta = match fs::metadata(&prev) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::NoPrevious { path: prev }),
        Err(e) => return Err(Error::io("stat", &prev, e)),
    };
    let bytes = Zeroizing::new(fs::read(&prev).map_err(|e| Error::io("read", &prev, e))?);
    let owner = Ownership {
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
    };
    replace(path, meta.mode() & 0o7777, owner, &bytes)?;
    tracing::info!(path = %path.display(), "restored previous version");
    Ok(())
}

/// Writes every file as a unit. First checks every target: its directory exists and is
/// writable ([`Error::NotWritable`]), owners resolve, ownership can be set; if any check
/// fails nothing is changed. Then, per file whose content, mode or owner differs: keeps
/// the current version as `<name>.prev` and atomically replaces it. If a write fails
/// midway, the files already written are rolled back before the error is returned.
pub fn write_all(files: &[MaterialFile]) -> Result<WriteReport> {
    let plans = preflight(files)?;
    for f in files {
        sweep_stale_temps(&f.spec.path);
    }
    let mut done: Vec<FileOutcome> = Vec::with_capacity(files.len());
    for (file, plan) in files.iter().zip(plans) {
        match write_one(file, &plan) {
            Ok(outcome) => done.push(outcome),
            Err(e) => {
                let partial = WriteReport {
                    dry_run: false,
                    files: done,
                };
                if let Err(rb) = partial.rollback() {
                    tracing::error!(error = %rb, "rollback after failed write incomplete");
                }
                return Err(e);
            }
        }
    }
    Ok(WriteReport {
        dry_run: false,
        files: done,
    })
}

/// Runs [`write_all`]'s checks and reports what would change, writing nothing.
pub fn dry_run(files: &[MaterialFile]) -> Result<WriteReport> {
    let plans = preflight(files)?;
    Ok(WriteReport {
        dry_run: true,
        files: files
            .iter()
            .zip(plans)
            .map(|(f, p)| FileOutcome {
                path: f.spec.path.clone(),
                mode: f.spec.mode,
                bytes: f.contents.len(),
                changed: p.changed,
                existed: p.existing.is_some(),
                previous: (p.changed && p.existing.is_some()).then(|| f.spec.prev_path()),
            })
            .collect(),
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ownership {
    uid: Option<u32>,
    gid: Option<u32>,
}

struct Plan {
    owner: Ownership,
    existing: Option<fs::Metadata>,
    changed: bool,
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn preflight(files: &[MaterialFile]) -> Result<Vec<Plan>> {
    files.iter().map(check_one).collect()
}

fn check_one(file: &MaterialFile) -> Result<Plan> {
    let spec = &file.spec;
    if spec.mode & !0o7777 != 0 {
        return Err(Error::Invalid {
            what: "file mode",
            value: format!("{:o}", spec.mode),
            reason: "only permission bits (0o7777) are allowed".into(),
        });
    }
    let not_writable = |path: &Path, reason: String| Error::NotWritable {
        path: path.to_owned(),
        reason,
    };
    let dir = parent_dir(&spec.path);
    refuse_foreign_symlinks(&spec.path)?;
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_writable(dir, "not a directory".into())),
        Err(e) => return Err(not_writable(dir, e.to_string())),
    }
    nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
        .map_err(|e| not_writable(dir, e.desc().to_owned()))?;
    let existing = match fs::metadata(&spec.path) {
        Ok(m) if m.is_file() => Some(m),
        Ok(_) => {
            return Err(not_writable(
                &spec.path,
                "exists and is not a regular file".into(),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("stat", &spec.path, e)),
    };
    let owner = resolve_owner(spec)?;
    let changed = match &existing {
        None => true,
        Some(m) => {
            let same_meta = m.mode() & 0o7777 == spec.mode
                && owner.uid.is_none_or(|u| u == m.uid())
                && owner.gid.is_none_or(|g| g == m.gid());
            let same_bytes = same_meta
                && m.len() == file.contents.len() as u64
                && *Zeroizing::new(
                    fs::read(&spec.path).map_err(|e| Error::io("read", &spec.path, e))?,
                ) == *file.contents;
            !same_bytes
        }
    };
    Ok(Plan {
        owner,
        existing,
        changed,
    })
}

/// Refuse to follow a symlink that someone other than us (or root) owns, anywhere on the
/// path: as root, writing through an app user's link would let that user choose where
/// root creates (and chowns) key files.
fn refuse_foreign_symlinks(path: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let Ok(m) = fs::symlink_metadata(p) else {
            continue;
        };
        if m.file_type().is_symlink() && m.uid() != me && m.uid() != 0 {
            return Err(Error::NotWritable {
                path: p.to_owned(),
                reason: format!(
                    "is a symlink owned by uid {}: refusing to write through it as uid {me}",
                    m.uid()
                ),
            });
        }
    }
    Ok(())
}

fn resolve_owner(spec: &FileSpec) -> Result<Ownership> {
    let path = &spec.path;
    let lookup_err = |kind, name: &str, e: nix::Error| Error::UnknownOwner {
        kind,
        name: format!("{name} ({})", e.desc()),
        path: path.clone(),
    };
    let uid = match &spec.owner {
        None => None,
        Some(name) => match User::from_name(name) {
            Ok(Some(u)) => Some(u.uid),
            Ok(None) => {
                return Err(Error::UnknownOwner {
                    kind: "user",
                    name: name.clone(),
                    path: path.clone(),
                });
            }
            Err(e) => return Err(lookup_err("user", name, e)),
        },
    };
    let gid = match &spec.group {
        None => None,
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => {
                return Err(Error::UnknownOwner {
                    kind: "group",
                    name: name.clone(),
                    path: path.clone(),
                });
            }
            Err(e) => return Err(lookup_err("group", name, e)),
        },
    };
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        let owner_str = || {
            format!(
                "{}:{}",
                spec.owner.as_deref().unwrap_or(""),
                spec.group.as_deref().unwrap_or("")
            )
        };
        if uid.is_some_and(|u| u != euid) {
            return Err(Error::Chown {
                path: path.clone(),
                owner: owner_str(),
                reason: "changing the owner to another user needs root".into(),
            });
        }
        if let Some(g) = gid
            && g != nix::unistd::getegid()
            && !nix::unistd::getgroups().is_ok_and(|gs| gs.contains(&g))
        {
            return Err(Error::Chown {
                path: path.clone(),
                owner: owner_str(),
                reason: "not a member of that group (or run as root)".into(),
            });
        }
    }
    Ok(Ownership {
        uid: uid.map(Uid::as_raw),
        gid: gid.map(Gid::as_raw),
    })
}

fn write_one(file: &MaterialFile, plan: &Plan) -> Result<FileOutcome> {
    let spec = &file.spec;
    let mut outcome = FileOutcome {
        path: spec.path.clone(),
        mode: spec.mode,
        bytes: file.contents.len(),
        changed: plan.changed,
        existed: plan.existing.is_some(),
        previous: None,
    };
    if !plan.changed {
        return Ok(outcome);
    }
    if let Some(meta) = &plan.existing {
        let old =
            Zeroizing::new(fs::read(&spec.path).map_err(|e| Error::io("read", &spec.path, e))?);
        let prev = spec.prev_path();
        let old_owner = Ownership {
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
        };
        // Never wider than the new file: the backup of a key is as private as the key.
        replace(&prev, meta.mode() & spec.mode & 0o7777, old_owner, &old)?;
        outcome.previous = Some(prev);
    }
    replace(&spec.path, spec.mode, plan.owner, &file.contents)?;
    tracing::info!(
        path = %spec.path.display(),
        mode = format_args!("{:04o}", spec.mode),
        bytes = file.contents.len(),
        "wrote file"
    );
    Ok(outcome)
}

/// Atomically replaces `path` with `bytes` (mode and owner set before any byte is written).
fn replace(path: &Path, mode: u32, owner: Ownership, bytes: &[u8]) -> Result<()> {
    let (mut file, tmp) = create_temp(path, mode)?;
    let result = (|| {
        set_owner(&file, &tmp, owner)?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn set_owner(file: &File, tmp: &Path, owner: Ownership) -> Result<()> {
    if owner == Ownership::default() {
        return Ok(());
    }
    let meta = file.metadata().map_err(|e| Error::io("stat", tmp, e))?;
    if owner.uid.is_none_or(|u| u == meta.uid()) && owner.gid.is_none_or(|g| g == meta.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, owner.uid, owner.gid).map_err(|e| Error::Chown {
        path: tmp.to_owned(),
        owner: format!(
            "{}:{}",
            owner.uid.map(|u| u.to_string()).unwrap_or_default(),
            owner.gid.map(|g| g.to_string()).unwrap_or_default()
        ),
        reason: e.to_string(),
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Remove temp files a killed run left next to `target` (`.<name>.tmp.<pid>.<n>` whose
/// process is gone): they may hold key bytes.
fn sweep_stale_temps(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('.').next().unwrap_or_default();
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive && fs::remove_file(e.path()).is_ok() {
            tracing::warn!(path = %e.path().display(), "removed a stale temp file of an interrupted write");
        }
    }
}

/// Creates a new, empty temporary file next to `target` with exactly `mode`: `O_EXCL`,
/// created with `mode` (the umask can only narrow it), then set to exactly `mode` while
/// still empty.
pub(crate) fn create_temp(target: &Path, mode: u32) -> Result<(File, PathBuf)> {
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "material".into());
    for _ in 0..100 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => {
                if let Err(e) = file.set_permissions(Permissions::from_mode(mode)) {
                    let _ = fs::remove_file(&tmp);
                    return Err(Error::io("chmod", &tmp, e));
                }
                return Ok((file, tmp));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create", &tmp, e)),
        }
    }
    Err(Error::io(
        "create",
        dir,
        std::io::Error::new(ErrorKind::AlreadyExists, "no free temporary file name"),
    ))
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use nix::sys::stat::{Mode, umask};

    const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn temp_file_has_exact_mode_from_creation_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("agent.key");
        let old = umask(Mode::empty());
        let mut seen = Vec::new();
        for mask in [0o000, 0o022, 0o077] {
            umask(Mode::from_bits_truncate(mask));
            for mode in [0o600, 0o644] {
                let (file, tmp) = create_temp(&target, mode).unwrap();
                // Before a single byte is written: exactly the requested mode, never wider.
                let m = file.metadata().unwrap();
                seen.push((mask, mode, m.mode() & 0o7777, m.len()));
                fs::remove_file(tmp).unwrap();
            }
            // The whole write path too: the key lands 0600 even with umask 000.
            write_all(&[MaterialFile::new(FileSpec::private_key(&target), KEY)]).unwrap();
            seen.push((mask, 0o600, mode_of(&target), 0));
            fs::remove_file(&target).unwrap();
        }
        umask(old);
        for (mask, want, got, len) in seen {
            assert_eq!(got, want, "umask {mask:o}");
            assert_eq!(len, 0);
        }
    }

    #[test]
    fn writes_new_files_with_modes_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (key, crt) = (dir.path().join("agent.key"), dir.path().join("agent.crt"));
        let set = MaterialSet::new()
            .with(FileSpec::private_key(&key), KEY)
            .with(FileSpec::public(&crt), "cert\n");
        let r = set.write().unwrap();
        assert!(!r.dry_run && r.any_changed());
        assert_eq!(fs::read(&key).unwrap(), KEY);
        assert_eq!((mode_of(&key), mode_of(&crt)), (0o600, 0o644));
        assert!(
            r.files
                .iter()
                .all(|f| f.changed && !f.existed && f.previous.is_none())
        );
        assert_eq!(entries(dir.path()), ["agent.crt", "agent.key"]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"mode\":\"0600\"") && !json.contains("secret"),
            "{json}"
        );
        assert!(!format!("{set:?}").contains("secret"));
        // Same content again: nothing changes, no .prev appears.
        let r = set.write().unwrap();
        assert!(!r.any_changed());
        assert_eq!(entries(dir.path()), ["agent.crt", "agent.key"]);
    }

    #[test]
    fn replace_keeps_prev_and_rollback_restores_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        let crt = dir.path().join("agent.crt");
        let chain = dir.path().join("ca.pem");
        let old_key = b"old key \x00\xff bytes".to_vec();
        MaterialSet::new()
            .with(FileSpec::private_key(&key), old_key.clone())
            .with(FileSpec::new(&crt, 0o640), "old cert")
            .write()
            .unwrap();

        let r = MaterialSet::new()
            .with(FileSpec::private_key(&key), KEY)
            .with(FileSpec::public(&crt), "new cert")
            .with(FileSpec::public(&chain), "new chain")
            .write()
            .unwrap();
        assert_eq!(fs::read(&key).unwrap(), KEY);
        assert_eq!(fs::read(prev_path(&key)).unwrap(), old_key);
        assert_eq!(mode_of(&prev_path(&key)), 0o600);
        assert_eq!(mode_of(&prev_path(&crt)), 0o640);
        assert_eq!(mode_of(&crt), 0o644);
        assert_eq!(
            r.files[0].previous.as_deref(),
            Some(prev_path(&key).as_path())
        );
        assert!(r.files[2].changed && !r.files[2].existed);

        r.rollback().unwrap();
        assert_eq!(fs::read(&key).unwrap(), old_key);
        assert_eq!(fs::read(&crt).unwrap(), b"old cert");
        assert_eq!((mode_of(&key), mode_of(&crt)), (0o600, 0o640));
        assert!(!chain.exists(), "created file removed on rollback");
        assert!(entries(dir.path()).iter().all(|n| !n.contains(".tmp.")));
    }

    #[test]
    fn temp_files_of_a_killed_run_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        let stale = dir.path().join(".agent.key.tmp.4194999.3");
        fs::write(&stale, KEY).unwrap();
        let mine = dir
            .path()
            .join(format!(".agent.key.tmp.{}.77", std::process::id()));
        fs::write(&mine, b"in flight").unwrap();
        write_all(&[MaterialFile::new(FileSpec::private_key(&key), KEY)]).unwrap();
        assert!(!stale.exists(), "a dead process's temp file is removed");
        assert!(mine.exists(), "a live process's temp file is left alone");
    }

    #[test]
    fn symlinks_owned_by_someone_else_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("mtls");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // Our own (or root's) link is fine.
        write_all(&[MaterialFile::new(
            FileSpec::private_key(link.join("a.key")),
            KEY,
        )])
        .unwrap();
        // Giving the link another owner needs root, as the attack it prevents does.
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CI runs as root): the scenario is root writing into an app's dir"
        );
        {
            let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &link,
                Some(nobody),
                None,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let err = write_all(&[MaterialFile::new(
                FileSpec::private_key(link.join("b.key")),
                KEY,
            )])
            .unwrap_err()
            .to_string();
            assert!(err.contains("symlink owned by uid"), "{err}");
            assert!(!real.join("b.key").exists());
        }
    }

    #[test]
    fn mode_change_alone_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        write_all(&[MaterialFile::new(FileSpec::new(&key, 0o644), KEY)]).unwrap();
        let r = write_all(&[MaterialFile::new(FileSpec::private_key(&key), KEY)]).unwrap();
        assert!(r.files[0].changed);
        assert_eq!(mode_of(&key), 0o600);
        restore(&key).unwrap();
        assert_eq!(
            mode_of(&key),
            0o600,
            "the backup of a key is never wider than the key it backs up"
        );
    }

    #[test]
    fn not_writable_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("agent.crt");
        fs::write(&good, "old").unwrap();
        let missing = dir.path().join("no-such-dir/agent.key");
        let file_as_dir = good.join("agent.key");
        for bad in [missing, file_as_dir] {
            let set = MaterialSet::new()
                .with(FileSpec::public(&good), "new")
                .with(FileSpec::private_key(&bad), KEY);
            let e = set.write().unwrap_err();
            assert!(matches!(e, Error::NotWritable { .. }), "{e}");
            assert!(e.to_string().contains("is not writable"), "{e}");
            assert!(set.dry_run().is_err());
            assert_eq!(fs::read(&good).unwrap(), b"old");
            assert_eq!(entries(dir.path()), ["agent.crt"]);
        }
        // A directory where the file should be.
        let e = write_all(&[MaterialFile::new(FileSpec::public(dir.path()), "x")]).unwrap_err();
        assert!(matches!(e, Error::NotWritable { .. }), "{e}");
    }

    #[test]
    fn dry_run_reports_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        fs::write(&a, "same").unwrap();
        fs::set_permissions(&a, Permissions::from_mode(0o644)).unwrap();
        let r = MaterialSet::new()
            .with(FileSpec::public(&a), "same")
            .with(FileSpec::public(&b), "new")
            .dry_run()
            .unwrap();
        assert!(r.dry_run);
        assert_eq!(
            r.files
                .iter()
                .map(|f| (f.changed, f.existed))
                .collect::<Vec<_>>(),
            [(false, true), (true, false)]
        );
        assert!(!b.exists());
        r.rollback().unwrap();
        assert!(a.exists());
    }

    #[test]
    fn owners() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        let e = write_all(&[MaterialFile::new(
            FileSpec::private_key(&key).owned_by("no-such-user-xyz", "root"),
            KEY,
        )])
        .unwrap_err();
        assert!(matches!(e, Error::UnknownOwner { kind: "user", .. }), "{e}");
        assert!(!key.exists());
        if !nix::unistd::geteuid().is_root() {
            let e = write_all(&[MaterialFile::new(
                FileSpec::private_key(&key).owned_by("root", "root"),
                KEY,
            )])
            .unwrap_err();
            assert!(matches!(e, Error::Chown { .. }), "{e}");
            return;
        }
        let (Ok(Some(user)), Ok(Some(group))) =
            (User::from_name("nobody"), Group::from_name("nogroup"))
        else {
            return;
        };
        let spec = FileSpec::private_key(&key).owned_by("nobody", "nogroup");
        write_all(&[MaterialFile::new(spec.clone(), "v1")]).unwrap();
        let m = fs::metadata(&key).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (user.uid.as_raw(), group.gid.as_raw(), 0o600)
        );
        // Replace as root-owned: the .prev keeps nobody:nogroup, restore brings it back.
        write_all(&[MaterialFile::new(
            FileSpec::private_key(&key).owned_by("root", "root"),
            "v2",
        )])
        .unwrap();
        assert_eq!(fs::metadata(&key).unwrap().uid(), 0);
        let p = fs::metadata(prev_path(&key)).unwrap();
        assert_eq!((p.uid(), p.gid()), (user.uid.as_raw(), group.gid.as_raw()));
        restore(&key).unwrap();
        let m = fs::metadata(&key).unwrap();
        assert_eq!((m.uid(), m.gid()), (user.uid.as_raw(), group.gid.as_raw()));
        assert_eq!(fs::read(&key).unwrap(), b"v1");
    }

    #[test]
    fn restore_without_prev_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = restore(&dir.path().join("x.pem")).unwrap_err();
        assert!(matches!(e, Error::NoPrevious { .. }), "{e}");
        let e = write_all(&[MaterialFile::new(
            FileSpec::new(dir.path().join("x"), 0o10600),
            "x",
        )])
        .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
    }
}
