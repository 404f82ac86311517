//! The learner's whole path, an embedded second learner and the operator's view, end to end
//! in headless Chromium (web/test/learner.mjs) against a real `rnr serve`, real Docker
//! machines of the Debian image and the starter exercise from the seed article. The
//! screenshots it takes are the ones in docs/screenshots.

mod common;

use common::Server;
use std::path::Path;
use std::process::Command;

fn ensure_debian() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::rnr()
        .args(["image", "build", "debian", "--if-missing", "--data-dir"])
        .arg(tmp.path())
        .env("RNR_DRIVER", "docker")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn learner_embed_and_operator_in_chromium() {
    if common::native() {
        // The browser path is driver-independent; the docker pass covers it.
        return;
    }
    ensure_debian();
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let exercises = root.join("exercises");
    let s = Server::start(&[
        ("RNR_AGENT_PATH", agent.as_str()),
        ("RNR_CHECKER__EXERCISES_DIR", exercises.to_str().unwrap()),
        ("RNR_DEFAULT_IMAGE", "debian"),
    ]);
    let web = root.join("web");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "web/node_modules is missing: the rnr-gateway build runs npm ci there"
    );
    let shots = root.join("docs/screenshots");
    let out = Command::new("node")
        .arg("test/learner.mjs")
        .arg(&s.url)
        .arg(&s.key)
        .arg(&shots)
        .current_dir(&web)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "learner browser test failed:\n{stderr}\nserver log:\n{}",
        s.log_text()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("results line");
    assert_eq!(seen["post_message"]["type"], "rnr:passed");
    for shot in [
        "learner.png",
        "learner-failing.png",
        "embed.png",
        "operator.png",
    ] {
        assert!(shots.join(shot).is_file(), "{shot} taken");
    }
}
