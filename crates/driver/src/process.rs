//! Host-side process helpers for drivers whose machines' processes are visible in the
//! host's procfs (docker on the local engine, native): killing a process tree.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Parent pid of every process in `proc_root` (normally `/proc`).
fn parents(proc_root: &Path) -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses; fields resume after the last ')'.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                map.insert(pid, ppid);
            }
        }
    }
    map
}

/// `pid` and all its descendants.
pub fn descendants(proc_root: &Path, pid: i32) -> Vec<i32> {
    let parents = parents(proc_root);
    let mut tree: HashSet<i32> = HashSet::from([pid]);
    // Repeat until no new child is found; trees are shallow so this converges quickly.
    loop {
        let before = tree.len();
        for (&child, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(child);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.into_iter().collect()
}

/// Sends SIGKILL to `pid` and all its descendants. Processes already gone are ignored.
pub fn kill_tree(proc_root: &Path, pid: i32) {
    if pid <= 1 {
        return;
    }
    // Stop first so no process forks new children between the scan and the kill.
    let tree = descendants(proc_root, pid);
    for &p in &tree {
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    for p in descendants(proc_root, pid).into_iter().chain(tree) {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}
