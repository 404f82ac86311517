//! The authorisation matrix: every route the router has (each path of the route table,
//! its methods asked of the router itself) and every operation of the OpenAPI document,
//! the two held to agree, each route called with every kind of credential — none, a wrong
//! API key, a revoked one, a valid one, an operator session, the learner of this exercise,
//! another learner, a terminal viewer token, an expired token, a link or token for another
//! exercise — and the answer compared with what the route is designed to give. A route
//! the table below does not know fails the test, as does a documented operation the
//! router lacks. Every answer must also carry the security headers, with framing allowed
//! only where the embed and terminal pages need it.
//!
//! In-process: the real platform over the fake driver (common/mod.rs).

mod common;

use common::{socket_outcome, token_of, Lab, Options, LMS};
use reqwest::Method;
use rnr_http::Access;
use rnr_terminal::{Claims, Role};
use rnr_ui::{LearnerClaims, LinkClaims};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The kinds of credential every route is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    None,
    WrongKey,
    RevokedKey,
    Viewer,
    Expired,
    OtherLearner,
    OtherExercise,
    Operator,
    Key,
    Learner,
}

/// In this order: the credentials a route accepts come last, so that what a success
/// changes (a reset, a deletion) cannot colour the refusals.
const CREDS: [Cred; 10] = [
    Cred::None,
    Cred::WrongKey,
    Cred::RevokedKey,
    Cred::Viewer,
    Cred::Expired,
    Cred::OtherLearner,
    Cred::OtherExercise,
    Cred::Operator,
    Cred::Key,
    Cred::Learner,
];

/// What a route is called on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// No path parameter.
    None,
    /// `{name}`: the exercise `alpha`.
    Exercise,
    /// `{id}`: learner A's machine for `alpha`.
    AMachine,
    /// `{id}`: a machine made for this route with the API key (the route deletes it).
    Spare,
    /// `{id}`: a check run of A's machine.
    ARun,
    /// `{id}`: the terminal A's page shows.
    APageTerminal,
    /// `{id}`: a recorded terminal on A's machine.
    ARecorded,
    /// `{id}`: a terminal made for this route on a spare machine (the route closes it).
    SpareTerminal,
    /// `{token}`: the credential's link.
    Link,
}

/// What a route is designed to answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Anyone gets this status.
    Public(u16),
    /// A valid API key gets it; everyone else 401.
    Key(u16),
    /// The learner of this exercise gets `ok`, another learner `other_learner` (their own
    /// session, or "not found" for A's things), a token of A's for another exercise
    /// `other_exercise`; everyone else 401.
    Learner {
        ok: u16,
        other_learner: u16,
        other_exercise: u16,
    },
    /// An owner or viewer token of this terminal gets `ok`; an expired one 401 (4002 on
    /// the socket); any other token 401 (4001).
    Token { ok: u16, socket: bool },
    /// Any genuine unexpired link gets the page; an expired one 410; anything else (a
    /// link of a revoked key included) 403.
    Link,
    /// An operator session gets this status; everyone else 401.
    Operator(u16),
    /// The sign-in form: a valid API key is signed in (303); anything else 401.
    Login,
}

struct Row {
    method: &'static str,
    path: &'static str,
    target: Target,
    expect: Expect,
    body: Option<&'static str>,
    /// What a success changes that later routes rely on (fixtures are made again).
    destructive: bool,
}

const fn row(method: &'static str, path: &'static str, target: Target, expect: Expect) -> Row {
    Row {
        method,
        path,
        target,
        expect,
        body: None,
        destructive: false,
    }
}

const fn with_body(mut r: Row, body: &'static str) -> Row {
    r.body = Some(body);
    r
}

const fn destructive(mut r: Row) -> Row {
    r.destructive = true;
    r
}

const fn learner(ok: u16, other_learner: u16, other_exercise: u16) -> Expect {
    Expect::Learner {
        ok,
        other_learner,
        other_exercise,
    }
}

