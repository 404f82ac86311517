//! `rnr image …` against the real Docker Engine: build, import, list, remove, and clear
//! errors for bad input.

mod common;

use common::rnr;

fn run(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    rnr()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RNR_DOCKER__NETWORK", common::NETWORK)
        .env("RNR_DRIVER", "docker")
        .output()
        .expect("run rnr")
}

#[test]
fn build_import_and_list_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["image", "build", "tiny", "--name", "tiny-cli-test"],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Progress: one line per stage when not on a terminal.
    assert!(
        err.contains("installing") && err.contains("packing"),
        "{err}"
    );
    let tar = dir.path().join("images/tiny-cli-test.tar");
    assert!(tar.is_file());

    let tar_s = tar.to_str().unwrap();
    let out = run(&["image", "import", "tiny-imported", tar_s], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["image", "list"], dir.path());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("tiny-cli-test") && listing.contains("tiny-imported"),
        "{listing}"
    );

    // Already there: --if-missing builds nothing.
    let out = run(
        &[
            "image",
            "build",
            "tiny",
            "--name",
            "tiny-cli-test",
            "--if-missing",
        ],
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already present"));

    // Bad input is refused with what and where, and nothing is imported.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tarball").unwrap();
    let out = run(
        &["image", "import", "junk", junk.to_str().unwrap()],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.tar"));
    let out = run(&["image", "import", "Bad/Name", tar_s], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bad/Name"));
    let out = run(&["image", "build", "gentoo"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown image kind"));
    let out = run(&["image", "list"], dir.path());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("junk"));

    for name in ["tiny-imported", "tiny-cli-test"] {
        let out = run(&["image", "rm", name], dir.path());
        assert!(
            out.status.success(),
            "rm {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(&["image", "list"], dir.path());
        assert!(!String::from_utf8_lossy(&out.stdout).contains(name));
    }
    // Unknown: an error that names it and says where to look.
    let out = run(&["image", "rm", "tiny-imported"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no image named \"tiny-imported\"") && err.contains("rnr image list"),
        "{err}"
    );
}
