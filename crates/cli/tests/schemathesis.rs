//! The HTTP API fuzzed from its own OpenAPI document by schemathesis (from PyPI, in the venv
//! scripts/install-deps.sh makes): a real `rnr serve` on the driver under test, every
//! documented operation called with generated requests, valid and invalid, and in stateful
//! sequences that follow the document's links (a machine created, then exec'd in, extended,
//! given terminals and check runs, deleted). It fails on any server error (5xx) and on any
//! response the document does not describe: its status, its content type, its body's
//! schema — so every error body is the documented `{"error":{"code","message"}}`.
//!
//! Ignored by a plain `cargo test` (it needs the venv and a few minutes of machines);
//! scripts/test.sh runs it with `--ignored`.

mod common;

use common::Server;
use std::path::Path;
use std::process::Command;

const SCHEMATHESIS: &str = "/opt/rnr-schemathesis/bin/schemathesis";

#[test]
#[ignore = "needs schemathesis in /opt/rnr-schemathesis (scripts/install-deps.sh); scripts/test.sh runs it"]
fn the_api_answers_as_its_openapi_document_says() {
    assert!(
        Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: scripts/install-deps.sh installs it"
    );
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    // Room for every machine the run creates at once: a full platform answers 503
    // capacity_exceeded, a server error by schemathesis's count, though documented.
    let s = Server::start(&[("RNR_AGENT_PATH", agent.as_str()), ("RNR_CAPACITY", "200")]);
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(SCHEMATHESIS)
        .args(["--no-color", "run"])
        .arg(format!("{}/api/v1/openapi.json", s.url))
        .args(["--url", &s.url])
        .args(["--header", &format!("Authorization: Bearer {}", s.key)])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        // Bounded: a few examples per operation, a time budget for the whole run, one
        // worker (machines are real); the seed makes a failure reproducible.
        .args(["--max-examples", "8", "--max-time", "75", "--workers", "1"])
        .args(["--seed", "1", "--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .arg("--report-dir")
        .arg(report.path())
        // It keeps a cache (.schemathesis/) in its working directory: the temporary one.
        .current_dir(report.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "schemathesis found responses the OpenAPI document does not describe (above); \
         server log:\n{}",
        s.log_text()
    );
    // It ran every phase against the API, rather than stopping at the document.
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(stdout.contains(phase), "no {phase} phase in:\n{stdout}");
    }
}
