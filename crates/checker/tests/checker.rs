//! The checker on a platform on the fake driver (real store, real agent in every machine;
//! no root, Docker or crun): the run queue under a burst and across a restart, per-check
//! results and the score of a small exercise, live checking's debounce, webhooks (signed,
//! retried, only to admitted destinations, never redirected, side by side).

use rnr_checker::{
    CheckRunRow, CheckRunState, CheckTrigger, Checker, CheckerConfig, CheckerError, RunReport,
    Status, WebhookState,
};
use rnr_core::testing::{policy, TestPlatform};
use rnr_core::CreateMachine;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The exercise every test checks: one check of each kind the agent runs (file, user,
/// command, script), one that needs another, points, setup and placed files.
const MANIFEST: &str = r#"title = "Basics"
setup = "setup.sh"

[[check]]
name = "greeting"
kind = "file"
path = "/srv/greeting"
contains = "hello"
points = 2
message = "/srv/greeting must say hello."
hint = "echo hello > /srv/greeting"

[[check]]
name = "ann"
kind = "user"
user = "ann"
message = "There is no user ann."

[[check]]
name = "listing"
kind = "command"
command = "ls /srv"
stdout = "greeting"
needs = ["greeting"]
message = "ls /srv does not list greeting."

[[check]]
name = "flag"
kind = "script"
script = "checks/flag.sh"
message = "The flag is not set."

[[check]]
name = "motd"
kind = "file"
path = "/etc/motd"
contains = "welcome"
message = "The exercise's files were not placed."
"#;

const SOLVE_GREETING: &str = "echo hello > /srv/greeting";
const SOLVE_REST: &str =
    "echo 'ann:x:1001:1001::/home/ann:/bin/sh' >> /etc/passwd && touch /srv/flag";

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A platform, the `basics` exercise in its directory, and a checker (not started).
struct Setup {
    tp: TestPlatform,
    checker: Checker,
    config: CheckerConfig,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Setup {
    async fn new(config: CheckerConfig) -> Self {
        let tp = TestPlatform::start(policy()).await;
        let ex = tp.dir().join("exercises/basics");
        write(&ex, "exercise.toml", MANIFEST);
        write(&ex, "README.md", "# Basics\n");
        write(
            &ex,
            "solution.sh",
            &format!("{SOLVE_GREETING}\n{SOLVE_REST}\n"),
        );
        write(&ex, "setup.sh", "#!/bin/sh\nset -e\nmkdir -p /srv\n");
        write(&ex, "files/etc/motd", "welcome to basics\n");
        write(
            &ex,
            "checks/flag.sh",
            "#!/bin/sh\n[ -f /srv/flag ] || { echo 'FAIL: /srv/flag is missing'; exit 1; }\n",
        );
        let config = CheckerConfig {
            exercises_dir: Some(tp.dir().join("exercises")),
            ..config
        };
        let checker = Checker::new(tp.platform.clone(), tp.store.check_runs(), config.clone());
        Self {
            tp,
            checker,
            config,
            stop: CancellationToken::new(),
        }
    }

    async fn start(&self) {
        self.checker.start(self.stop.clone()).await.unwrap();
    }

    /// A machine made for the exercise: files placed, setup run.
    async fn machine(&self) -> String {
        self.checker
            .create_machine(CreateMachine::default(), "basics")
            .await
            .expect("a machine for basics")
            .id
    }

    async fn enqueue(&self, machine: &str, webhook: Option<&str>) -> String {
        self.checker.enqueue(machine, None, webhook).await.unwrap()
    }

    /// Run `id` once it is finished.
    async fn finished(&self, id: &str) -> CheckRunRow {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.checker.get_run(id).await.unwrap();
            if run.state.finished() {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} still {:?}", run.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn report(&self, id: &str) -> RunReport {
        let run = self.finished(id).await;
        assert_eq!(run.state, CheckRunState::Done, "{:?}", run.error);
        serde_json::from_str(run.report.as_deref().unwrap()).unwrap()
    }
}

fn statuses(r: &RunReport) -> Vec<(&str, Status)> {
    r.results
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_score_follow_the_machine() {
    let s = Setup::new(CheckerConfig::default()).await;
    s.start().await;
    let m = s.machine().await;

    let fresh = s.report(&s.enqueue(&m, None).await).await;
    assert_eq!(
        statuses(&fresh),
        [
            ("greeting", Status::Failed),
            ("ann", Status::Failed),
            ("listing", Status::Skipped),
            ("flag", Status::Failed),
            ("motd", Status::Passed),
        ]
    );
    let greeting = &fresh.results[0];
    assert_eq!(
        greeting.message.as_deref(),
        Some("/srv/greeting must say hello.")
    );
    assert_eq!(greeting.hint.as_deref(), Some("echo hello > /srv/greeting"));
    assert!(!greeting.detail.is_empty());
    assert!(fresh.results[2].detail.contains("needs \"greeting\""));
    // A script's FAIL line is the learner's message.
    assert_eq!(
        fresh.results[3].message.as_deref(),
        Some("/srv/flag is missing")
    );
    assert_eq!(fresh.results[4].message, None, "no message when passed");
    // Points: greeting 2, the rest 1 each; only motd (1 of 6) passed.
    assert!((fresh.score - 1.0 / 6.0).abs() < 1e-9, "{}", fresh.score);
    assert_eq!(
        (fresh.passed, fresh.failed, fresh.skipped, fresh.errored),
        (1, 3, 1, 0)
    );

    s.tp.sh(&m, SOLVE_GREETING).await;
    let half = s.report(&s.enqueue(&m, None).await).await;
    assert_eq!(half.results[0].status, Status::Passed);
    assert_eq!(half.results[2].status, Status::Passed, "its need passed");
    assert!((half.score - 4.0 / 6.0).abs() < 1e-9, "{}", half.score);

    s.tp.sh(&m, SOLVE_REST).await;
    let solved = s.report(&s.enqueue(&m, None).await).await;
    assert!(solved.all_passed(), "{:?}", statuses(&solved));
    assert_eq!(solved.score, 1.0);
    assert_eq!(
        s.checker.last_run(&m).await.unwrap().unwrap().state,
        CheckRunState::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_runs_is_checked_exactly_once_each() {
    let s = Setup::new(CheckerConfig {
        workers: 3,
        ..CheckerConfig::default()
    })
    .await;
    let machines = [s.machine().await, s.machine().await];
    s.start().await;
    let enqueues = (0..30).map(|i| s.enqueue(&machines[i % 2], None));
    let ids = futures::future::join_all(enqueues).await;
    for id in &ids {
        let run = s.finished(id).await;
        assert_eq!(run.state, CheckRunState::Done, "{id}: {:?}", run.error);
        assert_eq!(run.attempts, 1, "{id} claimed more than once");
    }
    let runs = s.tp.store.check_runs();
    assert_eq!(runs.count(CheckRunState::Done).await.unwrap(), 30);
    assert_eq!(runs.count(CheckRunState::Queued).await.unwrap(), 0);
    for m in &machines {
        assert_eq!(s.checker.history(m, 100).await.unwrap().len(), 15);
    }
    let metrics = s.tp.platform.metrics();
    assert_eq!(
        metrics.checks_run.load(Ordering::Relaxed),
        30,
        "each run executed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_restart() {
    let mut s = Setup::new(CheckerConfig::default()).await;
    let m = s.machine().await;
    // Queued while no worker runs, then one taken by a worker that died with the process.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.enqueue(&m, None).await);
    }
    let dead =
        s.tp.store
            .check_runs()
            .claim(rnr_core::now_ms())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(dead.id, ids[0], "the oldest is claimed first");

    // The restart: a new store handle, driver, platform and checker on the same state.
    s.tp.restart().await;
    let report = s.tp.platform.reconcile().await.unwrap();
    assert_eq!(report.adopted, vec![m.clone()]);
    s.checker = Checker::new(
        s.tp.platform.clone(),
        s.tp.store.check_runs(),
        s.config.clone(),
    );
    s.start().await;
    for id in &ids {
        let run = s.finished(id).await;
        assert_eq!(run.state, CheckRunState::Done, "{id}: {:?}", run.error);
        let attempts = if *id == dead.id { 2 } else { 1 };
        assert_eq!(run.attempts, attempts, "{id}");
    }
    let metrics = s.tp.platform.metrics();
    assert_eq!(metrics.checks_run.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_checking_waits_for_a_pause_and_pushes_changes() {
    let debounce = Duration::from_millis(1200);
    let s = Setup::new(CheckerConfig {
        debounce,
        ..CheckerConfig::default()
    })
    .await;
    let m = s.machine().await;
    let unbound = s.tp.machine().await;
    s.start().await;
    let mut events = s.checker.subscribe(&m);
    let live_runs = || async {
        let all = s.checker.history(&m, 100).await.unwrap();
        all.into_iter()
            .filter(|r| r.trigger == CheckTrigger::Live)
            .collect::<Vec<_>>()
    };
    // Typing for longer than the debounce, never pausing as long: no run meanwhile.
    let mut last = 0;
    for _ in 0..10 {
        s.checker.notify_activity(&m);
        s.checker.notify_activity(&unbound);
        last = rnr_core::now_ms();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(live_runs().await.is_empty(), "a run while typing");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let run = loop {
        if let Some(r) = live_runs().await.pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "no live run after the pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited = run.created_at - last;
    assert!(
        waited >= debounce.as_millis() as i64 - 50,
        "queued {waited} ms after the last keystroke"
    );
    let report = s.report(&run.id).await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the first results are pushed")
        .unwrap();
    assert_eq!(
        (event.machine_id.as_str(), event.run_id.as_str()),
        (m.as_str(), run.id.as_str())
    );
    assert_eq!(event.report, report);
    // The burst was one run; the machine made for no exercise is never checked.
    tokio::time::sleep(debounce * 2).await;
    assert_eq!(live_runs().await.len(), 1);
    assert!(s.checker.history(&unbound, 10).await.unwrap().is_empty());

    // Activity that changes nothing: a run, but nothing pushed.
    s.checker.notify_activity(&m);
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_runs().await.len() < 2 {
        assert!(Instant::now() < deadline, "no second live run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.finished(&live_runs().await[0].id).await;
    assert!(events.try_recv().is_err(), "unchanged results pushed");
    // A change is pushed.
    s.tp.sh(&m, SOLVE_GREETING).await;
    s.checker.notify_activity(&m);
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the change is pushed")
        .unwrap();
    assert_eq!(event.report.results[0].status, Status::Passed);
}

/// One request a webhook receiver got.
#[derive(Clone)]
struct Delivery {
    at: Instant,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1 that fails its first delivery with 500.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn serve(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let mut got = me.got.lock().unwrap();
                    got.push(Delivery {
                        at: Instant::now(),
                        headers,
                        body: body.to_vec(),
                    });
                    if got.len() == 1 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried() {
    let secret = "s3cret";
    let s = Setup::new(CheckerConfig {
        webhook_secret: Some(secret.into()),
        webhook_allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..CheckerConfig::default()
    })
    .await;
    let m = s.machine().await;
    let e = s
        .checker
        .enqueue(&m, None, Some("ftp://127.0.0.1/hook"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CheckerError::InvalidRequest { field, .. } if field == "webhook_url"),
        "{e:?}"
    );
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    s.start().await;
    let id = s.enqueue(&m, Some(&url)).await;
    s.finished(&id).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let run = loop {
        let run = s.checker.get_run(&id).await.unwrap();
        if run.webhook_state == Some(WebhookState::Delivered) {
            break run;
        }
        assert!(Instant::now() < deadline, "not delivered: {run:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((run.webhook_attempts, run.webhook_error), (2, None));
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failed delivery, one retry");
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(900),
        "retried after a backoff"
    );
    for Delivery { headers, body, .. } in &got {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(
            header("x-rnr-signature"),
            Some(rnr_checker::webhook::signature(secret, body).as_str())
        );
        assert_eq!(header("x-rnr-run"), Some(id.as_str()));
        assert_eq!(header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "check_run.finished");
        assert_eq!(
            (v["id"].as_str(), v["machine_id"].as_str()),
            (Some(id.as_str()), Some(m.as_str()))
        );
        assert_eq!(
            (v["exercise"].as_str(), v["state"].as_str()),
            (Some("basics"), Some("done"))
        );
        assert!((v["report"]["score"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);
    }
    assert_eq!(got[0].body, got[1].body, "the same body each time");
}

/// A receiver answering each request with `status` (and `location`) after `delay`;
/// returns its URL and when each request arrived.
async fn receiver(
    status: u16,
    location: Option<String>,
    delay: Duration,
) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let got: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (seen, location) = (seen.clone(), location.clone());
            async move {
                seen.lock().unwrap().push(Instant::now());
                tokio::time::sleep(delay).await;
                let mut resp = axum::http::Response::builder()
                    .status(status)
                    .header("content-length", "0");
                if let Some(l) = location {
                    resp = resp.header("location", l);
                }
                resp.body(axum::body::Body::empty()).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// The run's webhook once it left `pending` or its first attempt was recorded.
async fn attempted(s: &Setup, id: &str) -> CheckRunRow {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = s.checker.get_run(id).await.unwrap();
        if run.webhook_attempts > 0 {
            return run;
        }
        assert!(Instant::now() < deadline, "never attempted: {run:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_addresses_are_refused_unless_allowed() {
    let s = Setup::new(CheckerConfig {
        webhook_secret: Some("k".into()),
        ..CheckerConfig::default()
    })
    .await;
    let m = s.machine().await;
    let (url, got) = receiver(200, None, Duration::ZERO).await;
    let name = url.replace("127.0.0.1", "localhost");
    for bad in [
        url.as_str(),
        name.as_str(),
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[::1]:9/hook",
        "http://[fe80::1]/hook",
        "http://100.64.1.1/hook",
    ] {
        let e = s.checker.enqueue(&m, None, Some(bad)).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, CheckerError::InvalidRequest { field, .. } if field == "webhook_url")
                && text.contains(bad)
                && text.contains("webhook_allow"),
            "{bad}: {text}"
        );
    }
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_redirects_are_not_followed() {
    let s = Setup::new(CheckerConfig {
        webhook_secret: Some("k".into()),
        webhook_allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..CheckerConfig::default()
    })
    .await;
    let m = s.machine().await;
    let (target, reached) = receiver(200, None, Duration::ZERO).await;
    let (url, got) = receiver(307, Some(target.clone()), Duration::ZERO).await;
    s.start().await;
    let id = s.enqueue(&m, Some(&url)).await;
    let run = attempted(&s, &id).await;
    assert_eq!(run.webhook_state, Some(WebhookState::Pending), "{run:?}");
    let error = run.webhook_error.unwrap_or_default();
    assert!(
        error.contains("307") && error.contains("no redirect") && error.contains(&target),
        "{error}"
    );
    assert_eq!(got.lock().unwrap().len(), 1);
    assert!(
        reached.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_receiver_does_not_hold_back_the_others() {
    let s = Setup::new(CheckerConfig {
        webhook_secret: Some("k".into()),
        webhook_allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..CheckerConfig::default()
    })
    .await;
    let (slow_m, fast_m) = (s.machine().await, s.machine().await);
    // Slow, but within a delivery's 10 s: its attempt is still in flight at the end.
    let (slow_url, slow) = receiver(200, None, Duration::from_secs(9)).await;
    let (fast_url, fast) = receiver(200, None, Duration::ZERO).await;
    s.start().await;
    let slow_id = s.enqueue(&slow_m, Some(&slow_url)).await;
    // The slow delivery is under way before the other run is even queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the slow receiver got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fast_id = s.enqueue(&fast_m, Some(&fast_url)).await;
    let run = attempted(&s, &fast_id).await;
    assert_eq!(run.webhook_state, Some(WebhookState::Delivered), "{run:?}");
    let (slow_at, fast_at) = (slow.lock().unwrap()[0], fast.lock().unwrap()[0]);
    assert!(
        fast_at - slow_at < Duration::from_secs(7),
        "the fast receiver waited {:?} for the slow one",
        fast_at - slow_at
    );
    let slow_run = s.checker.get_run(&slow_id).await.unwrap();
    assert_eq!(
        slow_run.webhook_attempts, 0,
        "the slow one is still in flight"
    );
}
