//! Running with least privilege: resolve `[global] user` / `group`, drop to them once the
//! listeners are bound and the keys read, and raise RLIMIT_NOFILE while still allowed to.
//!
//! The libc calls are the process-wide ones: glibc's `setgid`/`setuid`/`setgroups` apply to
//! every thread of the process (the raw syscalls would change only the calling thread).

use std::ffi::{CStr, CString};
use std::io;

/// A resolved account to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

/// Looks up `user` (a name or a numeric uid) and `group` (a name or gid; default: the user's
/// primary group). Errors say what is unknown.
pub fn resolve(user: &str, group: Option<&str>) -> Result<RunAs, String> {
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_by_uid(uid).map(|(_, gid)| gid)),
        Err(_) => {
            let (uid, gid) =
                passwd_by_name(user).ok_or_else(|| format!("no user named {user:?}"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_by_name(g).ok_or_else(|| format!("no group named {g:?}"))?,
        },
        None => primary.ok_or_else(|| {
            format!("user {user:?} has no passwd entry to take a primary group from: set group")
        })?,
    };
    Ok(RunAs {
        user: user.to_owned(),
        uid,
        group: group.map_or_else(|| gid.to_string(), str::to_owned),
        gid,
    })
}

/// (uid, primary gid) of the user called `name`.
fn passwd_by_name(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid value of this plain C struct (null pointers,
    // zero ids); getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is NUL-terminated, `pwd` and
    // `found` are live locals, `buf` is writable for `buf.len()` bytes; the strings `pwd`
    // points into live in `buf`, which outlives every read below.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// (name, primary gid) of the user with `uid`, if it has a passwd entry.
fn passwd_by_uid(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `passwd_by_name`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `passwd_by_name`; `pw_name` points into `buf` and is NUL-terminated
    // when the call succeeded.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success `pw_name` is a NUL-terminated string inside `buf`, still alive.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pwd.pw_gid))
}

/// The gid of the group called `name`.
fn group_by_name(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: an all-zero `group` is a valid value of this plain C struct.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `passwd_by_name`, for getgrnam_r.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(grp.gr_gid)
}

/// Drops the whole process to `to`: supplementary groups to just its group, then the gid,
/// then the uid (in that order: after setuid there is no right left to change groups).
/// Checks afterwards that the old ids cannot be taken back.
pub fn drop_to(to: &RunAs) -> io::Result<()> {
    let groups = [to.gid as libc::gid_t];
    // SAFETY: `groups` is a live array of one gid for the duration of the call.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall wrappers taking ids by value.
    if unsafe { libc::setgid(to.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(to.uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (uid, euid) = (rustix::process::getuid(), rustix::process::geteuid());
    if uid.as_raw() != to.uid || euid.as_raw() != to.uid {
        return Err(io::Error::other(format!(
            "still uid {} / euid {} after setuid({})",
            uid.as_raw(),
            euid.as_raw(),
            to.uid
        )));
    }
    // SAFETY: as above; this must fail now that root is given up.
    if to.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("could take uid 0 back after dropping it"));
    }
    Ok(())
}

/// Hands a socket file created while privileged to the account the process drops to, so it
/// can still be removed at exit.
pub fn chown(path: &std::path::Path, to: &RunAs) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(to.uid), Some(to.gid))
}

/// What became of RLIMIT_NOFILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NofileOutcome {
    /// The soft limit already covered the need.
    Enough { soft: u64 },
    /// Raised (soft, and the hard limit too when it was below the need).
    Raised { from: u64, to: u64 },
    /// Raised as far as the hard limit allows, which is short of the need.
    Short { soft: u64, hard: u64 },
}

/// Raises the soft RLIMIT_NOFILE to `need` (and the hard one too when allowed — root with
/// CAP_SYS_RESOURCE), or as far as the hard limit lets it.
pub fn raise_nofile(need: u64) -> NofileOutcome {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    let hard = now.maximum.unwrap_or(u64::MAX);
    if soft >= need {
        return NofileOutcome::Enough { soft };
    }
    let both = Rlimit {
        current: Some(need),
        maximum: Some(hard.max(need)),
    };
    if setrlimit(Resource::Nofile, both).is_ok() {
        return NofileOutcome::Raised {
            from: soft,
            to: need,
        };
    }
    let capped = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, capped) {
        Ok(()) if hard > soft => NofileOutcome::Short { soft: hard, hard },
        _ => NofileOutcome::Short { soft, hard },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_unknown_ones_are_named() {
        let root = resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let by_number = resolve("0", Some("0")).unwrap();
        assert_eq!((by_number.uid, by_number.gid), (0, 0));
        let err = resolve("no-such-user-tlsfront", None).unwrap_err();
        assert!(err.contains("no-such-user-tlsfront"), "{err}");
        let err = resolve("root", Some("no-such-group-tlsfront")).unwrap_err();
        assert!(err.contains("no-such-group-tlsfront"), "{err}");
        // A uid without a passwd entry needs its group spelled out.
        assert!(resolve("4123456", None).is_err());
        assert_eq!(resolve("4123456", Some("4123457")).unwrap().gid, 4123457);
    }

    #[test]
    fn raising_to_what_is_already_there_changes_nothing() {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert_eq!(raise_nofile(soft.min(64)), NofileOutcome::Enough { soft });
    }
}
