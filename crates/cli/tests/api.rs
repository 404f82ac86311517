//! REST API behaviour against the real binary and a real driver (Docker Engine, or native
//! with `RNR_TEST_DRIVER=native`): the lifecycle,
//! limits, TTL reaping, restarts, capacity, auth and every error a client can meet.

mod common;

use common::{machines, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[test]
fn create_exec_delete() {
    let s = Server::start(&[]);
    let m = s.create(json!({"ttl_seconds": 600, "limits": {"memory_mib": 128}}));
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["state"], "running");
    assert_eq!(m["image"], "tiny");
    assert_eq!(m["limits"]["memory_mib"], 128);
    assert!(
        m["address"]
            .as_str()
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_ok(),
        "{m}"
    );
    assert!(m["expires_at"].as_str().unwrap().ends_with('Z'));

    let out = s.exec(&id, "echo ok");
    assert_eq!(out["stdout"], "ok\n");
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["timed_out"], false);

    // stdin, stderr, exit codes and env reach the program.
    let (st, out) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/exec"),
        Some(
            json!({"argv": ["/bin/sh", "-c", "read x; echo got:$x:$FOO; echo oops >&2; exit 4"],
                    "stdin": "hello\n", "env": {"FOO": "bar"}}),
        ),
    );
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["stdout"], "got:hello:bar\n");
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["exit_code"], 4);

    // A command past its deadline is killed and reported as such.
    let (st, out) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/exec"),
        Some(json!({"argv": ["sleep", "100"], "timeout_seconds": 1})),
    );
    assert_eq!(st, 200);
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["exit_code"], Value::Null);

    let (st, got) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
    assert_eq!((st, got["id"].as_str()), (200, Some(id.as_str())));
    let (st, list) = s.call(Method::GET, "/api/v1/machines", None);
    assert_eq!(st, 200);
    assert!(list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == id.as_str()));

    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(st, 204);
    assert!(machines(&s).is_empty(), "machine removed");
    let (_, got) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(got["state"], "deleted");
    assert!(got["deleted_at"].is_string());
    // Idempotent delete; exec on a deleted machine is a conflict.
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(st, 204);
    let (st, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/exec"),
        Some(json!({"argv": ["true"]})),
    );
    assert_eq!((st, err_code(&v)), (409, "machine_not_running"), "{v}");
}

#[test]
fn limits_are_enforced_and_the_machine_lives_on() {
    let s = Server::start(&[]);
    let m = s.create(json!({"limits": {"memory_mib": 64, "pids": 64}}));
    let id = m["id"].as_str().unwrap();
    let neighbour = s.create(json!({}));
    let nid = neighbour["id"].as_str().unwrap();

    // Memory: a 200 MiB allocation in a 64 MiB machine is killed; the machine stays.
    let out = s.exec(
        id,
        "dd if=/dev/zero of=/dev/null bs=200M count=1; echo rc=$?",
    );
    assert_eq!(out["stdout"], "rc=137\n", "hog OOM-killed: {out}");
    assert_eq!(s.exec(id, "echo alive")["stdout"], "alive\n");

    // pids: a real fork bomb runs into the limit; the host and a neighbour stay fine.
    let (st, _) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/exec"),
        Some(
            json!({"argv": ["/bin/sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 3"],
                    "timeout_seconds": 5}),
        ),
    );
    assert_eq!(st, 200);
    let current = common::pids_current(&s, id);
    assert!(current <= 64, "pids capped at 64, saw {current}");
    let started = Instant::now();
    assert_eq!(s.exec(nid, "echo fine")["stdout"], "fine\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "neighbour answers promptly"
    );
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success(),
        "host can fork"
    );
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(st, 204, "a bombed machine can be deleted");
}

