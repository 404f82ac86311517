//! The browser terminal in headless Chromium (Debian's `chromium`, driven by playwright-core
//! from terminal-client/node_modules, which the gateway's build installed):
//! terminal-client/test/browser.mjs types, resizes, reloads (also inside vi), watches as a
//! viewer, copies and pastes, cats 100 MB and interrupts `yes`, replays a recording,
//! against a real `rnr serve` and a real Docker machine, with no Content-Security-Policy
//! violation.

mod common;

use common::Server;
use serde_json::json;

#[test]
fn terminal_page_in_chromium() {
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    let s = Server::start(&[("RNR_AGENT_PATH", agent.as_str())]);
    let m = s.create(json!({"ttl_seconds": 900, "limits": {"memory_mib": 512}}));
    let m = m["id"].as_str().unwrap();
    let (status, t) = s.call(
        reqwest::Method::POST,
        &format!("/api/v1/machines/{m}/terminals"),
        Some(json!({})),
    );
    assert_eq!(status, 201, "{t}");
    let (status, rec) = s.call(
        reqwest::Method::POST,
        &format!("/api/v1/machines/{m}/terminals"),
        Some(json!({"record": true})),
    );
    assert_eq!(status, 201, "{rec}");
    let results = common::run_browser_script(
        &s,
        "browser.mjs",
        &[
            t["page_url"].as_str().unwrap(),
            t["viewer_page_url"].as_str().unwrap(),
            rec["page_url"].as_str().unwrap(),
        ],
    );
    assert!(results["cat_100mb"]["mb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(results["replay"], "ok");
    // The terminal and replay pages ran under rnr's Content-Security-Policy.
    assert_eq!(results["csp_violations"], 0);
}
