//! End-to-end tests of the public API with the real tools: busybox-static for the tiny
//! image, GNU tar, and debootstrap's failure paths (a real Debian build takes minutes and
//! needs network; `cargo run -p rnr-images --example build_debian` does that by hand).

use rnr_images::{
    build_debian, build_tiny, check_rootfs_tarball, DebianSpec, ImageError, NoProgress, Progress,
};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// Debian's busybox-static installs its static binary here.
const BUSYBOX: &str = "/bin/busybox";

#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<(String, Option<u64>, u64)>>,
}

impl Progress for Recorder {
    fn stage(&self, name: &str, total: Option<u64>) {
        if let Ok(mut s) = self.stages.lock() {
            s.push((name.to_owned(), total, 0));
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(mut s) = self.stages.lock() {
            if let Some(last) = s.last_mut() {
                last.2 += n;
            }
        }
    }
    fn message(&self, _msg: &str) {}
}

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    size: u64,
    link: Option<PathBuf>,
    data: Vec<u8>,
}

fn entries(tar_path: &Path) -> HashMap<String, Entry> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar_path).expect("open"));
    let mut out = HashMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let header = entry.header();
        let (kind, mode, uid, size) = (
            header.entry_type(),
            header.mode().expect("mode"),
            header.uid().expect("uid"),
            header.size().expect("size"),
        );
        let link = entry.link_name().expect("link").map(|l| l.into_owned());
        let mut data = Vec::new();
        if size < 4096 {
            entry.read_to_end(&mut data).expect("read");
        }
        out.insert(
            name,
            Entry {
                kind,
                mode,
                uid,
                size,
                link,
                data,
            },
        );
    }
    out
}

/// Fails a test that needs root unless it runs as root. scripts/test.sh (the README's
/// test command) always does, so such a test is never skipped silently.
fn require_root(why: &str) {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(
        root,
        "this test needs root ({why}); run it as root, as scripts/test.sh does"
    );
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("readdir").next().is_none()
}

#[test]
fn tiny_image_is_a_bootable_rootfs() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("work");
    let out = scratch.path().join("tiny.tar");
    let recorder = Recorder::default();

    let started = Instant::now();
    build_tiny(Path::new(BUSYBOX), &work, &out, &recorder).expect("build_tiny");
    eprintln!(
        "tiny image: {:?}, {} bytes",
        started.elapsed(),
        std::fs::metadata(&out).expect("stat").len()
    );

    assert!(
        dir_is_empty(&work),
        "build_tiny left its scratch dir behind"
    );
    check_rootfs_tarball(&out).expect("tiny image passes the check");

    let listed = entries(&out);
    let busybox = &listed["./bin/busybox"];
    assert_eq!(busybox.kind, tar::EntryType::Regular);
    assert_eq!(busybox.mode & 0o7777, 0o755);
    assert_eq!(
        busybox.size,
        std::fs::metadata(BUSYBOX).expect("stat").len()
    );
    let sh = &listed["./bin/sh"];
    assert_eq!(sh.kind, tar::EntryType::Symlink);
    assert_eq!(sh.link.as_deref(), Some(Path::new("busybox")));
    assert_eq!(
        listed["./usr/bin/["].link.as_deref(),
        Some(Path::new("../../bin/busybox"))
    );
    assert_eq!(listed["./tmp/"].mode & 0o7777, 0o1777);
    assert_eq!(listed["./"].mode & 0o7777, 0o755);
    for dir in ["./proc/", "./sys/", "./dev/", "./root/"] {
        assert_eq!(listed[dir].kind, tar::EntryType::Directory, "{dir}");
    }
    assert!(String::from_utf8_lossy(&listed["./etc/os-release"].data).contains("ID=rnr-tiny\n"));
    assert!(String::from_utf8_lossy(&listed["./etc/passwd"].data)
        .starts_with("root:x:0:0:root:/root:/bin/sh\n"));
    assert!(listed.contains_key("./etc/group"));
    assert!(!listed.contains_key("./etc/hostname"));
    assert!(
        listed.values().all(|e| e.uid == 0),
        "not everything owned by root"
    );

    let stages = recorder.stages.lock().expect("lock").clone();
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["installing", "packing"]);
    for (name, total, done) in &stages {
        assert_eq!(Some(*done), *total, "stage {name} did not reach its total");
    }
}

/// Extracts the tiny image and runs its shell in a chroot: proof the tarball boots, not
/// just that it lists the right names. Needs root for chroot.
#[test]
fn tiny_image_runs_in_a_chroot() {
    require_root("chroot");
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = scratch.path().join("tiny.tar");
    build_tiny(Path::new(BUSYBOX), scratch.path(), &out, &NoProgress).expect("build_tiny");
    let root = scratch.path().join("extracted");
    std::fs::create_dir(&root).expect("mkdir");
    let status = Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .status()
        .expect("tar");
    assert!(status.success());
    let output = Command::new("chroot")
        .arg(&root)
        .args([
            "/bin/sh",
            "-c",
            ". /etc/os-release; echo $ID; ls / | wc -l; id -un",
        ])
        .env_clear()
        .env("PATH", "/bin:/usr/bin:/sbin:/usr/sbin")
        .output()
        .expect("chroot");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(lines[0], "rnr-tiny");
    assert_ne!(lines[1], "0");
    assert_eq!(lines[2], "root");
}

