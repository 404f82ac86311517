//! Resolving the user an exec asks for against the machine's own account database.

use crate::error::{NResult, NativeError};
use crate::NativeDriver;

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
        let root = self.inner.cfg.proc_root.join(pid.to_string()).join("root");
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let bad = |what: &str| NativeError::Invalid {
            id: id.to_string(),
            message: format!("unknown {what} in user {user:?}"),
        };
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && (f[0] == u || f[2] == u));
        let (uid, mut gid, home) = match (entry, u.parse::<u32>()) {
            (Some(f), _) => (
                f[2].parse().map_err(|_| bad("user"))?,
                f[3].parse().map_err(|_| bad("user"))?,
                f[5].to_string(),
            ),
            (None, Ok(n)) => (n, n, "/".to_string()),
            (None, Err(_)) => return Err(bad("user")),
        };
        if let Some(g) = g {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| bad("group"))?,
            };
        }
        Ok((uid, gid, home))
    }
}