#[test]
fn expired_machines_are_reaped() {
    let s = Server::start(&[]);
    let m = s.create(json!({"ttl_seconds": 2}));
    let id = m["id"].as_str().unwrap();
    let long = s.create(json!({"ttl_seconds": 600}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, got) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
        if got["state"] == "deleted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "machine reaped within 20 s: {got}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(machines(&s), vec![long["id"].as_str().unwrap().to_string()]);
}

#[test]
fn sigkilled_server_keeps_its_machines_and_reconciles() {
    let mut s = Server::start(&[]);
    let keep = s.create(json!({}));
    let keep_id = keep["id"].as_str().unwrap().to_string();
    let vanish = s.create(json!({}));
    let vanish_id = vanish["id"].as_str().unwrap().to_string();
    let orphan = s.create(json!({}));
    let orphan_id = orphan["id"].as_str().unwrap().to_string();
    s.exec(&keep_id, "echo state > /root/work");

    // While the server is down: one machine disappears, one is forgotten by the store.
    if let Some(mut c) = s.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    common::remove_behind_platform(&s, &vanish_id);
    let forget = std::process::Command::new("sqlite3")
        .arg(s.data_dir.join("rnr.db"))
        .arg(format!(
            "UPDATE machines SET state = 'deleted' WHERE id = '{orphan_id}'"
        ))
        .status()
        .unwrap();
    assert!(forget.success());
    s.restart_after_sigkill();

    let (_, got) = s.call(Method::GET, &format!("/api/v1/machines/{keep_id}"), None);
    assert_eq!(got["state"], "running");
    assert_eq!(got["address"], keep["address"]);
    assert_eq!(
        s.exec(&keep_id, "cat /root/work")["stdout"],
        "state\n",
        "work survives"
    );
    let (_, got) = s.call(Method::GET, &format!("/api/v1/machines/{vanish_id}"), None);
    assert_eq!(got["state"], "failed");
    assert!(got["error"].as_str().unwrap().contains("vanished"), "{got}");
    assert_eq!(machines(&s), vec![keep_id.clone()], "orphan removed");
}

#[test]
fn capacity_is_refused_at_once() {
    let s = Server::start(&[("RNR_CAPACITY", "2")]);
    let a = s.create(json!({}));
    s.create(json!({}));
    let started = Instant::now();
    let resp = s
        .req(Method::POST, "/api/v1/machines")
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let v: Value = resp.json().unwrap();
    assert_eq!(err_code(&v), "capacity_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("2 of 2"),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    // Deleting one frees a slot.
    let (st, _) = s.call(
        Method::DELETE,
        &format!("/api/v1/machines/{}", a["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 204);
    s.create(json!({}));
}

#[test]
fn bad_requests_get_clear_errors() {
    let s = Server::start(&[]);
    let post = |path: &str, body: &str, ctype: Option<&str>| {
        let mut r = s.req(Method::POST, path).body(body.to_string());
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        let resp = r.send().unwrap();
        let st = resp.status().as_u16();
        (st, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let json_ct = Some("application/json");
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        (
            "/api/v1/machines",
            "{not json".into(),
            json_ct,
            400,
            "invalid_json",
        ),
        (
            "/api/v1/machines",
            r#"{"imagee": "tiny"}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"ttl_seconds": "soon"}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"ttl_seconds": 0}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"ttl_seconds": 99999999}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"limits": {"memory_mib": 999999}}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"limits": {"disk": 1}}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            r#"{"image": "nope-image"}"#.into(),
            json_ct,
            422,
            "image_not_found",
        ),
        (
            "/api/v1/machines",
            r#"{"image": "../etc"}"#.into(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/api/v1/machines",
            "{}".into(),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            "/api/v1/machines",
            format!("{{\"owner\": \"{}\"}}", "x".repeat(2 << 20)),
            json_ct,
            413,
            "payload_too_large",
        ),
        (
            "/api/v1/machines/m-nope/exec",
            r#"{"argv": ["true"]}"#.into(),
            json_ct,
            404,
            "machine_not_found",
        ),
    ];
    for (path, body, ct, status, code) in cases {
        let (st, v) = post(path, &body, ct);
        let shown = &body[..body.len().min(60)];
        assert_eq!(
            (st, err_code(&v)),
            (status, code),
            "POST {path} {shown}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // The messages say what and where.
    let (_, v) = post("/api/v1/machines", r#"{"imagee": "tiny"}"#, json_ct);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("imagee"),
        "{v}"
    );
    let (_, v) = post("/api/v1/machines", r#"{"ttl_seconds": 0}"#, json_ct);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ttl_seconds"),
        "{v}"
    );

    let m = s.create(json!({}));
    let id = m["id"].as_str().unwrap();
    let (st, v) = post(
        &format!("/api/v1/machines/{id}/exec"),
        r#"{"argv": []}"#,
        json_ct,
    );
    assert_eq!((st, err_code(&v)), (422, "invalid_request"), "{v}");
    let (st, v) = post(
        &format!("/api/v1/machines/{id}/exec"),
        r#"{"argv": ["true"], "timeout_seconds": 100000}"#,
        json_ct,
    );
    assert_eq!((st, err_code(&v)), (422, "invalid_request"), "{v}");
    let (st, v) = s.call(Method::GET, "/api/v1/machines/m-nope", None);
    assert_eq!((st, err_code(&v)), (404, "machine_not_found"));
    let (st, v) = s.call(Method::GET, "/api/v1/machines?state=sleeping", None);
    assert_eq!((st, err_code(&v)), (422, "invalid_request"), "{v}");
    let (st, v) = s.call(Method::GET, "/api/v1/nothing-here", None);
    assert_eq!((st, err_code(&v)), (404, "not_found"));
    // Nothing already stored was lost by any of it.
    assert_eq!(s.exec(id, "echo still")["stdout"], "still\n");
}

#[test]
fn every_endpoint_refuses_missing_or_wrong_keys() {
    let s = Server::start(&[]);
    let m = s.create(json!({}));
    let id = m["id"].as_str().unwrap();
    let endpoints = [
        (Method::POST, "/api/v1/machines".to_string()),
        (Method::GET, "/api/v1/machines".to_string()),
        (Method::GET, format!("/api/v1/machines/{id}")),
        (Method::DELETE, format!("/api/v1/machines/{id}")),
        (Method::POST, format!("/api/v1/machines/{id}/exec")),
    ];
    let c = s.client();
    for (method, path) in &endpoints {
        for auth in [
            None,
            Some("Bearer rnr_wrong"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let mut r = c
                .request(method.clone(), format!("{}{path}", s.url))
                .json(&json!({"argv": ["true"]}));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let resp = r.send().unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{method} {path} with {auth:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let v: Value = resp.json().unwrap();
            assert_eq!(err_code(&v), "unauthorized");
        }
    }
    // The refused DELETE deleted nothing.
    assert_eq!(s.exec(id, "echo here")["stdout"], "here\n");
    // A revoked key stops working at once.
    let out = common::rnr()
        .args(["apikey", "list", "--data-dir"])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let key_id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let st = common::rnr()
        .args(["apikey", "revoke", &key_id, "--data-dir"])
        .arg(&s.data_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let (st, _) = s.call(Method::GET, "/api/v1/machines", None);
    assert_eq!(st, 401);
}

#[test]
fn openapi_document_describes_the_api() {
    let s = Server::start(&[]);
    let v: Value = reqwest::blocking::get(format!("{}/api/v1/openapi.json", s.url))
        .unwrap()
        .json()
        .unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/machines",
        "/api/v1/machines/{id}",
        "/api/v1/machines/{id}/exec",
    ] {
        assert!(v["paths"][p].is_object(), "{p} documented");
    }
    assert!(v["components"]["schemas"]["ErrorBody"].is_object());
    assert!(v["components"]["securitySchemes"]["api_key"].is_object());
}

#[test]
fn cli_drives_machines_through_the_api() {
    let s = Server::start(&[]);
    let run = |args: &[&str]| {
        common::rnr()
            .args(["machine"])
            .args(args)
            .env("RNR_URL", &s.url)
            .env("RNR_API_KEY", &s.key)
            .output()
            .unwrap()
    };
    let out = run(&["create", "--ttl-seconds", "300", "--memory-mib", "96"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = m["id"].as_str().unwrap();
    assert_eq!(m["limits"]["memory_mib"], 96);
    let out = run(&["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let out = run(&["exec", id, "--", "sh", "-c", "echo from-cli; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    let out = run(&["rm", id]);
    assert!(out.status.success());
    let out = run(&["exec", "m-nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("machine_not_found"));
    // Without a key the CLI says what to do.
    let out = common::rnr()
        .args(["machine", "list"])
        .env_remove("RNR_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("rnr apikey create"));
}

#[test]
fn config_example_and_errors() {
    let out = common::rnr().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("capacity = 100"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "capacity = \"lots\"\n").unwrap();
    let out = common::rnr()
        .args(["config", "show", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("capacity") && err.contains("bad.toml"),
        "{err}"
    );
}