/// Every route and what it answers. A route missing here fails the test.
const TABLE: &[Row] = &[
    // Public.
    row("GET", "/", Target::None, Expect::Public(303)),
    row("GET", "/exercises", Target::None, Expect::Public(200)),
    row(
        "GET",
        "/exercises/{name}",
        Target::Exercise,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/assets/rnr-web.css",
        Target::None,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/assets/rnr-exercise.js",
        Target::None,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/assets/rnr-operator.js",
        Target::None,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/assets/rnr-terminal.js",
        Target::None,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/assets/rnr-terminal.css",
        Target::None,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/terminals/{id}",
        Target::APageTerminal,
        Expect::Public(200),
    ),
    row(
        "GET",
        "/terminals/{id}/replay",
        Target::ARecorded,
        Expect::Public(200),
    ),
    row("GET", "/operator", Target::None, Expect::Public(200)),
    row("POST", "/operator/login", Target::None, Expect::Login),
    row(
        "POST",
        "/operator/logout",
        Target::None,
        Expect::Public(303),
    ),
    row("GET", "/healthz", Target::None, Expect::Public(200)),
    row("GET", "/readyz", Target::None, Expect::Public(200)),
    row("GET", "/metrics", Target::None, Expect::Public(200)),
    row(
        "GET",
        "/api/v1/openapi.json",
        Target::None,
        Expect::Public(200),
    ),
    // API key.
    with_body(
        row("POST", "/api/v1/machines", Target::None, Expect::Key(201)),
        "{}",
    ),
    row("GET", "/api/v1/machines", Target::None, Expect::Key(200)),
    row(
        "GET",
        "/api/v1/machines/{id}",
        Target::AMachine,
        Expect::Key(200),
    ),
    destructive(row(
        "DELETE",
        "/api/v1/machines/{id}",
        Target::Spare,
        Expect::Key(204),
    )),
    with_body(
        row(
            "POST",
            "/api/v1/machines/{id}/exec",
            Target::AMachine,
            Expect::Key(200),
        ),
        r#"{"argv": ["true"]}"#,
    ),
    with_body(
        row(
            "POST",
            "/api/v1/machines/{id}/extend",
            Target::AMachine,
            Expect::Key(200),
        ),
        r#"{"ttl_seconds": 1}"#,
    ),
    row(
        "POST",
        "/api/v1/machines/{id}/checks",
        Target::AMachine,
        Expect::Key(202),
    ),
    row(
        "GET",
        "/api/v1/machines/{id}/checks/stream",
        Target::AMachine,
        Expect::Key(200),
    ),
    row(
        "POST",
        "/api/v1/machines/{id}/activity",
        Target::AMachine,
        Expect::Key(204),
    ),
    row("GET", "/api/v1/checks/{id}", Target::ARun, Expect::Key(200)),
    with_body(
        row(
            "POST",
            "/api/v1/machines/{id}/terminals",
            Target::Spare,
            Expect::Key(201),
        ),
        "{}",
    ),
    destructive(row(
        "DELETE",
        "/api/v1/terminals/{id}",
        Target::SpareTerminal,
        Expect::Key(204),
    )),
    row(
        "GET",
        "/api/v1/terminals/{id}/recording",
        Target::ARecorded,
        Expect::Key(200),
    ),
    with_body(
        row("POST", "/api/v1/links", Target::None, Expect::Key(201)),
        r#"{"learner": "zed", "exercise": "alpha"}"#,
    ),
    // A learner token, for one exercise.
    row(
        "POST",
        "/learn/api/exercises/{name}/session",
        Target::Exercise,
        learner(200, 200, 403),
    ),
    row(
        "POST",
        "/learn/api/token",
        Target::None,
        learner(200, 200, 200),
    ),
    destructive(row(
        "POST",
        "/learn/api/machines/{id}/reset",
        Target::AMachine,
        learner(200, 404, 404),
    )),
    row(
        "POST",
        "/learn/api/machines/{id}/extend",
        Target::AMachine,
        learner(200, 404, 404),
    ),
    row(
        "POST",
        "/learn/api/machines/{id}/checks",
        Target::AMachine,
        learner(202, 404, 404),
    ),
    row(
        "GET",
        "/learn/api/machines/{id}/events",
        Target::AMachine,
        learner(200, 404, 404),
    ),
    row(
        "GET",
        "/learn/api/checks/{id}",
        Target::ARun,
        learner(200, 404, 404),
    ),
    // A terminal's token.
    row(
        "GET",
        "/ws/terminals/{id}",
        Target::APageTerminal,
        Expect::Token {
            ok: 101,
            socket: true,
        },
    ),
    row(
        "GET",
        "/terminals/{id}/recording",
        Target::ARecorded,
        Expect::Token {
            ok: 200,
            socket: false,
        },
    ),
    // A signed link.
    row("GET", "/learn/{token}", Target::Link, Expect::Link),
    row("GET", "/embed/{token}", Target::Link, Expect::Link),
    // An operator session.
    row(
        "GET",
        "/operator/api/overview",
        Target::None,
        Expect::Operator(200),
    ),
    destructive(row(
        "POST",
        "/operator/api/machines/{id}/delete",
        Target::Spare,
        Expect::Operator(204),
    )),
    row(
        "GET",
        "/operator/api/machines/{id}/checks",
        Target::AMachine,
        Expect::Operator(200),
    ),
    row(
        "POST",
        "/operator/api/machines/{id}/watch",
        Target::AMachine,
        Expect::Operator(200),
    ),
];

