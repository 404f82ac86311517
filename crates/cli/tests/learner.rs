//! The learner API without a browser, against the real `rnr serve` and real machines (tiny
//! image): a session from the exercise page's cookie, the "+ time" button within the
//! platform's maximum lifetime (it goes through the platform's own extend), and what
//! another learner and a caller without a session get.

mod common;

use common::{write, Server};
use reqwest::Method;
use serde_json::Value;

const EXERCISE: &str = r#"
title = "Timed"
image = "tiny"
time_limit_minutes = 1

[[check]]
name = "shell"
kind = "command"
command = "true"
message = "the machine has no shell"
"#;

/// A new anonymous learner's token for the exercise, as the exercise page holds it (the
/// page also sets the visitor cookie that names the browser).
fn learner_token(s: &Server) -> String {
    let resp = s
        .client()
        .get(format!("{}/exercises/timed", s.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("rnr_learner="),
        "visitor cookie: {cookie}"
    );
    let page = resp.text().unwrap();
    let (_, rest) = page
        .split_once("data-learner=\"")
        .unwrap_or_else(|| panic!("no learner token in the page: {page}"));
    rest.split('"').next().unwrap().to_string()
}

/// `POST /learn/api/…` as the learner holding `token` (none: no session at all).
fn learn(s: &Server, token: Option<&str>, path: &str) -> (u16, Value) {
    let mut r = s
        .client()
        .request(Method::POST, format!("{}/learn/api/{path}", s.url))
        .timeout(std::time::Duration::from_secs(120));
    if let Some(t) = token {
        r = r.header("x-rnr-learner", t);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[test]
fn the_learner_extends_within_the_maximum_lifetime() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("timed");
    write(&dir, "exercise.toml", EXERCISE);
    write(&dir, "README.md", "# Timed");
    write(&dir, "solution.sh", "true\n");
    // One press adds 15 minutes; a machine may live 25 from its creation.
    let s = Server::start(&[
        ("RNR_CHECKER__EXERCISES_DIR", root.path().to_str().unwrap()),
        ("RNR_MAX_TTL_SECONDS", "1500"),
    ]);
    let alice = learner_token(&s);
    let (st, session) = learn(&s, Some(&alice), "exercises/timed/session");
    assert_eq!(st, 200, "{session}");
    assert_eq!(session["extend_seconds"], 900);
    let id = session["machine"]["id"].as_str().unwrap().to_string();
    let first = session["machine"]["expires_at"].as_i64().unwrap();

    let (st, m) = learn(&s, Some(&alice), &format!("machines/{id}/extend"));
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["expires_at"].as_i64().unwrap() - first, 900, "{m}");
    // The second press gets what is left of the 1500 s, no more.
    let (st, m) = learn(&s, Some(&alice), &format!("machines/{id}/extend"));
    assert_eq!(st, 200, "{m}");
    // The session began with the exercise's 60 s.
    assert_eq!(
        m["expires_at"].as_i64().unwrap() - (first - 60),
        1500,
        "{m}"
    );
    let (st, v) = learn(&s, Some(&alice), &format!("machines/{id}/extend"));
    assert_eq!((st, code(&v)), (409, "extend_limit_reached"), "{v}");

    // Another learner cannot tell the machine exists; no session is no access.
    let bob = learner_token(&s);
    let (st, v) = learn(&s, Some(&bob), &format!("machines/{id}/extend"));
    assert_eq!((st, code(&v)), (404, "not_found"), "{v}");
    let (st, v) = learn(&s, None, &format!("machines/{id}/extend"));
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    let (st, v) = learn(&s, Some("anon-x.forged"), &format!("machines/{id}/extend"));
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");

    // A deleted machine is no longer extended.
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(st, 204);
    let (st, v) = learn(&s, Some(&alice), &format!("machines/{id}/extend"));
    assert_eq!((st, code(&v)), (409, "machine_not_running"), "{v}");
}
