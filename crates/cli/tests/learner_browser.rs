//! The learner's whole path, an embedded second learner and the operator's view, end to end
//! in headless Chromium (terminal-client/test/learner.mjs, beside the playwright-core the
//! terminal client's build installs) against a real `rnr serve`, real Docker machines of the Debian image and the starter exercise from the seed article. The
//! screenshots it takes are the ones in docs/screenshots.

mod common;

use common::Server;
use std::path::Path;

#[test]
fn learner_embed_and_operator_in_chromium() {
    // The browser path is driver-independent: scripts/test.sh runs it in its Docker pass
    // only (the native pass selects the api and terminal tests), on the Debian image it
    // builds into Docker.
    assert!(
        !common::native(),
        "this test runs on the Docker driver, where its Debian image is built; run it \
         without RNR_TEST_DRIVER=native"
    );
    common::ensure_debian();
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let exercises = root.join("exercises");
    let s = Server::start(&[
        ("RNR_AGENT_PATH", agent.as_str()),
        ("RNR_CHECKER__EXERCISES_DIR", exercises.to_str().unwrap()),
        ("RNR_DEFAULT_IMAGE", "debian"),
    ]);
    let shots = root.join("docs/screenshots");
    let seen = common::run_browser_script(
        &s,
        "learner.mjs",
        &[&s.url, &s.key, shots.to_str().unwrap()],
    );
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
