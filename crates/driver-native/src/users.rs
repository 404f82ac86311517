//! Resolving the user an exec asks for against the machine's own account database, for
//! the `crun exec` fallback (the agent resolves users inside the machine itself).
//!
//! The files are the machine's, read by the host: the learner, root in there, may have
//! made /etc/passwd a symlink to a host path or to /dev/zero, a FIFO nobody writes, or a
//! gigabyte. [`rnr_driver::files`] keeps every lookup inside the machine's root, opens
//! regular files only, and at most [`MAX_ACCOUNTS_FILE`] of them: a hostile file makes the
//! lookup fail at once with the reason, never hang or read the host's own.

use crate::error::{NResult, NativeError};
use crate::NativeDriver;

/// Largest passwd or group file read from a machine.
const MAX_ACCOUNTS_FILE: u64 = 1 << 20;

impl NativeDriver {
    /// uid, gid and home of `user` (`name`, `uid`, `name:group`, `uid:gid`) in the
    /// machine whose init is `pid`, from its own /etc/passwd and /etc/group; root without one.
    pub(crate) fn resolve_user(
        &self,
        id: &str,
        pid: i32,
        user: Option<&str>,
    ) -> NResult<(u32, u32, String)> {
        let Some(user) = user else {
            return Ok((0, 0, "/root".into()));
        };
        let proc_root = &self.inner.cfg.proc_root;
        let root = proc_root.join(pid.to_string()).join("root");
        // A missing file is an empty database; any other failure is kept to be told.
        let read = |path: &str| -> Result<String, String> {
            match rnr_driver::files::read_regular(proc_root, &root, path, MAX_ACCOUNTS_FILE) {
                Ok(data) => Ok(String::from_utf8_lossy(&data).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(format!("the machine's {path} cannot be read: {e}")),
            }
        };
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let bad = |what: String| NativeError::Invalid {
            id: id.to_string(),
            message: format!("{what} in user {user:?}"),
        };
        let passwd = read("/etc/passwd");
        let entry = passwd.as_deref().ok().and_then(|text| {
            text.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 6 && (f[0] == u || f[2] == u))
                .map(|f| (f[2].to_string(), f[3].to_string(), f[5].to_string()))
        });
        let (uid, mut gid, home) = match (entry, u.parse::<u32>()) {
            (Some((uid, gid, home)), _) => (
                uid.parse().map_err(|_| bad(format!("bad uid of {u:?}")))?,
                gid.parse().map_err(|_| bad(format!("bad gid of {u:?}")))?,
                home,
            ),
            (None, Ok(n)) => (n, n, "/".to_string()),
            (None, Err(_)) => {
                let why = passwd.err().map_or(String::new(), |e| format!(" ({e})"));
                return Err(bad(format!("unknown user {u:?}{why}")));
            }
        };
        if let Some(g) = g {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let group = read("/etc/group").map_err(|e| bad(format!("group {g:?}: {e}")))?;
                    group
                        .lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() >= 3 && f[0] == g)
                        .and_then(|f| f[2].parse().ok())
                        .ok_or_else(|| bad(format!("unknown group {g:?}")))?
                }
            };
        }
        Ok((uid, gid, home))
    }
}