/// Routes the router has that the OpenAPI document leaves out, and why: pages and their
/// assets (HTML and files, not an API) and the operator page's own calls.
const UNDOCUMENTED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/exercises"),
    ("GET", "/exercises/{name}"),
    ("GET", "/learn/{token}"),
    ("GET", "/embed/{token}"),
    ("GET", "/assets/rnr-web.css"),
    ("GET", "/assets/rnr-exercise.js"),
    ("GET", "/assets/rnr-operator.js"),
    ("GET", "/assets/rnr-terminal.js"),
    ("GET", "/assets/rnr-terminal.css"),
    ("GET", "/terminals/{id}"),
    ("GET", "/terminals/{id}/replay"),
    // The WebSocket is described in the document of `POST …/terminals` and in
    // docs/terminal-protocol.md: OpenAPI has no words for an upgrade.
    ("GET", "/ws/terminals/{id}"),
    ("GET", "/operator"),
    ("POST", "/operator/login"),
    ("POST", "/operator/logout"),
    ("GET", "/operator/api/overview"),
    ("POST", "/operator/api/machines/{id}/delete"),
    ("GET", "/operator/api/machines/{id}/checks"),
    ("POST", "/operator/api/machines/{id}/watch"),
];

/// Which expectation kinds fit which access of the route table.
fn fits(access: Access, e: Expect) -> bool {
    matches!(
        (access, e),
        (Access::Public, Expect::Public(_) | Expect::Login)
            | (Access::ApiKey, Expect::Key(_))
            | (Access::Learner, Expect::Learner { .. })
            | (Access::TerminalToken, Expect::Token { .. })
            | (Access::SignedLink, Expect::Link)
            | (Access::Operator, Expect::Operator(_))
    )
}

fn expected(e: Expect, c: Cred) -> u16 {
    match e {
        Expect::Public(s) => s,
        Expect::Key(s) => {
            if c == Cred::Key {
                s
            } else {
                401
            }
        }
        Expect::Operator(s) => {
            if c == Cred::Operator {
                s
            } else {
                401
            }
        }
        Expect::Login => {
            if c == Cred::Key {
                303
            } else {
                401
            }
        }
        Expect::Learner {
            ok,
            other_learner,
            other_exercise,
        } => match c {
            Cred::Learner => ok,
            Cred::OtherLearner => other_learner,
            Cred::OtherExercise => other_exercise,
            _ => 401,
        },
        Expect::Token { ok, socket } => match c {
            Cred::Learner | Cred::Viewer => ok,
            Cred::Expired if socket => 4002,
            _ if socket => 4001,
            _ => 401,
        },
        Expect::Link => match c {
            Cred::Learner | Cred::OtherLearner | Cred::OtherExercise => 200,
            Cred::Expired => 410,
            _ => 403,
        },
    }
}

