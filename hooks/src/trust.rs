//! What root may run or believe: a file that nobody but root (or one named owner) could
//! have written, checked along its whole path, and the fixed `PATH` programs are found on.
//!
//! `rotate` runs as root among tenants. A program it runs, a config naming `cmd:` reloaders,
//! a pid file it signals through: if any directory on the way is writable by another user,
//! that user decides what root does. [`check_trusted`] refuses such a path, naming the
//! component and its owner.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The `PATH` every child starts with, and the only one programs are looked up on:
/// root's cron `PATH` (`/usr/bin:/bin`) would miss `runuser` (`/usr/sbin`), and the
/// operator's shell `PATH` may hold directories other users can write.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The sticky bit: in a root-owned sticky directory (`/tmp`), only an entry's owner can
/// rename or remove it, so a root-owned entry there cannot be swapped by others.
const STICKY: u32 = 0o1000;

/// Checks that `path` (absolute) and every directory above it are owned by root or by
/// `owner`, and that none is writable by group or others (a root-owned sticky directory
/// such as `/tmp` excepted), both along the path as written and along the path its
/// symlinks resolve to. The file itself must exist.
///
/// ```
/// hooks::check_trusted(std::path::Path::new("/bin/sh"), None)?;
/// assert!(hooks::check_trusted(std::path::Path::new("/tmp"), None).is_err());
/// # Ok::<(), hooks::Error>(())
/// ```
pub fn check_trusted(path: &Path, owner: Option<u32>) -> Result<()> {
    let refuse = |at: &Path, reason: String| Error::Untrusted {
        path: path.to_owned(),
        at: at.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse(path, "not an absolute path".into()));
    }
    let real = std::fs::canonicalize(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    // As written (a symlink is judged by the directory it sits in), then as resolved.
    for p in [path, real.as_path()] {
        let mut prefix = PathBuf::new();
        let count = p.components().count();
        for (i, c) in p.components().enumerate() {
            match c {
                Component::RootDir => prefix.push("/"),
                Component::Normal(n) => prefix.push(n),
                Component::ParentDir => prefix.push(".."),
                Component::CurDir | Component::Prefix(_) => continue,
            }
            let meta = std::fs::symlink_metadata(&prefix).map_err(|source| Error::Io {
                path: prefix.clone(),
                source,
            })?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let uid = meta.uid();
            if uid != 0 && Some(uid) != owner {
                return Err(refuse(
                    &prefix,
                    format!(
                        "owned by uid {uid}{}",
                        owner
                            .map(|o| format!(", not root or uid {o}"))
                            .unwrap_or_else(|| ", not root".into())
                    ),
                ));
            }
            let mode = meta.mode();
            let last = i + 1 == count;
            let sticky_root_dir = !last && meta.is_dir() && uid == 0 && mode & STICKY != 0;
            if mode & 0o022 != 0 && !sticky_root_dir {
                return Err(refuse(
                    &prefix,
                    format!(
                        "writable by {} (mode {:o})",
                        if mode & 0o002 != 0 {
                            "others"
                        } else {
                            "its group"
                        },
                        mode & 0o7777
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The directories of [`SAFE_PATH`] that exist and that nobody but root can write (an old
/// Debian's group-writable `/usr/local/sbin`, say, is left out): where programs are looked
/// up, and the `PATH` children get.
pub fn trusted_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::split_paths(SAFE_PATH)
            .filter(|d| d.is_dir() && check_trusted(d, None).is_ok())
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// Every file a command line names by absolute path that exists as a regular file (a
/// script a `cmd:` runs, a file it reads): each must be root's alone, or a tenant decides
/// what root does. `line` is split on whitespace and shell punctuation.
pub fn check_named_files(line: &str) -> Result<()> {
    for word in line.split(|c: char| c.is_whitespace() || "'\";|&()<>`$={}".contains(c)) {
        let p = Path::new(word);
        if word.starts_with('/')
            && std::fs::symlink_metadata(p).is_ok()
            && std::fs::metadata(p).is_ok_and(|m| m.is_file())
        {
            check_trusted(p, None)?;
        }
    }
    Ok(())
}

/// The absolute path of `program`: itself when absolute, else the first executable regular
/// file named so on [`trusted_path`] (never the caller's `PATH`).
pub fn resolve_program(program: &str) -> Result<PathBuf> {
    let not_found = |reason: String| Error::Spawn {
        program: program.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, reason),
    };
    if program.is_empty() {
        return Err(not_found("an empty program name".into()));
    }
    let p = Path::new(program);
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    if program.contains('/') {
        return Err(not_found(
            "a relative path: name a program on the system PATH or give an absolute path".into(),
        ));
    }
    std::env::split_paths(trusted_path())
        .map(|d| d.join(program))
        .find(|c| std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .ok_or_else(|| {
            not_found(format!(
                "not found on {SAFE_PATH}; install it or set its absolute path"
            ))
        })
}

/// [`resolve_program`], then [`check_trusted`] for root alone, and an executable regular
/// file: what root may run.
pub fn trusted_program(program: &str) -> Result<PathBuf> {
    let path = resolve_program(program)?;
    let meta = std::fs::metadata(&path).map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(Error::Untrusted {
            at: path.clone(),
            path,
            reason: "not an executable regular file".into(),
        });
    }
    check_trusted(&path, None)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn system_programs_are_found_on_the_safe_path_and_trusted() {
        let sh = trusted_program("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert!(trusted_program("no-such-program-here").is_err());
        assert!(
            trusted_program("bin/sh").is_err(),
            "relative paths are refused"
        );
    }

    #[test]
    fn writable_files_and_directories_are_refused_naming_the_culprit() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test chowns files: run it as root (CI does)"
        );
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        chmod(t.path(), 0o755);
        let prog = dir.join("tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        chmod(&prog, 0o755);
        assert_eq!(trusted_program(prog.to_str().unwrap()).unwrap(), prog);

        chmod(&prog, 0o775);
        let err = trusted_program(prog.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("writable by its group") && err.contains("tool"),
            "{err}"
        );
        chmod(&prog, 0o755);

        chmod(&dir, 0o777);
        let err = check_trusted(&prog, None).unwrap_err().to_string();
        assert!(
            err.contains("writable by others") && err.contains("/bin"),
            "{err}"
        );
        // Sticky and root-owned (like /tmp): entries cannot be swapped by others.
        chmod(&dir, 0o1777);
        check_trusted(&prog, None).unwrap();
        chmod(&dir, 0o755);

        std::os::unix::fs::chown(&prog, Some(4242), None).unwrap();
        let err = check_trusted(&prog, None).unwrap_err().to_string();
        assert!(err.contains("owned by uid 4242"), "{err}");
        check_trusted(&prog, Some(4242)).unwrap();

        // A symlink to a writable place is judged where it points.
        let evil = t.path().join("evil");
        std::fs::create_dir(&evil).unwrap();
        chmod(&evil, 0o777);
        std::fs::write(evil.join("x"), "").unwrap();
        chmod(&evil.join("x"), 0o755);
        let link = dir.join("link");
        std::os::unix::fs::symlink(evil.join("x"), &link).unwrap();
        let err = check_trusted(&link, None).unwrap_err().to_string();
        assert!(err.contains("evil"), "{err}");
    }
}
