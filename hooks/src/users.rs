//! Resolving user names to uid/gid through NSS (`getpwnam_r`: `/etc/passwd`, LDAP, SSSD),
//! the same lookup preflight makes, so a user it accepts is one the reloads can find.

use crate::error::{Error, Result};

/// A user's numeric identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserIds {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Looks `user` up through NSS. A purely numeric `user` is taken as a uid (its gid then
/// comes from its entry if it has one, else equals the uid).
pub(crate) fn lookup_user(user: &str) -> Result<UserIds> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| UserIds {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })
            .or(Some(UserIds { uid, gid: uid })),
        Err(_) => nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| UserIds {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
    };
    found.ok_or_else(|| Error::UnknownUser {
        user: user.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_and_uids() {
        assert_eq!(
            lookup_user("root").expect("root"),
            UserIds { uid: 0, gid: 0 }
        );
        assert_eq!(lookup_user("0").expect("uid 0"), UserIds { uid: 0, gid: 0 });
        assert_eq!(
            lookup_user("4242999").expect("numeric"),
            UserIds {
                uid: 4_242_999,
                gid: 4_242_999
            }
        );
        assert!(matches!(
            lookup_user("nobody-here"),
            Err(Error::UnknownUser { user }) if user == "nobody-here"
        ));
    }
}
