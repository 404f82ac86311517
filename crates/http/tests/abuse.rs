//! Abuse and quotas, through the HTTP layer in-process over the fake driver: anonymous
//! learners turned off and capped (per client address, behind a trusted proxy, and
//! overall), per-API-key quotas, learner tokens that expire, at most one queued
//! learner-triggered check run per machine, retention of old runs, capped recordings
//! deleted with their machine, and terminal tokens revoked with their terminal.

mod common;

use common::{socket_outcome, token_of, Lab, Options};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use rnr_core::KeyLimits;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_learners_can_be_turned_off() {
    let mut opts = Options::default();
    opts.ui.anonymous = false;
    let lab = Lab::start(opts).await;
    let resp = lab
        .client
        .get(format!("{}/exercises/alpha", lab.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "no visitor cookie"
    );
    let page = resp.text().await.unwrap();
    assert!(page.contains("anonymous learners are turned off"), "{page}");

    // A token minted for an anonymous learner (as before the switch) is refused too.
    let ui = &lab.state.ui;
    let claims = ui.learner_claims("anon-early", "alpha", i64::MAX / 4, None);
    let token = ui.signer().learner_token(&claims);
    let (st, _, v) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!((st, code(&v)), (403, "anonymous_disabled"), "{v}");
    assert!(message(&v).contains("[ui] anonymous = false"), "{v}");

    // Learners of an LMS link still get their machine.
    let link = lab.link(&lab.key, "alice", "alpha").await;
    let path = link["url"].as_str().unwrap().replace(&lab.url, "");
    let (st, token) = lab.page_token(&path, None).await;
    assert_eq!(st, 200);
    let (st, _, s) = lab
        .learn(
            &token.unwrap(),
            Method::POST,
            "exercises/alpha/session",
            None,
        )
        .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["machine"]["id"], link["machine_id"]);
    lab.stop().await;
}

