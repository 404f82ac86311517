//! The browser terminal in headless Chromium (Debian's `chromium`, driven by playwright-core
//! from web/node_modules, which the gateway's build installed): web/test/browser.mjs types,
//! resizes, reloads (also inside vi), watches as a viewer, copies and pastes, cats 100 MB
//! and interrupts `yes`, replays a recording, against a real `rnr serve` and a real Docker machine.

mod common;

use common::Server;
use serde_json::json;
use std::path::Path;
use std::process::Command;

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
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "web/node_modules is missing: the rnr-gateway build runs npm ci there"
    );
    let out = Command::new("node")
        .arg("test/browser.mjs")
        .arg(t["page_url"].as_str().unwrap())
        .arg(t["viewer_page_url"].as_str().unwrap())
        .arg(rec["page_url"].as_str().unwrap())
        .current_dir(&web)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stderr}\nserver log:\n{}",
        s.log_text()
    );
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).expect("results line");
    assert!(results["cat_100mb"]["mb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(results["replay"], "ok");
}
