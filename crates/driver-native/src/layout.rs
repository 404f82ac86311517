//! Where things live in `state_dir` (see the crate's header for the whole layout): the
//! machines' host-side directories and their records (`machine.json`), and the rules names
//! must follow to become paths there.

use crate::error::{io_err, NResult, NativeError};
use crate::NativeDriver;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// With user namespaces, root in a machine is an unprivileged host uid that must reach its
/// rootfs under `dir`: every ancestor needs the search bit for others.
pub(crate) fn check_traversable(dir: &Path) -> NResult<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::canonicalize(dir).map_err(|e| io_err("resolving", dir, e))?;
    for a in dir.ancestors() {
        let md = std::fs::metadata(a).map_err(|e| io_err("reading", a, e))?;
        if md.mode() & 0o001 == 0 {
            return Err(NativeError::Invalid {
                id: a.display().to_string(),
                message: format!(
                    "machines in user namespaces cannot reach {} through it: make it \
                     traversable (chmod o+x) or move the state dir",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// The agent's socket in a machine's host-side directory.
pub(crate) const AGENT_SOCKET: &str = "agent.sock";

/// A machine's record in its directory.
pub(crate) const META_FILE: &str = "machine.json";

/// What the driver records per machine (`machines/<id>/machine.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) image: String,
    pub(crate) hostname: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) created_at: u64,
    pub(crate) lower: PathBuf,
    pub(crate) ip_index: u32,
    pub(crate) address: Ipv4Addr,
    pub(crate) veth: String,
    pub(crate) outbound: bool,
    /// Index of the uid range (userns machines only).
    pub(crate) range: Option<u32>,
    pub(crate) init_pid: Option<i32>,
    pub(crate) init_start: Option<u64>,
}

/// Machine and image names become paths and crun ids: keep them to a safe alphabet.
pub(crate) fn check_name(kind: &str, name: &str) -> NResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NativeError::Invalid {
            id: name.to_string(),
            message: format!("{kind} name must be 1-64 of [A-Za-z0-9._-], not starting with '.'"),
        })
    }
}

pub(crate) fn mkdir_mode(path: &Path, mode: u32) -> NResult<()> {
    std::fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("setting permissions of", path, e))
}

/// `run/machines/` of `state_dir`: one directory per machine.
pub(crate) fn machines_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run").join("machines")
}

impl NativeDriver {
    pub(crate) fn machine_dir(&self, id: &str) -> PathBuf {
        machines_dir(&self.inner.cfg.state_dir).join(id)
    }

    /// The machine's record, if it exists and belongs to this driver's owner.
    pub(crate) fn own_meta(&self, id: &str) -> NResult<Meta> {
        check_name("machine", id).map_err(|_| NativeError::NotFound(id.to_string()))?;
        match read_meta(&self.machine_dir(id)) {
            Ok(m) if m.owner == self.inner.cfg.owner => Ok(m),
            _ => Err(NativeError::NotFound(id.to_string())),
        }
    }
}

pub(crate) fn read_meta(dir: &Path) -> NResult<Meta> {
    let path = dir.join(META_FILE);
    let data = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
    serde_json::from_slice(&data).map_err(|e| NativeError::other(path.display().to_string(), e))
}

pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> NResult<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(".machine.json.tmp");
    let data = serde_json::to_vec(meta).map_err(|e| NativeError::other(&meta.id, e))?;
    std::fs::write(&tmp, data).map_err(|e| io_err("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))
}
