//! Resolving user names to uid/gid without libc: `/etc/passwd` lookups.

use std::path::Path;

use crate::error::{Error, Result};

/// A user's numeric identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserIds {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Looks `user` up in `/etc/passwd`. A purely numeric `user` is taken as a
/// uid (its gid then comes from `/etc/passwd` if listed, else equals the uid).
pub(crate) fn lookup_user(user: &str) -> Result<UserIds> {
    lookup_user_in(Path::new("/etc/passwd"), user)
}

pub(crate) fn lookup_user_in(passwd: &Path, user: &str) -> Result<UserIds> {
    let text = std::fs::read_to_string(passwd).map_err(|source| Error::Io {
        path: passwd.to_path_buf(),
        source,
    })?;
    let numeric: Option<u32> = user.parse().ok();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_pw), Some(uid), Some(gid)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            continue;
        };
        if name == user || numeric == Some(uid) {
            return Ok(UserIds { uid, gid });
        }
    }
    match numeric {
        Some(uid) => Ok(UserIds { uid, gid: uid }),
        None => Err(Error::UnknownUser {
            user: user.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_and_uids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nbroken line\nncprd1:x:1001:1002::/home/ncprd1:/bin/sh\n",
        )
        .expect("write");
        assert_eq!(
            lookup_user_in(&passwd, "ncprd1").expect("found"),
            UserIds {
                uid: 1001,
                gid: 1002
            }
        );
        assert_eq!(
            lookup_user_in(&passwd, "1001").expect("found"),
            UserIds {
                uid: 1001,
                gid: 1002
            }
        );
        assert_eq!(
            lookup_user_in(&passwd, "4242").expect("numeric"),
            UserIds {
                uid: 4242,
                gid: 4242
            }
        );
        assert!(matches!(
            lookup_user_in(&passwd, "nobody-here"),
            Err(Error::UnknownUser { user }) if user == "nobody-here"
        ));
    }
}
