//! The machine's own /etc/passwd and /etc/group, read from inside the machine: for checks
//! (`user`, `group`, file owners) and for the user an exec runs as.
//!
//! The learner is root and may have made either file anything: a symlink to /dev/zero, a
//! FIFO nobody writes, gigabytes. They are opened without blocking, taken only if they are
//! regular files, and read up to a cap, so a hostile file makes a lookup fail, never hang.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Largest passwd or group file read; the rest is ignored.
const MAX_ACCOUNTS_FILE: u64 = 4 << 20;

pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// A regular file's text, at most `max` bytes of it; `None` for anything else.
pub fn read_regular(path: &str, max: u64) -> Option<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = Vec::new();
    f.take(max).read_to_end(&mut text).ok()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

pub fn passwd() -> Vec<PasswdEntry> {
    let text = read_regular("/etc/passwd", MAX_ACCOUNTS_FILE).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .collect()
}

pub fn groups() -> Vec<GroupEntry> {
    let text = read_regular("/etc/group", MAX_ACCOUNTS_FILE).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| GroupEntry {
                name: f[0].into(),
                gid: f[2].parse().unwrap_or(u32::MAX),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Who an exec runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Resolves `user[:group]` (names or numbers) against the machine's accounts; root when
/// `None`. A number that names nobody is taken as is, with itself as the group and `/` as
/// home, as runtimes do.
pub fn resolve(spec: Option<&str>) -> Result<Identity, String> {
    let Some(spec) = spec else {
        let home = passwd()
            .into_iter()
            .find(|p| p.uid == 0)
            .map_or_else(|| "/root".to_string(), |p| p.home);
        return Ok(Identity {
            uid: 0,
            gid: 0,
            home,
        });
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd();
    let entry = users.iter().find(|p| p.name == u).or_else(|| {
        u.parse::<u32>()
            .ok()
            .and_then(|n| users.iter().find(|p| p.uid == n))
    });
    let mut id = match (entry, u.parse::<u32>()) {
        (Some(p), _) => Identity {
            uid: p.uid,
            gid: p.gid,
            home: p.home.clone(),
        },
        (None, Ok(n)) => Identity {
            uid: n,
            gid: n,
            home: "/".into(),
        },
        (None, Err(_)) => return Err(format!("unknown user {u:?} in user {spec:?}")),
    };
    if let Some(g) = g {
        id.gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups()
                .into_iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("unknown group {g:?} in user {spec:?}"))?,
        };
    }
    Ok(id)
}
