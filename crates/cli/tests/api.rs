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

/// Unix seconds of an RFC 3339 time the API answered.
fn unix(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .unix_timestamp()
}

#[test]
fn machines_are_extended_within_the_maximum_lifetime() {
    let s = Server::start(&[("RNR_MAX_TTL_SECONDS", "600")]);
    let m = s.create(json!({"ttl_seconds": 3}));
    let id = m["id"].as_str().unwrap().to_string();
    let extend = |id: &str, body: Value| {
        s.call(
            Method::POST,
            &format!("/api/v1/machines/{id}/extend"),
            Some(body),
        )
    };

    // Happy path: the expiry moves by what was asked, and the reaper honours it.
    let (st, got) = extend(&id, json!({"ttl_seconds": 120}));
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["state"], "running");
    assert_eq!(
        unix(&got["expires_at"]) - unix(&m["expires_at"]),
        120,
        "{got}"
    );
    let (_, again) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(again["expires_at"], got["expires_at"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        s.exec(&id, "echo alive")["stdout"],
        "alive\n",
        "outlived its first TTL"
    );

    // Over the maximum lifetime (600 s from creation; 123 s are used): refused, nothing
    // changed, and the message says by how much it may still be extended.
    let (st, v) = extend(&id, json!({"ttl_seconds": 500}));
    assert_eq!((st, err_code(&v)), (422, "invalid_request"), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ttl_seconds") && msg.contains("600"), "{msg}");
    let (_, now) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(now["expires_at"], got["expires_at"]);
    // Up to the maximum is allowed.
    let (st, v) = extend(&id, json!({"ttl_seconds": 470}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        unix(&v["expires_at"]) - unix(&m["created_at"]),
        3 + 120 + 470
    );
    let (st, v) = extend(&id, json!({"ttl_seconds": 60}));
    assert_eq!((st, err_code(&v)), (422, "invalid_request"), "{v}");

    // Malformed requests get the API's usual errors.
    for (body, status, code) in [
        (json!({"ttl_seconds": 0}), 422, "invalid_request"),
        (json!({"ttl_seconds": "soon"}), 422, "invalid_request"),
        (json!({"ttl": 10}), 422, "invalid_request"),
        (json!({}), 422, "invalid_request"),
    ] {
        let (st, v) = extend(&id, body.clone());
        assert_eq!((st, err_code(&v)), (status, code), "{body}: {v}");
    }
    let resp = s
        .req(Method::POST, &format!("/api/v1/machines/{id}/extend"))
        .body("{\"ttl_seconds\": 1")
        .header("content-type", "application/json")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    // An unknown machine, and a deleted one.
    let (st, v) = extend("m-nope", json!({"ttl_seconds": 10}));
    assert_eq!((st, err_code(&v)), (404, "machine_not_found"), "{v}");
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(st, 204);
    let (st, v) = extend(&id, json!({"ttl_seconds": 10}));
    assert_eq!((st, err_code(&v)), (409, "machine_not_running"), "{v}");
    let (_, gone) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
    assert_eq!(gone["state"], "deleted");
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
        (Method::POST, format!("/api/v1/machines/{id}/extend")),
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

/// The schema `s` is, following one `$ref`.
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("{r} resolves")),
        None => s,
    }
}

