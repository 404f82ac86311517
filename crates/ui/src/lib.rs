//! The web UI as a library: the learner's exercise page (instructions beside the terminal,
//! Check button, live results, time left, extend, reset), the exercise index, signed links
//! and the `/embed/…` variant for an LMS iframe, and the operator's view. It renders the
//! pages, signs and verifies the tokens, and does what the pages ask; the HTTP layer
//! (rnr-http) routes requests here, authenticates them with [`Signer`] and writes the
//! answers.
//!
//! Learners never hold an API key: a learner is a signed id — an anonymous browser session
//! (cookie) or a learner id the integrating LMS named in a signed, expiring link. Every
//! learner call checks that the machine it names belongs to that learner, and answers
//! "not found" otherwise, so one learner can never see another's machine, terminal or
//! results.

mod identity;
mod learn;
mod operator;
pub mod pages;

pub use identity::{
    anonymous_learner, valid_learner, LearnerClaims, LinkClaims, Signer, ANONYMOUS_PREFIX,
};
pub use learn::{Link, LinkRefused, Session, Visitor};
pub use operator::{MachineUse, Overview};

use rnr_checker::{Checker, CheckerError};
use rnr_core::{CoreError, Platform};
use rnr_terminal::{Gateway, GatewayError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the UI refuses, and why; each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// Absent, or not this learner's: the two look the same from outside.
    #[error("{0} not found")]
    NotFound(String),
    #[error("machine {0} already has the longest lifetime the platform allows")]
    ExtendLimit(String),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// No learner session, or one this instance did not sign.
    #[error("{0}")]
    Unauthorized(String),
    #[error("the learner session expired at {0} (unix time): reload the page")]
    SessionExpired(i64),
    #[error(
        "anonymous learners are turned off on this platform ([ui] anonymous = false): open \
         the exercise through your learning platform's link"
    )]
    AnonymousDisabled,
    #[error("this learner session is for exercise {session:?}, not {asked:?}")]
    WrongExercise { session: String, asked: String },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Checker(#[from] CheckerError),
    #[error(transparent)]
    Terminal(#[from] GatewayError),
}

pub type Result<T, E = UiError> = std::result::Result<T, E>;

/// Settings of the web UI.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// How much time one press of "extend" adds to a learner's machine.
    pub extend: Duration,
    /// Lifetime of signed learner links when the request names none.
    pub link_ttl: Duration,
    /// External base URL (`https://labs.example.org`) for links; else taken from `Host`.
    pub public_url: Option<String>,
    /// Whether visitors without an LMS link get machines.
    pub anonymous: bool,
    /// Most anonymous machines creating or running for one client address; 0: no limit.
    pub max_anonymous_per_client: u64,
    /// Most anonymous machines creating or running in all; 0: no limit.
    pub max_anonymous: u64,
    /// Lifetime of a learner page's token (refreshed by the page while it is open).
    pub learner_token_ttl: Duration,
    /// Lifetime of an anonymous visitor's cookie: how long a browser keeps its machines.
    pub visitor_ttl: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            extend: Duration::from_secs(15 * 60),
            link_ttl: Duration::from_secs(24 * 3600),
            public_url: None,
            anonymous: true,
            max_anonymous_per_client: 5,
            max_anonymous: 50,
            learner_token_ttl: Duration::from_secs(4 * 3600),
            visitor_ttl: Duration::from_secs(30 * 86_400),
        }
    }
}

struct Inner {
    platform: Platform,
    checker: Checker,
    terminals: Gateway,
    signer: Signer,
    cfg: UiConfig,
    /// One creation at a time per learner, so two tabs opening an exercise at once share
    /// one machine.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last CPU sample per machine, to show CPU use as a rate.
    cpu_samples: Mutex<HashMap<String, (u64, std::time::Instant)>>,
}

/// The web UI; cheap to clone.
#[derive(Clone)]
pub struct Ui {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("config", &self.inner.cfg)
            .finish()
    }
}

impl Ui {
    /// The web UI; its signing secret is kept by the platform so sessions survive restarts.
    pub async fn new(
        platform: Platform,
        checker: Checker,
        terminals: Gateway,
        cfg: UiConfig,
    ) -> Result<Self> {
        let secret = platform.secret("web_secret").await?;
        Ok(Self {
            inner: Arc::new(Inner {
                platform,
                checker,
                terminals,
                signer: Signer::new(secret.as_bytes()),
                cfg,
                creating: Mutex::default(),
                cpu_samples: Mutex::default(),
            }),
        })
    }

    /// Signs and verifies learner sessions, links and operator sessions.
    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    pub fn config(&self) -> &UiConfig {
        &self.inner.cfg
    }

    /// The base of absolute links: the configured public URL, else `http://<host>`.
    pub fn base_url(&self, host: Option<&str>) -> String {
        match &self.inner.cfg.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", host.unwrap_or("localhost")),
        }
    }

    /// The terminal the pages show for `machine` (the same one across reloads, restarts and
    /// for the operator's read-only view), attached and with fresh tokens; URLs relative,
    /// as the pages and the terminal share an origin.
    async fn page_terminal(&self, machine: &str) -> Result<rnr_terminal::TerminalCreated> {
        let platform = &self.inner.platform;
        let known = match platform.page_terminal(machine).await? {
            // Closed through the API (its tokens revoked): the page gets a new one.
            Some(t) if self.inner.terminals.revoked(&t).await? => None,
            other => other,
        };
        let id = match known {
            Some(t) => t,
            None => {
                let t = format!("t-{}", rnr_core::random_id(12));
                platform.set_page_terminal(machine, &t).await?;
                t
            }
        };
        Ok(self
            .inner
            .terminals
            .open(machine, &id, rnr_terminal::CreateTerminal::default(), "")
            .await?)
    }
}
