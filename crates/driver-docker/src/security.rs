//! What root in a Docker machine is on the host: the capabilities it holds and the system
//! calls it may make (the native driver's, no more: same capability list, same seccomp
//! allow-list), and whether the engine maps it to an unprivileged host uid (user namespace
//! remapping, `dockerd --userns-remap`), which the driver cannot turn on itself: it is the
//! engine's setting, for all its containers.
//!
//! `no-new-privileges` is not set, as on the native driver: the learner is root in the
//! machine already, so it guards no boundary there, and it would break what exercises
//! teach and check (`su`, `sudo` from a user the learner made, a sudoers file), since a
//! setuid binary could no longer raise a user to root inside the machine. What stops root
//! in the machine is the capability set, the seccomp filter and the remapped uid.

use bollard::models::SystemInfo;
use rnr_driver::{DriverError, Result};
use std::path::Path;

/// The capabilities the engine gives a container unless told otherwise: moby's
/// `caps.DefaultCapabilities()` (unchanged from Docker 1.x through 20.10 and later).
pub(crate) const ENGINE_DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `HostConfig.CapDrop` of every machine: whatever the engine would grant that the native
/// driver does not ([`rnr_driver_native::CAPABILITIES`]). Nothing is added (`CapAdd`
/// stays empty), so a machine never holds more than either driver's set: when the native
/// driver drops one, Docker machines lose it too.
pub(crate) fn dropped_capabilities() -> Vec<String> {
    ENGINE_DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| !rnr_driver_native::CAPABILITIES.contains(c))
        .map(|c| c.to_string())
        .collect()
}

/// `HostConfig.SecurityOpt` of every machine: the native driver's seccomp profile
/// ([`rnr_driver_native::seccomp_profile`], the allow-list derived from Docker's default
/// for the capabilities machines hold, on the 64-bit, i386 and x32 entry points) in place
/// of the engine's own. The engine takes a profile's JSON text, not a path.
pub(crate) fn security_options() -> Vec<String> {
    vec![format!("seccomp={}", rnr_driver_native::seccomp_profile())]
}

/// The highest group id a machine's ping group range may name: in a remapped user
/// namespace the kernel refuses a range past the map (Docker maps 65536 ids: the range
/// `scripts/install-deps.sh` gives, and dockerd's own `default`).
pub(crate) fn ping_max_gid(userns_remap: bool) -> u32 {
    match userns_remap {
        true => 65535,
        false => i32::MAX as u32,
    }
}

/// Whether the engine runs containers in a remapped user namespace: `docker info` lists
/// `name=userns` among its security options then.
pub(crate) fn userns_remapped(info: &SystemInfo) -> bool {
    info.security_options
        .iter()
        .flatten()
        .any(|o| o.split(',').any(|kv| kv == "name=userns"))
}

/// The operator's warning (or, with `docker.require_userns_remap`, the refusal) for an
/// engine without user-namespace remapping.
pub(crate) fn no_remap_warning(socket: &Path) -> String {
    format!(
        "the docker engine at {} runs containers WITHOUT user-namespace remapping: root in a \
         machine is uid 0 on the host, held back only by dropped capabilities, seccomp and \
         the engine's namespaces; a single container escape is host root. Start dockerd \
         with --userns-remap (=default, or a user with subordinate ids; \
         scripts/install-deps.sh starts its engine so, and restarts one it started before; \
         images must then be imported again, a remapped engine keeps its own), or \
         set docker.require_userns_remap = true to refuse such an engine",
        socket.display()
    )
}

/// Checks that the remapped root of a machine (an unprivileged host uid, "other" to every
/// file of the host) can reach the staged agent it is given as a bind mount: every
/// directory above it searchable by others, the binary readable and executable by them.
/// The error names the first path that is not, and what it lacks.
pub(crate) fn check_agent_reachable(agent_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let binary = agent_dir.join("rnr-agent");
    let unreachable = |path: &Path, lacks: &str| {
        DriverError::Unavailable(format!(
            "the staged agent {} is out of reach of the docker engine's remapped root: {} lacks \
         {lacks} for others (chmod o+{lacks} {}), or stage it elsewhere (the data dir's \
         agent/)",
            binary.display(),
            path.display(),
            path.display()
        ))
    };
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .map_err(|e| DriverError::io(format!("checking {}", path.display()), e))
    };
    if mode(&binary)? & 0o005 != 0o005 {
        return Err(unreachable(&binary, "rx"));
    }
    for dir in agent_dir.ancestors() {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if mode(dir)? & 0o001 == 0 {
            return Err(unreachable(dir, "x"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_set_is_within_the_engines_default() {
        // Docker machines get the engine's default minus what native does not grant; a
        // capability native grants beyond it would be missing on Docker (CapAdd is none).
        for cap in rnr_driver_native::CAPABILITIES {
            assert!(
                ENGINE_DEFAULT_CAPABILITIES.contains(cap),
                "{cap} is granted by the native driver but not by the engine's default"
            );
        }
        let dropped = dropped_capabilities();
        for cap in &dropped {
            assert!(!rnr_driver_native::CAPABILITIES.contains(&cap.as_str()));
        }
        assert_eq!(
            dropped.len() + rnr_driver_native::CAPABILITIES.len(),
            ENGINE_DEFAULT_CAPABILITIES.len()
        );
    }

    #[test]
    fn machines_get_the_native_seccomp_profile() {
        let opts = security_options();
        let [opt] = opts.as_slice() else {
            panic!("one security option: {opts:?}")
        };
        let json = opt.strip_prefix("seccomp=").expect("a seccomp option");
        let profile: serde_json::Value = serde_json::from_str(json).expect("JSON text");
        assert_eq!(profile, rnr_driver_native::seccomp_profile());
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO", "an allow-list");
        assert!(
            !opts.iter().any(|o| o.contains("no-new-privileges")),
            "setuid binaries must still work in machines, as on native"
        );
    }

    #[test]
    fn remapping_is_read_from_the_security_options() {
        let info = |opts: &[&str]| SystemInfo {
            security_options: Some(opts.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert!(!userns_remapped(&info(&["name=seccomp,profile=default"])));
        assert!(userns_remapped(&info(&[
            "name=seccomp,profile=default",
            "name=userns"
        ])));
        assert!(!userns_remapped(&SystemInfo::default()));
    }

    #[test]
    fn an_agent_out_of_others_reach_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("stage").join("abc");
        std::fs::create_dir_all(&agent).unwrap();
        std::fs::write(agent.join("rnr-agent"), b"x").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&agent.join("rnr-agent"), 0o755);
        for p in [dir.path(), &dir.path().join("stage"), &agent] {
            set(p, 0o755);
        }
        // The temp dir's own ancestors (/tmp) are searchable by everyone.
        check_agent_reachable(&agent).expect("reachable");
        set(&dir.path().join("stage"), 0o700);
        let err = check_agent_reachable(&agent).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("stage").display().to_string()) && err.contains("o+x"),
            "{err}"
        );
        set(&dir.path().join("stage"), 0o755);
        set(&agent.join("rnr-agent"), 0o700);
        let err = check_agent_reachable(&agent).unwrap_err().to_string();
        assert!(err.contains("o+rx"), "{err}");
    }
}
