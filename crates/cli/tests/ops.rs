//! Operator endpoints against the real binary: `/metrics` in Prometheus text format with
//! machine gauges and create latencies, `/healthz` and `/readyz`.

mod common;

use common::Server;
use reqwest::Method;
use serde_json::json;

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in metrics:\n{text}"))
}

#[test]
fn metrics_health_and_readiness() {
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    let s = Server::start(&[("RNR_CAPACITY", "3"), ("RNR_AGENT_PATH", agent.as_str())]);
    let m = s.create(json!({}));
    s.create(json!({}));
    s.create(json!({}));
    let (st, _) = s.call(Method::POST, "/api/v1/machines", Some(json!({})));
    assert_eq!(st, 503);
    let (st, _) = s.call(
        Method::DELETE,
        &format!("/api/v1/machines/{}", m["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 204);

    let live = s
        .call(Method::GET, "/api/v1/machines?state=running", None)
        .1;
    let id = live["machines"][0]["id"].as_str().unwrap().to_string();
    let (st, t) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/terminals"),
        Some(json!({})),
    );
    assert_eq!(st, 201, "{t}");

    let resp = reqwest::blocking::get(format!("{}/metrics", s.url)).unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().unwrap();
    assert_eq!(sample(&text, "rnr_machines{state=\"running\"}"), 2.0);
    assert_eq!(sample(&text, "rnr_machines{state=\"deleted\"}"), 1.0);
    assert_eq!(sample(&text, "rnr_machines_created_total"), 3.0);
    assert_eq!(sample(&text, "rnr_machines_refused_capacity_total"), 1.0);
    assert_eq!(sample(&text, "rnr_machine_create_seconds_count"), 3.0);
    assert_eq!(sample(&text, "rnr_capacity"), 3.0);
    assert!(sample(&text, "rnr_machine_create_seconds_sum") > 0.0);
    assert_eq!(sample(&text, "rnr_terminals_open"), 1.0);
    assert_eq!(sample(&text, "rnr_check_queue_depth"), 0.0);
    assert_eq!(sample(&text, "rnr_checks_run_total"), 0.0);

    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let resp = reqwest::blocking::get(format!("{}{path}", s.url)).unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().unwrap(), body);
    }
    // Logs name the machine a line is about.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = s.log_text();
    assert!(
        logs.contains(&format!("machine={}", m["id"].as_str().unwrap())),
        "{logs}"
    );
}

/// `driver = auto` on a host where native cannot run (here: its runtime is missing) serves
/// with Docker, and says so loudly, with the reason, on stderr.
#[test]
fn auto_falls_back_to_docker_loudly() {
    let missing = "/nonexistent/rnr-test-no-such-runtime";
    let s = Server::start(&[("RNR_DRIVER", "auto"), ("RNR_NATIVE__RUNTIME", missing)]);
    // Creating a machine needs the image in Docker's store, which only a docker run of the
    // tests imports.
    if !common::native() {
        let m = s.create(json!({}));
        assert!(
            !common::docker_containers(&s.instance_owner()).is_empty(),
            "machine {m} is a Docker container"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = s.log_text();
    let warning = logs
        .lines()
        .find(|l| l.starts_with("rnr: WARNING: driver = auto is FALLING BACK TO DOCKER"))
        .unwrap_or_else(|| panic!("no fallback warning on stderr:\n{logs}"));
    assert!(
        warning.contains(missing),
        "the warning says why native was not used: {warning}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("FALLING BACK")),
        "and the log has it as a warning:\n{logs}"
    );
}