#[test]
fn openapi_document_describes_the_api() {
    let s = Server::start(&[]);
    let v: Value = reqwest::blocking::get(format!("{}/api/v1/openapi.json", s.url))
        .unwrap()
        .json()
        .unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for (p, method) in [
        ("/api/v1/machines", "post"),
        ("/api/v1/machines", "get"),
        ("/api/v1/machines/{id}", "get"),
        ("/api/v1/machines/{id}", "delete"),
        ("/api/v1/machines/{id}/exec", "post"),
        ("/api/v1/machines/{id}/extend", "post"),
        ("/api/v1/machines/{id}/terminals", "post"),
        ("/api/v1/terminals/{id}", "delete"),
        ("/api/v1/terminals/{id}/recording", "get"),
        ("/terminals/{id}/recording", "get"),
        ("/api/v1/links", "post"),
    ] {
        assert!(v["paths"][p][method].is_object(), "{method} {p} documented");
    }
    assert!(v["components"]["schemas"]["ErrorBody"].is_object());
    assert!(v["components"]["securitySchemes"]["api_key"].is_object());

    // Every reference resolves, whichever crate's part of the document it is in.
    let all = rnr_http::openapi_references(&v);
    assert!(all.len() > 20, "{all:?}");
    let dangling: Vec<_> = all
        .iter()
        .filter(|(_, r)| r.strip_prefix('#').and_then(|p| v.pointer(p)).is_none())
        .collect();
    assert!(dangling.is_empty(), "unresolved $refs: {dangling:?}");
    // And so does every security requirement.
    for (p, ops) in v["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for req in op["security"].as_array().into_iter().flatten() {
                for scheme in req.as_object().unwrap().keys() {
                    assert!(
                        v["components"]["securitySchemes"][scheme].is_object(),
                        "{method} {p}: security scheme {scheme}"
                    );
                }
            }
        }
    }

    let op = |p: &str, method: &str| &v["paths"][p][method];
    let body = |o: &Value, status: &str| {
        resolve(
            &v,
            &o["responses"][status]["content"]["application/json"]["schema"],
        )
        .clone()
    };
    let props = |schema: &Value| -> Vec<String> {
        schema["properties"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };

    let terminals = op("/api/v1/machines/{id}/terminals", "post");
    let created = props(&body(terminals, "201"));
    for field in [
        "id",
        "token",
        "viewer_token",
        "ws_url",
        "viewer_ws_url",
        "expires_at",
    ] {
        assert!(
            created.iter().any(|f| f == field),
            "terminal {field}: {created:?}"
        );
    }
    let req = resolve(
        &v,
        &terminals["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(props(req), ["cols", "record", "rows"]);
    let about = terminals["description"].as_str().unwrap_or_default();
    for needle in ["/ws/terminals/{id}?token=", "viewer", "4001", "4029"] {
        assert!(
            about.contains(needle),
            "terminal description names {needle}"
        );
    }

    let links = op("/api/v1/links", "post");
    let link = props(&body(links, "201"));
    for field in ["url", "embed_url", "machine_id", "expires_at"] {
        assert!(link.iter().any(|f| f == field), "link {field}: {link:?}");
    }
    let req = resolve(
        &v,
        &links["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(req["required"], json!(["learner", "exercise"]));

    let recording = op("/api/v1/terminals/{id}/recording", "get");
    assert!(recording["responses"]["200"]["content"]["application/x-asciicast"].is_object());

    // The new operations: API key where the API's routes take one, and every error status
    // with the API's error body.
    for (p, method, keyed) in [
        ("/api/v1/machines/{id}/terminals", "post", true),
        ("/api/v1/terminals/{id}", "delete", true),
        ("/api/v1/terminals/{id}/recording", "get", true),
        ("/terminals/{id}/recording", "get", false),
        ("/api/v1/links", "post", true),
        ("/api/v1/machines/{id}/extend", "post", true),
    ] {
        let o = op(p, method);
        assert_eq!(
            o["security"] == json!([{"api_key": []}]),
            keyed,
            "{method} {p} security: {}",
            o["security"]
        );
        let responses = o["responses"].as_object().unwrap();
        let errors: Vec<_> = responses.keys().filter(|st| st.as_str() >= "400").collect();
        assert!(errors.len() >= 2, "{method} {p} errors: {errors:?}");
        for st in errors {
            let schema = &responses[st]["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{method} {p} {st}"
            );
        }
    }

    // What the server answers is what the document says: a documented status, the API's
    // error body.
    let bad_json = s
        .req(Method::POST, "/api/v1/machines/m-nope/terminals")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .unwrap();
    let bad_json = (
        bad_json.status().as_u16(),
        bad_json.json::<Value>().unwrap_or(Value::Null),
    );
    for ((p, method), (st, got)) in [
        (
            ("/api/v1/machines/{id}/terminals", "post"),
            s.call(Method::POST, "/api/v1/machines/m-nope/terminals", None),
        ),
        (("/api/v1/machines/{id}/terminals", "post"), bad_json),
        (
            ("/api/v1/terminals/{id}", "delete"),
            s.call(Method::DELETE, "/api/v1/terminals/t-nope", None),
        ),
        (
            ("/api/v1/terminals/{id}/recording", "get"),
            s.call(Method::GET, "/api/v1/terminals/t-nope/recording", None),
        ),
        (
            ("/terminals/{id}/recording", "get"),
            s.call(
                Method::GET,
                "/terminals/t-nope/recording?token=forged",
                None,
            ),
        ),
        (
            ("/api/v1/links", "post"),
            s.call(Method::POST, "/api/v1/links", Some(json!({}))),
        ),
        (
            ("/api/v1/links", "post"),
            s.call(
                Method::POST,
                "/api/v1/links",
                Some(json!({"learner": "alice", "exercise": "no-such-exercise"})),
            ),
        ),
    ] {
        assert!(
            op(p, method)["responses"][st.to_string()].is_object(),
            "{method} {p} answered {st}, which is not documented: {got}"
        );
        assert_ne!(
            err_code(&got),
            "<no error code>",
            "{method} {p} {st}: {got}"
        );
    }
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