/// A learner's side: their page token, machine, page terminal and its owner token.
#[derive(Debug, Clone)]
struct Side {
    token: String,
    machine: String,
    terminal: String,
    terminal_token: String,
}

/// What the credentials and targets are made of.
struct Fixtures {
    revoked_key: String,
    revoked_cookie: String,
    revoked_link: String,
    /// The page token of a learner of the revoked key's link.
    revoked_learner: String,
    operator_cookie: String,
    a_alpha_link: String,
    a_beta_link: String,
    b_alpha_link: String,
    expired_link: String,
    expired_learner: String,
    a: Side,
    a_beta: Side,
    b: Side,
    /// A viewer token of A's page terminal.
    a_viewer: String,
    /// A recorded terminal on A's machine: id, owner and viewer tokens.
    recorded: (String, String, String),
    run: String,
    terminal_secret: String,
}

fn link_token(v: &Value) -> String {
    v["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

async fn login(lab: &Lab, key: &str) -> String {
    let resp = lab
        .client
        .post(format!("{}/operator/login", lab.url))
        .form(&[("api_key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303, "operator sign-in");
    let c = resp.headers()["set-cookie"].to_str().unwrap();
    c.split(';').next().unwrap().to_string()
}

async fn side(lab: &Lab, link: &str, exercise: &str) -> Side {
    let (st, token) = lab.page_token(&format!("/learn/{link}"), None).await;
    assert_eq!(st, 200);
    let token = token.expect("the page holds a learner token");
    let (st, _, s) = lab
        .learn(
            &token,
            Method::POST,
            &format!("exercises/{exercise}/session"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{s}");
    Side {
        machine: s["machine"]["id"].as_str().unwrap().to_string(),
        terminal: s["terminal"]["id"].as_str().unwrap().to_string(),
        terminal_token: token_of(s["terminal"]["page_url"].as_str().unwrap()),
        token,
    }
}

impl Fixtures {
    async fn new(lab: &Lab) -> Self {
        let (revoked_key, revoked_id) = lab.new_key("old", Default::default()).await;
        let revoked_cookie = login(lab, &revoked_key).await;
        let revoked_link = link_token(&lab.link(&revoked_key, "olga", "alpha").await);
        let revoked_learner = side(lab, &revoked_link, "alpha").await.token;
        assert!(lab
            .store
            .revoke_api_key(&revoked_id, rnr_core::now_ms())
            .await
            .unwrap());
        let operator_cookie = login(lab, &lab.key).await;
        let a_alpha_link = link_token(&lab.link(&lab.key, "alice", "alpha").await);
        let a_beta_link = link_token(&lab.link(&lab.key, "alice", "beta").await);
        let b_alpha_link = link_token(&lab.link(&lab.key, "bob", "alpha").await);
        let now = rnr_core::now_ms() / 1000;
        let signer = lab.state.ui.signer();
        let expired_link = signer.link_token(&LinkClaims {
            learner: "lms:alice".into(),
            exercise: "alpha".into(),
            expires_at: now - 60,
            key: Some(lab.key_id.clone()),
        });
        let expired_learner = signer.learner_token(&LearnerClaims {
            learner: "lms:alice".into(),
            exercise: "alpha".into(),
            expires_at: now - 60,
            until: now + 3600,
            key: Some(lab.key_id.clone()),
        });
        let terminal_secret = lab
            .state
            .platform
            .secret("terminal_token_secret")
            .await
            .unwrap();
        let mut fx = Fixtures {
            revoked_key,
            revoked_cookie,
            revoked_link,
            revoked_learner,
            operator_cookie,
            a: side(lab, &a_alpha_link, "alpha").await,
            a_beta: side(lab, &a_beta_link, "beta").await,
            b: side(lab, &b_alpha_link, "alpha").await,
            a_alpha_link,
            a_beta_link,
            b_alpha_link,
            expired_link,
            expired_learner,
            a_viewer: String::new(),
            recorded: Default::default(),
            run: String::new(),
            terminal_secret,
        };
        fx.around_a(lab).await;
        fx
    }

    /// What hangs off A's machine: a viewer token of its page terminal, a recorded
    /// terminal, a finished check run.
    async fn around_a(&mut self, lab: &Lab) {
        let resp = lab
            .client
            .post(format!(
                "{}/operator/api/machines/{}/watch",
                lab.url, self.a.machine
            ))
            .header("cookie", &self.operator_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let w: Value = resp.json().await.unwrap();
        assert_eq!(w["terminal_id"].as_str(), Some(self.a.terminal.as_str()));
        self.a_viewer = token_of(w["viewer_page_url"].as_str().unwrap());
        let (st, t) = lab
            .call(
                Method::POST,
                &format!("/api/v1/machines/{}/terminals", self.a.machine),
                Some(json!({"record": true})),
            )
            .await;
        assert_eq!(st, 201, "{t}");
        self.recorded = (
            t["id"].as_str().unwrap().to_string(),
            t["token"].as_str().unwrap().to_string(),
            t["viewer_token"].as_str().unwrap().to_string(),
        );
        let (st, _, r) = lab
            .learn(
                &self.a.token,
                Method::POST,
                &format!("machines/{}/checks", self.a.machine),
                None,
            )
            .await;
        assert_eq!(st, 202, "{r}");
        self.run = r["id"].as_str().unwrap().to_string();
        lab.finished_run(&self.run).await;
    }

    /// After a route changed A's machine (a reset): A's session again, and what hangs off
    /// it.
    async fn renew(&mut self, lab: &Lab) {
        self.a = side(lab, &self.a_alpha_link, "alpha").await;
        self.around_a(lab).await;
    }

    fn expired_terminal_token(&self, terminal: &str) -> String {
        rnr_terminal::Signer::new(self.terminal_secret.as_bytes()).sign(&Claims {
            terminal: terminal.into(),
            machine: self.a.machine.clone(),
            role: Role::Owner,
            expires_at: rnr_core::now_ms() / 1000 - 60,
        })
    }
}

/// How a credential is presented: every carrier it could be misused in.
#[derive(Debug, Default, Clone)]
struct Carriers {
    bearer: Option<String>,
    learner: Option<String>,
    token: Option<String>,
    cookie: Option<String>,
    link: String,
    form_key: String,
}

fn carriers(lab: &Lab, fx: &Fixtures, c: Cred, target: Target) -> Carriers {
    // The terminal the route names, for terminal tokens.
    let recorded = target == Target::ARecorded;
    let (own, viewer, terminal) = if recorded {
        (&fx.recorded.1, &fx.recorded.2, &fx.recorded.0)
    } else {
        (&fx.a.terminal_token, &fx.a_viewer, &fx.a.terminal)
    };
    match c {
        Cred::None => Carriers {
            link: "none".into(),
            ..Default::default()
        },
        Cred::WrongKey => {
            let wrong = "rnr_wrongwrongwrongwrongwrongwrongwr".to_string();
            Carriers {
                bearer: Some(wrong.clone()),
                link: wrong.clone(),
                form_key: wrong,
                ..Default::default()
            }
        }
        Cred::RevokedKey => Carriers {
            bearer: Some(fx.revoked_key.clone()),
            cookie: Some(fx.revoked_cookie.clone()),
            learner: Some(fx.revoked_learner.clone()),
            link: fx.revoked_link.clone(),
            form_key: fx.revoked_key.clone(),
            ..Default::default()
        },
        Cred::Key => Carriers {
            bearer: Some(lab.key.clone()),
            link: lab.key.clone(),
            form_key: lab.key.clone(),
            ..Default::default()
        },
        Cred::Operator => Carriers {
            cookie: Some(fx.operator_cookie.clone()),
            link: "x".into(),
            ..Default::default()
        },
        Cred::Learner => Carriers {
            learner: Some(fx.a.token.clone()),
            token: Some(own.clone()),
            link: fx.a_alpha_link.clone(),
            form_key: fx.a.token.clone(),
            ..Default::default()
        },
        Cred::OtherLearner => Carriers {
            learner: Some(fx.b.token.clone()),
            token: Some(fx.b.terminal_token.clone()),
            link: fx.b_alpha_link.clone(),
            form_key: fx.b.token.clone(),
            ..Default::default()
        },
        Cred::OtherExercise => Carriers {
            learner: Some(fx.a_beta.token.clone()),
            token: Some(fx.a_beta.terminal_token.clone()),
            link: fx.a_beta_link.clone(),
            form_key: fx.a_beta.token.clone(),
            ..Default::default()
        },
        Cred::Viewer => Carriers {
            bearer: Some(viewer.clone()),
            learner: Some(viewer.clone()),
            token: Some(viewer.clone()),
            link: viewer.clone(),
            form_key: viewer.clone(),
            ..Default::default()
        },
        Cred::Expired => Carriers {
            learner: Some(fx.expired_learner.clone()),
            token: Some(fx.expired_terminal_token(terminal)),
            link: fx.expired_link.clone(),
            form_key: fx.expired_learner.clone(),
            ..Default::default()
        },
    }
}

/// The id a target stands for (made now for the spare ones).
async fn target_id(lab: &Lab, fx: &Fixtures, t: Target) -> String {
    match t {
        Target::None | Target::Link => String::new(),
        Target::Exercise => "alpha".into(),
        Target::AMachine => fx.a.machine.clone(),
        Target::ARun => fx.run.clone(),
        Target::APageTerminal => fx.a.terminal.clone(),
        Target::ARecorded => fx.recorded.0.clone(),
        Target::Spare | Target::SpareTerminal => {
            let (st, m) = lab
                .call(Method::POST, "/api/v1/machines", Some(json!({})))
                .await;
            assert_eq!(st, 201, "{m}");
            let id = m["id"].as_str().unwrap().to_string();
            if t == Target::Spare {
                return id;
            }
            let (st, term) = lab
                .call(
                    Method::POST,
                    &format!("/api/v1/machines/{id}/terminals"),
                    Some(json!({})),
                )
                .await;
            assert_eq!(st, 201, "{term}");
            term["id"].as_str().unwrap().to_string()
        }
    }
}

/// The security headers every HTTP answer must carry; framing by the LMS only for the
/// embed and terminal pages.
fn check_headers(r: &Row, h: &reqwest::header::HeaderMap) -> Result<(), String> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if get("x-content-type-options") != "nosniff" {
        return Err("no X-Content-Type-Options: nosniff".into());
    }
    if get("referrer-policy") != "no-referrer" {
        return Err("no Referrer-Policy: no-referrer".into());
    }
    let csp = get("content-security-policy");
    if !csp.contains("script-src 'self';") || !csp.contains("default-src 'none'") {
        return Err(format!("CSP {csp:?}"));
    }
    let framable = r.path.starts_with("/embed/")
        || r.path == "/terminals/{id}"
        || r.path == "/terminals/{id}/replay";
    let ancestors = format!("frame-ancestors 'self' {LMS}");
    if framable && !csp.contains(&ancestors) {
        return Err(format!("a framable page without {ancestors:?}: {csp:?}"));
    }
    if !framable && (!csp.contains("frame-ancestors 'none'") || get("x-frame-options") != "DENY") {
        return Err(format!("framable by others: {csp:?}"));
    }
    Ok(())
}

/// Calls route `r` on `id` with credential `c`: the status (101 or a close code for the
/// socket) and, for HTTP, whether the headers are right.
async fn call(lab: &Lab, r: &Row, id: &str, k: &Carriers) -> (u16, Result<(), String>) {
    let path = r
        .path
        .replace("{id}", id)
        .replace("{name}", id)
        .replace("{token}", &k.link);
    let query = k
        .token
        .as_ref()
        .filter(|_| r.path.contains("/terminals/{id}"))
        .map(|t| format!("?token={t}"))
        .unwrap_or_default();
    if r.path.starts_with("/ws/") {
        let (code, _) = socket_outcome(&format!("{}{path}{query}", lab.ws_base())).await;
        return (code, Ok(()));
    }
    let method = Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut req = lab
        .client
        .request(method, format!("{}{path}{query}", lab.url));
    if let Some(b) = &k.bearer {
        req = req.bearer_auth(b);
    }
    if let Some(l) = &k.learner {
        req = req.header("x-rnr-learner", l);
    }
    if let Some(c) = &k.cookie {
        req = req.header("cookie", c);
    }
    if r.path == "/operator/login" {
        req = req.form(&[("api_key", k.form_key.as_str())]);
    } else if let Some(body) = r.body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, check_headers(r, resp.headers()))
}

/// Every (method, path) the router serves: the route table's paths, each asked for its
/// methods with a method no route takes (the router answers 405 and `Allow`).
async fn router_routes(lab: &Lab) -> BTreeMap<(String, String), Access> {
    let mut out = BTreeMap::new();
    for info in rnr_http::route_table() {
        let concrete = info
            .path
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{token}", "x");
        let resp = lab
            .client
            .request(
                Method::from_bytes(b"PROBE").unwrap(),
                format!("{}{concrete}", lab.url),
            )
            .bearer_auth(&lab.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            405,
            "{} answers any method",
            info.path
        );
        let allow = resp.headers()["allow"].to_str().unwrap().to_string();
        for m in allow.split(',').map(str::trim).filter(|m| *m != "HEAD") {
            let prev = out.insert((m.to_string(), info.path.to_string()), info.access);
            assert!(prev.is_none(), "{m} {} twice in the route table", info.path);
        }
    }
    out
}

async fn openapi_routes(lab: &Lab) -> BTreeSet<(String, String)> {
    let (st, doc) = lab.call(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(st, 200);
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&m.as_str()) {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_credential_as_designed() {
    let mut opts = Options::default();
    opts.terminal.max_per_machine = 100;
    let lab = Lab::start(opts).await;

    // The router and the document agree, and the table knows every route.
    let router = router_routes(&lab).await;
    let documented = openapi_routes(&lab).await;
    let served: BTreeSet<(String, String)> = router.keys().cloned().collect();
    let missing: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "documented but not served: {missing:?}");
    let undocumented: BTreeSet<(String, String)> = UNDOCUMENTED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let extra: Vec<_> = served
        .difference(&documented)
        .filter(|r| !undocumented.contains(*r))
        .collect();
    assert!(
        extra.is_empty(),
        "served but neither documented nor listed as a page: {extra:?}"
    );
    let stale: Vec<_> = undocumented.difference(&served).collect();
    assert!(
        stale.is_empty(),
        "listed as pages but not served: {stale:?}"
    );
    let known: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let unknown: Vec<_> = served.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "routes the matrix does not know: {unknown:?}"
    );
    let gone: Vec<_> = known.difference(&served).collect();
    assert!(
        gone.is_empty(),
        "the matrix knows routes that are not served: {gone:?}"
    );
    for r in TABLE {
        let access = router[&(r.method.to_string(), r.path.to_string())];
        assert!(
            fits(access, r.expect),
            "{} {}: the route table says {access:?}, the matrix expects {:?}",
            r.method,
            r.path,
            r.expect
        );
    }

    // Every route × every credential.
    let mut fx = Fixtures::new(&lab).await;
    let mut grid = String::new();
    let mut wrong = Vec::new();
    for r in TABLE {
        let id = target_id(&lab, &fx, r.target).await;
        let mut line = format!("{:<6} {:<38}", r.method, r.path);
        for c in CREDS {
            let k = carriers(&lab, &fx, c, r.target);
            let (got, headers) = call(&lab, r, &id, &k).await;
            let want = expected(r.expect, c);
            line.push_str(&format!(" {got:>4}"));
            if got != want {
                wrong.push(format!(
                    "{} {} as {c:?}: {got}, expected {want}",
                    r.method, r.path
                ));
                line.push('!');
            }
            if let Err(e) = headers {
                wrong.push(format!("{} {} as {c:?}: {e}", r.method, r.path));
            }
        }
        grid.push_str(&line);
        grid.push('\n');
        if r.destructive {
            fx.renew(&lab).await;
        }
    }
    let head: String = CREDS
        .iter()
        .map(|c| format!(" {:>4.4}", format!("{c:?}")))
        .collect();
    eprintln!("{:<45}{head}\n{grid}", "");
    assert!(
        wrong.is_empty(),
        "{} answers not as designed:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    lab.stop().await;
}
