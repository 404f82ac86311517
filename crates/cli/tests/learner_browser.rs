//! The learner's whole path, an embedded second learner and the operator's view, end to end
//! in headless Chromium (terminal-client/test/learner.mjs, beside the playwright-core the
//! terminal client's build installs) against a real `rnr serve`, real Docker machines of
//! the Debian image and the starter exercise from the seed article. The embed page is
//! framed by an LMS page on another origin (one of `[ui] embed_origins`) and refused to an
//! origin not listed; every page must run under rnr's Content-Security-Policy without a
//! violation. The screenshots it takes are the ones in docs/screenshots.

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
    // Two local origins for LMS pages: one allowed to frame the embed page, one not.
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let (lms, other) = (port(), port());
    let origins = format!("[\"http://127.0.0.1:{lms}\"]");
    let s = Server::start(&[
        ("RNR_AGENT_PATH", agent.as_str()),
        ("RNR_CHECKER__EXERCISES_DIR", exercises.to_str().unwrap()),
        ("RNR_DEFAULT_IMAGE", "debian"),
        ("RNR_UI__EMBED_ORIGINS", origins.as_str()),
    ]);
    let shots = root.join("docs/screenshots");
    let seen = common::run_browser_script(
        &s,
        "learner.mjs",
        &[&s.url, &s.key, shots.to_str().unwrap(), &lms, &other],
    );
    assert_eq!(seen["post_message"]["type"], "rnr:passed");
    assert_eq!(seen["csp_violations"], 0);
    assert!(seen["framing"].as_str().unwrap().contains("refused"));
    for shot in [
        "learner.png",
        "learner-failing.png",
        "embed.png",
        "operator.png",
    ] {
        assert!(shots.join(shot).is_file(), "{shot} taken");
    }
}
