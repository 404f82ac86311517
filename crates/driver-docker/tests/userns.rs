//! Root in a Docker machine is not root on the host: on the engine rnr starts
//! (`scripts/install-deps.sh`: `dockerd --userns-remap`), what root in a machine creates is
//! owned by an unprivileged host uid, and the host root's files are nobody's to it. Needs
//! that engine on /var/run/docker.sock (the driver is connected with
//! `require_userns_remap`, so an engine without remapping fails every test at once).

mod common;

use bollard::container::ListContainersOptions;
use rnr_driver::conformance::{sh, spec, Cleanup, Harness};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// The host pid of machine `id`'s init, from the engine.
async fn init_pid(id: &str) -> u32 {
    let docker = bollard::Docker::connect_with_unix_defaults().expect("docker socket");
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={id}", rnr_driver::MACHINE_LABEL)],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .expect("list containers");
    let name = list
        .first()
        .and_then(|c| c.id.clone())
        .unwrap_or_else(|| panic!("no container for machine {id}"));
    let c = docker
        .inspect_container(&name, None)
        .await
        .expect("inspect");
    let pid = c.state.and_then(|s| s.pid).expect("a pid");
    u32::try_from(pid).expect("a running init")
}

/// The host ids `0` in machine `pid`'s user namespace is (the first line of its uid map).
fn host_root_of(pid: u32) -> u32 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    let fields: Vec<u32> = map
        .split_whitespace()
        .map(|f| f.parse().expect("a number"))
        .collect();
    assert_eq!(
        fields[0], 0,
        "the map starts at the machine's root: {map:?}"
    );
    fields[1]
}

async fn machine(h: &Harness, tag: &str) -> (String, Cleanup, u32) {
    let spec = spec(h, tag);
    let guard = Cleanup::new(h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    let pid = init_pid(&spec.id).await;
    (spec.id, guard, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn files_root_makes_are_an_unprivileged_host_uids() {
    let h = common::harness("userns", "userns-tiny").await;
    let (id, _g, pid) = machine(&h, "owner").await;
    let out = sh(
        &h,
        &id,
        "id -u && echo hi >/made-by-root && mkdir /dir-by-root",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "root inside"
    );

    let host_root = host_root_of(pid);
    assert!(
        host_root >= 65536,
        "the machine's root is host uid {host_root}: not an unprivileged range of its own"
    );
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for name in ["made-by-root", "dir-by-root"] {
        let md = std::fs::metadata(root.join(name)).expect("seen from the host");
        assert_eq!(
            (md.uid(), md.gid()),
            (host_root, host_root),
            "{name}, made by root in the machine, is owned on the host by"
        );
        assert_ne!(md.uid(), 0);
    }
    // The machine's processes themselves: no host uid 0 among their real, effective, saved
    // and filesystem ids.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|u| u == host_root.to_string()),
        "the machine's init on the host: {uids}"
    );
}

/// A host file root-owned on the host, put into the machine by the host: to the machine's
/// root it belongs to nobody, and none of host root's powers over it are there.
#[tokio::test(flavor = "multi_thread")]
async fn host_roots_files_are_out_of_a_machines_roots_reach() {
    let h = common::harness("userns", "userns-tiny").await;
    let (id, _g, pid) = machine(&h, "hostfile").await;
    let secret = PathBuf::from(format!("/proc/{pid}/root/host-secret"));
    std::fs::write(&secret, "host only\n").expect("the host writes into the machine");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0, "host root's");

    let out = sh(&h, &id, "stat -c %u /host-secret").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "65534",
        "host uid 0 is unmapped (the overflow uid) in the machine: {out:?}"
    );
    for (what, cmd) in [
        ("read it", "cat /host-secret"),
        ("write it", "echo pwned >>/host-secret"),
        ("chown it", "chown 0:0 /host-secret"),
        ("chmod it", "chmod 666 /host-secret"),
    ] {
        let out = sh(&h, &id, cmd).await;
        assert_ne!(
            out.exit_code,
            Some(0),
            "root in the machine could {what} ({cmd}): {out:?}"
        );
    }
    let md = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o7777),
        (0, 0o600),
        "owner and mode unchanged"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host only\n");
}