/// A new anonymous visitor's session from client address `from` (sent as the proxy's
/// `X-Forwarded-For`).
async fn visitor_session(lab: &Lab, from: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let (st, token) = lab.page_token("/exercises/alpha", Some(from)).await;
    assert_eq!(st, 200);
    lab.learn(
        &token.unwrap(),
        Method::POST,
        "exercises/alpha/session",
        Some(from),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_machines_are_capped_per_client_behind_a_trusted_proxy_and_overall() {
    let mut opts = Options::default();
    opts.ui.max_anonymous_per_client = 2;
    opts.ui.max_anonymous = 3;
    opts.trusted_proxies = vec!["127.0.0.0/8".into()];
    let lab = Lab::start(opts).await;
    for _ in 0..2 {
        let (st, _, v) = visitor_session(&lab, "10.0.0.1").await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, h, v) = visitor_session(&lab, "10.0.0.1").await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    assert!(message(&v).contains("10.0.0.1"), "{v}");
    assert!(
        message(&v).contains("max_anonymous_per_client = 2"),
        "the message names the limit and its value: {v}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // Another address still gets one, until the overall cap.
    let (st, _, v) = visitor_session(&lab, "10.0.0.2").await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = visitor_session(&lab, "10.0.0.3").await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    assert!(message(&v).contains("max_anonymous = 3"), "{v}");
    // The machines record the client they were made for.
    let anon = lab
        .state
        .platform
        .machines_of_owners("anon-")
        .await
        .unwrap();
    assert_eq!(anon.len(), 3);
    // Learners of an LMS are not anonymous and not counted.
    lab.link(&lab.key, "bob", "alpha").await;
    lab.stop().await;

    // Without a trusted proxy the header is the client's own words: ignored.
    let mut opts = Options::default();
    opts.ui.max_anonymous_per_client = 1;
    let lab = Lab::start(opts).await;
    let (st, _, v) = visitor_session(&lab, "10.0.0.8").await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = visitor_session(&lab, "10.0.0.9").await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    assert!(message(&v).contains("127.0.0.1"), "{v}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_quotas_of_their_own_or_the_defaults() {
    let mut opts = Options::default();
    opts.policy.key_quotas.creations_per_minute = 3;
    let lab = Lab::start(opts).await;
    let (small, small_id) = lab
        .new_key(
            "small",
            KeyLimits {
                max_machines: Some(2),
                creations_per_minute: Some(100),
            },
        )
        .await;
    let create = |key: String| {
        let lab = &lab;
        async move {
            lab.call_as(
                Some(&key),
                Method::POST,
                "/api/v1/machines",
                Some(json!({})),
            )
            .await
        }
    };
    let (st, _, first) = create(small.clone()).await;
    assert_eq!(st, 201, "{first}");
    assert_eq!(create(small.clone()).await.0, 201);
    let (st, h, v) = create(small.clone()).await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    for needle in [small_id.as_str(), "(small)", "--max-machines", "is 2"] {
        assert!(message(&v).contains(needle), "{needle} in {v}");
    }
    assert!(h.contains_key("retry-after"));
    // A deleted machine frees its place.
    let id = first["id"].as_str().unwrap();
    let (st, _) = lab
        .call(Method::DELETE, &format!("/api/v1/machines/{id}"), None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(create(small.clone()).await.0, 201);

    // The default rate: three creations a minute, then 429 until the oldest leaves it.
    for _ in 0..3 {
        assert_eq!(create(lab.key.clone()).await.0, 201);
    }
    let (st, h, v) = create(lab.key.clone()).await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    assert!(message(&v).contains("creations_per_minute_per_key"), "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");

    // Learners of a key's links count against it.
    let (one, _) = lab
        .new_key(
            "one",
            KeyLimits {
                max_machines: Some(1),
                creations_per_minute: None,
            },
        )
        .await;
    lab.link(&one, "carol", "alpha").await;
    let (st, _, v) = lab
        .call_as(
            Some(&one),
            Method::POST,
            "/api/v1/links",
            Some(json!({"learner": "dave", "exercise": "alpha"})),
        )
        .await;
    assert_eq!((st, code(&v)), (429, "quota_exceeded"), "{v}");
    let text = lab.metrics().await;
    assert!(
        text.contains("rnr_machines_refused_quota_total 3"),
        "{text}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_tokens_expire_are_scoped_and_refresh_within_their_link() {
    let mut opts = Options::default();
    opts.ui.learner_token_ttl = Duration::from_secs(4);
    let lab = Lab::start(opts).await;
    let (_, token) = lab.page_token("/exercises/alpha", None).await;
    let token = token.unwrap();
    let (st, _, s) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!(st, 200, "{s}");
    // A token for alpha opens nothing of beta.
    let (st, _, v) = lab
        .learn(&token, Method::POST, "exercises/beta/session", None)
        .await;
    assert_eq!((st, code(&v)), (403, "wrong_exercise"), "{v}");
    // Refreshed before expiry, again and again: the newest works after the first expired.
    // (Expiries are whole seconds: a 4 s token lives 3 to 4 s.)
    let (st, _, fresh) = lab.learn(&token, Method::POST, "token", None).await;
    assert_eq!(st, 200, "{fresh}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (st, _, fresh2) = lab
        .learn(
            fresh["token"].as_str().unwrap(),
            Method::POST,
            "token",
            None,
        )
        .await;
    assert_eq!(st, 200, "{fresh2}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, _, v) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!((st, code(&v)), (401, "token_expired"), "{v}");
    let (st, _, again) = lab
        .learn(
            fresh2["token"].as_str().unwrap(),
            Method::POST,
            "exercises/alpha/session",
            None,
        )
        .await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        again["machine"]["id"], s["machine"]["id"],
        "the same machine"
    );

    // A link's learner token never outlives the link, refreshed or not.
    let ui = &lab.state.ui;
    let now = rnr_core::now_ms() / 1000;
    let c = ui.learner_claims("lms:erin", "alpha", now + 1, None);
    assert_eq!(c.expires_at, now + 1);
    let (_, exp) = ui.refresh(&c);
    assert!(exp <= now + 1, "{exp}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_never_queues_more_than_one_check_run_per_machine() {
    let opts = Options {
        start_checker: false,
        ..Options::default()
    };
    let lab = Lab::start(opts).await;
    let (_, token) = lab.page_token("/exercises/alpha", None).await;
    let token = token.unwrap();
    let (st, _, s) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!(st, 200, "{s}");
    let id = s["machine"]["id"].as_str().unwrap().to_string();
    let presses: Vec<_> = (0..20)
        .map(|_| {
            let path = format!("machines/{id}/checks");
            let token = token.clone();
            let lab = &lab;
            async move { lab.learn(&token, Method::POST, &path, None).await }
        })
        .collect();
    let answers = futures::future::join_all(presses).await;
    let mut ids: Vec<String> = answers
        .iter()
        .map(|(st, _, v)| {
            assert_eq!(*st, 202, "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "every press joined the one queued run: {ids:?}"
    );
    let runs = lab.store.check_runs();
    assert_eq!(
        runs.count(rnr_checker::CheckRunState::Queued)
            .await
            .unwrap(),
        1
    );
    let run = runs.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(run.trigger, rnr_checker::CheckTrigger::Learner);
    // The queue's turns are by owner: the run is the learner's.
    assert!(run.owner.starts_with("anon-"), "{}", run.owner);
    // An API caller's run is not held back by the learner's.
    let (st, v) = lab
        .call(Method::POST, &format!("/api/v1/machines/{id}/checks"), None)
        .await;
    assert_eq!(st, 202, "{v}");
    assert_ne!(v["id"].as_str().unwrap(), ids[0]);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_check_runs_are_deleted_but_each_machine_keeps_its_latest() {
    let mut opts = Options::default();
    opts.checker.retention = Some(Duration::ZERO);
    opts.checker.retention_interval = Duration::from_millis(200);
    let lab = Lab::start(opts).await;
    let (st, m) = lab
        .call(
            Method::POST,
            "/api/v1/machines",
            Some(json!({"exercise": "alpha"})),
        )
        .await;
    assert_eq!(st, 201, "{m}");
    let id = m["id"].as_str().unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (st, r) = lab
            .call(Method::POST, &format!("/api/v1/machines/{id}/checks"), None)
            .await;
        assert_eq!(st, 202, "{r}");
        let r = lab.finished_run(r["id"].as_str().unwrap()).await;
        runs.push(r["id"].as_str().unwrap().to_string());
    }
    let store = lab.store.check_runs();
    for _ in 0..100 {
        if store.count_all().await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.count_all().await.unwrap(),
        1,
        "only the latest is kept"
    );
    let (st, _) = lab
        .call(Method::GET, &format!("/api/v1/checks/{}", runs[2]), None)
        .await;
    assert_eq!(st, 200);
    let (st, v) = lab
        .call(Method::GET, &format!("/api/v1/checks/{}", runs[0]), None)
        .await;
    assert_eq!((st, code(&v)), (404, "check_run_not_found"), "{v}");
    let text = lab.metrics().await;
    assert!(text.contains("rnr_check_runs_deleted_total 2"), "{text}");
    assert!(text.contains("rnr_check_runs_stored 1"), "{text}");
    lab.stop().await;
}

/// A new machine (created with `machine`) with a recorded terminal: its id, and the
/// terminal as created.
async fn recorded_terminal(lab: &Lab, machine: Value) -> (String, Value) {
    let (st, m) = lab
        .call(Method::POST, "/api/v1/machines", Some(machine))
        .await;
    assert_eq!(st, 201, "{m}");
    let mid = m["id"].as_str().unwrap().to_string();
    let (st, t) = lab
        .call(
            Method::POST,
            &format!("/api/v1/machines/{mid}/terminals"),
            Some(json!({"record": true})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    (mid, t)
}

/// Reads a terminal socket until its output holds `needle`; returns all output.
async fn until<S>(ws: &mut S, needle: &str) -> String
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !out.contains(needle) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never came; got {out:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(_)) => {}
            other => panic!("socket ended before {needle:?}: {other:?}; got {out:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_stop_at_their_cap_and_go_with_their_machine() {
    let mut opts = Options::default();
    opts.terminal.max_recording_bytes = 4096;
    let lab = Lab::start(opts).await;
    let (mid, t) = recorded_terminal(&lab, json!({})).await;
    let tid = t["id"].as_str().unwrap().to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(t["ws_url"].as_str().unwrap())
        .await
        .unwrap();
    until(&mut ws, "# ").await;
    ws.send(Message::Binary(
        "seq 1 3000; echo seq-$((6*7))\r".as_bytes().to_vec().into(),
    ))
    .await
    .unwrap();
    until(&mut ws, "seq-42").await;
    // The terminal goes on past the cap.
    ws.send(Message::Binary(
        "echo after-$((1+1))\r".as_bytes().to_vec().into(),
    ))
    .await
    .unwrap();
    until(&mut ws, "after-2").await;
    let cast = lab
        .client
        .get(format!("{}/api/v1/terminals/{tid}/recording", lab.url))
        .bearer_auth(&lab.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cast.len() < 4096 + 600, "{} bytes", cast.len());
    let events: Vec<Value> = cast
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let marker = events.iter().find(|e| e[1] == "m").expect("a stop marker");
    assert!(
        marker[2].as_str().unwrap().contains("4096 bytes"),
        "{marker}"
    );
    assert!(
        !cast.contains("after-2"),
        "nothing is recorded past the cap"
    );
    let file = lab
        .data
        .path()
        .join("recordings")
        .join(format!("{tid}.cast"));
    assert!(file.exists());

    let (st, _) = lab
        .call(Method::DELETE, &format!("/api/v1/machines/{mid}"), None)
        .await;
    assert_eq!(st, 204);
    assert!(!file.exists(), "the recording went with its machine");
    let (st, v) = lab
        .call(
            Method::GET,
            &format!("/api/v1/terminals/{tid}/recording"),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (404, "recording_not_found"), "{v}");

    // And when a machine's time is up, its recordings go as it is reaped.
    let (_, t) = recorded_terminal(&lab, json!({"ttl_seconds": 1})).await;
    let file = lab
        .data
        .path()
        .join("recordings")
        .join(format!("{}.cast", t["id"].as_str().unwrap()));
    assert!(file.exists());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(lab.state.platform.reap_once().await.unwrap(), 1);
    assert!(!file.exists(), "the recording went with its reaped machine");
    lab.stop().await;
}

/// The close code a connected socket gets next.
async fn closed_with<S>(ws: &mut S) -> u16
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_terminal_revokes_its_tokens() {
    let lab = Lab::start(Options::default()).await;
    let (_, t) = recorded_terminal(&lab, json!({})).await;
    let tid = t["id"].as_str().unwrap().to_string();
    let (owner_url, viewer_url) = (
        t["ws_url"].as_str().unwrap().to_string(),
        t["viewer_ws_url"].as_str().unwrap().to_string(),
    );
    let (mut owner, _) = tokio_tungstenite::connect_async(&owner_url).await.unwrap();
    let (mut viewer, _) = tokio_tungstenite::connect_async(&viewer_url).await.unwrap();
    until(&mut owner, "# ").await;

    let (st, _) = lab
        .call(Method::DELETE, &format!("/api/v1/terminals/{tid}"), None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(closed_with(&mut owner).await, 4010);
    assert_eq!(closed_with(&mut viewer).await, 4010);
    // Neither token opens anything any more: not the socket, not the recording.
    assert_eq!(socket_outcome(&owner_url).await.0, 4003);
    assert_eq!(socket_outcome(&viewer_url).await.0, 4003);
    let token = token_of(&owner_url);
    let (st, _, v) = lab
        .call_as(
            None,
            Method::GET,
            &format!("/terminals/{tid}/recording?token={token}"),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (401, "token_revoked"), "{v}");
    // Closed is closed: a second delete finds nothing.
    let (st, v) = lab
        .call(Method::DELETE, &format!("/api/v1/terminals/{tid}"), None)
        .await;
    assert_eq!((st, code(&v)), (404, "terminal_not_found"), "{v}");

    // A learner's page terminal closed through the API: the page gets a new one.
    let (_, token) = lab.page_token("/exercises/alpha", None).await;
    let token = token.unwrap();
    let (st, _, s) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!(st, 200, "{s}");
    let page_tid = s["terminal"]["id"].as_str().unwrap().to_string();
    let (st, _) = lab
        .call(
            Method::DELETE,
            &format!("/api/v1/terminals/{page_tid}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (_, _, s2) = lab
        .learn(&token, Method::POST, "exercises/alpha/session", None)
        .await;
    assert_eq!(s2["machine"]["id"], s["machine"]["id"]);
    assert_ne!(s2["terminal"]["id"].as_str().unwrap(), page_tid);
    let url = format!(
        "{}/ws/terminals/{}?token={}",
        lab.ws_base(),
        s2["terminal"]["id"].as_str().unwrap(),
        token_of(s2["terminal"]["page_url"].as_str().unwrap())
    );
    assert_eq!(socket_outcome(&url).await.0, 101);
    lab.stop().await;
}