#[test]
fn tiny_refuses_a_dynamically_linked_busybox() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = scratch.path().join("tiny.tar");
    let err = build_tiny(Path::new("/bin/ls"), scratch.path(), &out, &NoProgress)
        .expect_err("/bin/ls is dynamic");
    assert!(matches!(err, ImageError::InvalidBusybox { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/bin/ls") && msg.contains("busybox-static"),
        "{msg}"
    );
    assert!(!out.exists());
}

fn expect_invalid(path: &Path, want: &str) {
    let err = check_rootfs_tarball(path).expect_err("should be rejected");
    let msg = err.to_string();
    assert!(matches!(err, ImageError::InvalidTarball { .. }), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "{msg} should name the file"
    );
    assert!(msg.contains(want), "{msg:?} should say {want:?}");
}

#[test]
fn check_rejects_garbage() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let garbage = scratch.path().join("garbage.tar");
    std::fs::write(&garbage, "this is not a tar archive\n".repeat(100)).expect("write");
    expect_invalid(&garbage, "not a readable tar archive");

    let empty = scratch.path().join("empty.tar");
    std::fs::write(&empty, "").expect("write");
    expect_invalid(&empty, "empty");

    let gz = scratch.path().join("rootfs.tar.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).expect("write");
    expect_invalid(&gz, "gzip-compressed");

    let missing = scratch.path().join("missing.tar");
    let err = check_rootfs_tarball(&missing).expect_err("missing file");
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.tar"), "{err}");
}

/// Builds a tar with the given (name, kind, link target) entries.
fn make_tar(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).expect("create"));
    for (name, kind, target) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(0);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => builder
                .append_link(&mut header, name, target)
                .expect("append link"),
            _ => builder
                .append_data(&mut header, name, std::io::empty())
                .expect("append"),
        }
    }
    builder.finish().expect("finish");
}

#[test]
fn check_rejects_a_tar_without_a_shell() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let scratch = tempfile::tempdir().expect("tempdir");
    let no_sh = scratch.path().join("no-sh.tar");
    make_tar(
        &no_sh,
        &[("etc/", Directory, ""), ("etc/passwd", Regular, "")],
    );
    expect_invalid(&no_sh, "has no /bin/sh");

    let dangling = scratch.path().join("dangling.tar");
    make_tar(
        &dangling,
        &[("bin/", Directory, ""), ("bin/sh", Symlink, "dash")],
    );
    expect_invalid(&dangling, "/bin/dash, which is not in the tarball");

    let saved = scratch.path().join("saved.tar");
    make_tar(
        &saved,
        &[
            ("manifest.json", Regular, ""),
            ("abc/layer.tar", Regular, ""),
        ],
    );
    expect_invalid(&saved, "docker export");
}

#[test]
fn check_accepts_merged_usr_and_rejects_escapes() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let scratch = tempfile::tempdir().expect("tempdir");
    let merged = scratch.path().join("merged.tar");
    make_tar(
        &merged,
        &[
            ("./", Directory, ""),
            ("./bin", Symlink, "usr/bin"),
            ("./usr/bin/", Directory, ""),
            ("./usr/bin/dash", Regular, ""),
            ("./usr/bin/sh", Symlink, "dash"),
        ],
    );
    check_rootfs_tarball(&merged).expect("merged-/usr layout");

    // tar::Builder refuses `..`, so write the name into the header by hand.
    let escaping = scratch.path().join("escaping.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&escaping).expect("create"));
    let mut header = tar::Header::new_old();
    let name = b"../../etc/cron.d/x";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(0);
    header.set_cksum();
    builder.append(&header, std::io::empty()).expect("append");
    builder.finish().expect("finish");
    drop(builder);
    expect_invalid(&escaping, "climbs out of the root");
}

#[test]
fn debian_without_debootstrap_is_a_missing_tool() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = scratch.path().join("debian.tar");
    for debootstrap in ["/nonexistent/debootstrap", "rnr-no-such-debootstrap"] {
        let spec = DebianSpec {
            debootstrap: PathBuf::from(debootstrap),
            ..DebianSpec::default()
        };
        let err =
            build_debian(&spec, scratch.path(), &out, &NoProgress).expect_err("no debootstrap");
        let msg = err.to_string();
        assert!(
            matches!(&err, ImageError::MissingTool { tool, .. } if tool == debootstrap),
            "{msg}"
        );
        assert!(msg.contains("apt-get install debootstrap"), "{msg}");
    }
    assert!(dir_is_empty(scratch.path()), "left files behind");
}

/// A real debootstrap run that fails fast and offline (the mirror does not exist): the
/// error carries debootstrap's own explanation, and nothing is left behind.
#[test]
fn debian_debootstrap_failure_is_reported_and_cleaned_up() {
    require_root("debootstrap");
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("work");
    let out = scratch.path().join("debian.tar");
    let spec = DebianSpec {
        mirror: format!("file://{}/no-mirror", scratch.path().display()),
        ..DebianSpec::default()
    };
    let err = build_debian(&spec, &work, &out, &NoProgress).expect_err("no mirror");
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Debootstrap { .. }), "{msg}");
    assert!(msg.contains("debian.tar"), "{msg}");
    assert!(msg.contains("E: "), "no debootstrap error line in {msg}");
    assert!(!out.exists());
    assert!(
        dir_is_empty(&work),
        "scratch dir left in {}",
        work.display()
    );
}
