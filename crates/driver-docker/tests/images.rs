//! The Docker driver's image store beyond the shared suite: the engine keeps an image it
//! no longer tags (replaced by a re-import, or removed) for as long as a container uses
//! it, and the driver prunes it once none does. Needs dockerd on /var/run/docker.sock and
//! busybox-static.

mod common;

use rnr_driver::conformance::{sh, spec, unique_id, Cleanup};
use rnr_driver::MachineStatus;

/// Ids of the images the driver imported as `name`, tagged or not.
fn images_named(name: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["images", "--all", "--quiet", "--no-trunc", "--filter"])
        .arg(format!("label=io.rootnroll.image={name}"))
        .output()
        .expect("run docker images");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_images_are_pruned_once_no_container_uses_them() {
    let h = common::harness("images", "conformance-tiny").await;
    let images = h.driver.images();
    let name = unique_id("prune");
    images.import(&name, &h.rootfs_tar).await.expect("import");
    let mut s = spec(&h, "prune");
    s.image = name.clone();
    let _guard = Cleanup::new(&h, &s.id);
    h.driver.create(&s).await.expect("create");

    // Replaced, then removed: the one the machine runs from stays, the other goes.
    images
        .import(&name, &h.rootfs_tar)
        .await
        .expect("re-import");
    assert_eq!(images_named(&name).len(), 2, "in use and current");
    images.remove(&name).await.expect("remove");
    assert_eq!(images_named(&name).len(), 1, "only the one in use");
    assert_eq!(
        h.driver.inspect(&s.id).await.expect("inspect").status,
        MachineStatus::Running
    );
    let out = sh(&h, &s.id, "echo alive").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");

    // Its machine gone, the next import or removal prunes it.
    h.driver.delete(&s.id).await.expect("delete");
    let other = unique_id("other");
    images
        .import(&other, &h.rootfs_tar)
        .await
        .expect("import another");
    images.remove(&other).await.expect("remove it");
    assert!(images_named(&name).is_empty(), "{:?}", images_named(&name));
    assert!(
        images_named(&other).is_empty(),
        "{:?}",
        images_named(&other)
    );
}
