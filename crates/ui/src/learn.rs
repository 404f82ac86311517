//! The learner's side: the exercise index and page, signed links (full page and
//! `/embed/…`), and what the page asks for — a session (machine + terminal), a reset, more
//! time, check runs and their results. Every call names the learner and exercise it
//! speaks for (a learner token), and a machine that is not theirs, or of another exercise,
//! is "not found".
//!
//! Anonymous learners can be turned off, and their machines are capped per client address
//! and overall; learners who came through an LMS link count against the quotas of the API
//! key that made it.

use crate::identity::{valid_learner, LearnerClaims, LinkClaims, ANONYMOUS_PREFIX};
use crate::{pages, Result, Ui, UiError};
use rnr_checker::{CheckRunRow, Exercise};
use rnr_core::{CreateMachine, Machine, MachineState, Quota, QuotaLimit};
use rnr_terminal::TerminalCreated;

/// Longest lifetime of a signed link.
const MAX_LINK_TTL_SECONDS: u64 = 30 * 24 * 3600;

fn now_s() -> i64 {
    rnr_core::now_ms() / 1000
}

/// A learner's machine for an exercise, with its terminal and latest results.
#[derive(Debug)]
pub struct Session {
    pub exercise: Exercise,
    pub machine: Machine,
    pub terminal: TerminalCreated,
    /// The machine's most recent finished check run.
    pub last_run: Option<CheckRunRow>,
}

/// An anonymous browser: who it is and the cookie that says so.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub learner: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The cookie's value, when it is new.
    pub new_cookie: Option<String>,
}

/// A signed link for an LMS learner, and the session it leads to.
#[derive(Debug)]
pub struct Link {
    /// The learner as the link names them (`lms:<the LMS's id>`).
    pub claims: LinkClaims,
    /// The signed token, for `/learn/{token}` and `/embed/{token}`.
    pub token: String,
    pub session: Session,
}

impl Ui {
    /// Exercise `name` from the checker's exercises dir.
    pub fn exercise(&self, name: &str) -> Result<Exercise> {
        Ok(self.inner.checker.exercise(name)?)
    }

    /// The exercise index page.
    pub fn index_page(&self) -> String {
        let mut list = Vec::new();
        if let Some(root) = self.inner.checker.exercises_dir() {
            for dir in rnr_checker::exercise::discover(root).unwrap_or_default() {
                if let Ok(ex) = Exercise::load(&dir) {
                    list.push((ex.name, ex.manifest.title, ex.manifest.tags));
                }
            }
        }
        list.sort();
        pages::index(&list)
    }

    /// The anonymous visitor a browser's cookie names, or a new one (with the cookie to
    /// set). Refused when anonymous learners are turned off.
    pub fn visitor(&self, cookie: Option<&str>) -> Result<Visitor> {
        if !self.inner.cfg.anonymous {
            return Err(UiError::AnonymousDisabled);
        }
        if let Some((learner, expires_at)) =
            cookie.and_then(|c| self.inner.signer.verify_visitor(c, now_s()))
        {
            return Ok(Visitor {
                learner,
                expires_at,
                new_cookie: None,
            });
        }
        let learner = crate::anonymous_learner();
        let expires_at = now_s() + secs(self.inner.cfg.visitor_ttl);
        Ok(Visitor {
            new_cookie: Some(self.inner.signer.visitor_token(&learner, expires_at)),
            learner,
            expires_at,
        })
    }

    /// A learner token for `learner` on `exercise`, never valid past `until`.
    pub fn learner_claims(
        &self,
        learner: &str,
        exercise: &str,
        until: i64,
        key: Option<String>,
    ) -> LearnerClaims {
        LearnerClaims {
            learner: learner.to_string(),
            exercise: exercise.to_string(),
            expires_at: (now_s() + secs(self.inner.cfg.learner_token_ttl)).min(until),
            until,
            key,
        }
    }

    /// The claims of a learner token that may be used now: genuine, unexpired, of an
    /// allowed kind of learner, and — for learners of an LMS link — of a key not revoked.
    pub async fn learner(&self, token: &str) -> Result<LearnerClaims> {
        let claims = self
            .inner
            .signer
            .verify_learner(token)
            .ok_or_else(|| UiError::Unauthorized("invalid learner session".into()))?;
        if claims.expires_at <= now_s() {
            return Err(UiError::SessionExpired(claims.expires_at));
        }
        if claims.anonymous() && !self.inner.cfg.anonymous {
            return Err(UiError::AnonymousDisabled);
        }
        if let Some(key) = &claims.key {
            if !self.inner.platform.api_key_active(key).await? {
                return Err(UiError::Unauthorized(format!(
                    "the API key {key} that made this learner's link was revoked"
                )));
            }
        }
        Ok(claims)
    }

    /// A fresh token for the same learner and exercise (the page asks before its own
    /// expires), valid no longer than the link or visitor cookie it came from.
    pub fn refresh(&self, claims: &LearnerClaims) -> (String, i64) {
        let fresh = self.learner_claims(
            &claims.learner,
            &claims.exercise,
            claims.until,
            claims.key.clone(),
        );
        (self.inner.signer.learner_token(&fresh), fresh.expires_at)
    }

    /// The page of exercise `ex` for the learner of `claims` (their token is in the page).
    pub fn exercise_page(
        &self,
        ex: &Exercise,
        claims: &LearnerClaims,
        mode: pages::Mode,
    ) -> String {
        pages::exercise(ex, &self.inner.signer.learner_token(claims), mode)
    }

    /// Machine `id` if it belongs to the learner and is of their token's exercise; "not
    /// found" otherwise, whether it exists or not.
    pub async fn owned(&self, claims: &LearnerClaims, id: &str) -> Result<Machine> {
        let not_found = || UiError::NotFound(format!("machine {id}"));
        let m = match self.inner.platform.get(id).await {
            Ok(m) if m.owner.as_deref() == Some(claims.learner.as_str()) => m,
            Ok(_) | Err(rnr_core::CoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        match self.inner.platform.exercise_of(id).await? {
            Some(e) if e == claims.exercise => Ok(m),
            _ => Err(not_found()),
        }
    }

    /// The quotas an anonymous learner's new machine must stay within.
    fn anonymous_quotas(&self, client: &str) -> Vec<QuotaLimit> {
        let cfg = &self.inner.cfg;
        let mut q = Vec::new();
        if cfg.max_anonymous_per_client > 0 {
            let max = cfg.max_anonymous_per_client;
            q.push(QuotaLimit {
                quota: Quota::OwnerPrefixActive {
                    prefix: ANONYMOUS_PREFIX.into(),
                    client: Some(client.to_string()),
                    max,
                },
                what: format!("your address ({client}) already has {max} anonymous machines"),
                setting: format!(
                    "the most per address is {max} ([ui] max_anonymous_per_client = {max})"
                ),
            });
        }
        if cfg.max_anonymous > 0 {
            let max = cfg.max_anonymous;
            q.push(QuotaLimit {
                quota: Quota::OwnerPrefixActive {
                    prefix: ANONYMOUS_PREFIX.into(),
                    client: None,
                    max,
                },
                what: format!("{max} anonymous machines are running"),
                setting: format!("the most in all is {max} ([ui] max_anonymous = {max})"),
            });
        }
        q
    }

    /// The learner's running machine for `ex` (created, set up, if there is none) with its
    /// terminal; `client` is the address the request came from.
    pub async fn open_session(
        &self,
        claims: &LearnerClaims,
        ex: Exercise,
        client: Option<&str>,
    ) -> Result<Session> {
        if claims.exercise != ex.name {
            return Err(UiError::WrongExercise {
                session: claims.exercise.clone(),
                asked: ex.name,
            });
        }
        if claims.anonymous() && !self.inner.cfg.anonymous {
            return Err(UiError::AnonymousDisabled);
        }
        let learner = claims.learner.as_str();
        let lock = self
            .inner
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(learner.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let platform = &self.inner.platform;
        let machine = match platform.learner_machine(learner, &ex.name).await? {
            Some(m) if m.state == MachineState::Running => m,
            _ => {
                let client = client.unwrap_or("unknown");
                let req = CreateMachine {
                    owner: Some(learner.to_string()),
                    api_key_id: claims.key.clone(),
                    client_addr: Some(client.to_string()),
                    quotas: if claims.anonymous() {
                        self.anonymous_quotas(client)
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                };
                let m = self.inner.checker.create_machine(req, &ex.name).await?;
                tracing::info!(machine = %m.id, exercise = %ex.name, learner, "learner machine created");
                m
            }
        };
        let terminal = self.page_terminal(&machine.id).await?;
        let last_run = self.inner.checker.last_run(&machine.id).await?;
        Ok(Session {
            exercise: ex,
            machine,
            terminal,
            last_run,
        })
    }

    /// A fresh machine for the exercise of the learner's machine `id`, which is deleted.
    pub async fn reset(
        &self,
        claims: &LearnerClaims,
        id: &str,
        client: Option<&str>,
    ) -> Result<Session> {
        let m = self.owned(claims, id).await?;
        let ex = self.exercise(&claims.exercise)?;
        self.inner.platform.delete(&m.id).await?;
        tracing::info!(machine = %m.id, exercise = %ex.name, learner = %claims.learner, "learner reset the machine");
        self.open_session(claims, ex, client).await
    }

    /// One press of "extend": the configured time more, or what is left of the platform's
    /// maximum lifetime.
    pub async fn extend(&self, claims: &LearnerClaims, id: &str) -> Result<Machine> {
        let m = self.owned(claims, id).await?;
        if m.state != MachineState::Running {
            return Err(rnr_core::CoreError::NotRunning {
                id: m.id,
                state: m.state.as_str().into(),
            }
            .into());
        }
        let platform = &self.inner.platform;
        let room = platform.extension_room(&m);
        if room.is_zero() {
            return Err(UiError::ExtendLimit(m.id));
        }
        Ok(platform
            .extend(&m.id, self.inner.cfg.extend.min(room))
            .await?)
    }

    /// Queues a check run of the learner's machine `id`, or joins the one already queued
    /// (a learner's presses never pile up runs); returns the run's id.
    pub async fn start_checks(&self, claims: &LearnerClaims, id: &str) -> Result<String> {
        let m = self.owned(claims, id).await?;
        Ok(self.inner.checker.enqueue_for_learner(&m.id).await?)
    }

    /// Check run `id`, if it is of the learner's machine for their exercise.
    pub async fn check_run(&self, claims: &LearnerClaims, id: &str) -> Result<CheckRunRow> {
        let not_found = || UiError::NotFound(format!("check run {id}"));
        let run = self
            .inner
            .checker
            .get_run(id)
            .await
            .map_err(|_| not_found())?;
        self.owned(claims, &run.machine_id)
            .await
            .map_err(|_| not_found())?;
        Ok(run)
    }

    /// For an LMS: the machine of its learner `learner` for `exercise` (the running one, or
    /// a new one set up), owned by `lms:<learner>`, and a link to it valid for `ttl_seconds`
    /// (default: the configured link lifetime). `key` is the API key asking: the learner's
    /// machines count against its quotas, and revoking it ends the link.
    pub async fn create_link(
        &self,
        learner: &str,
        exercise: &str,
        ttl_seconds: Option<u64>,
        key: Option<&str>,
    ) -> Result<Link> {
        if !valid_learner(learner) || learner.len() > 90 {
            return Err(UiError::Invalid {
                field: "learner".into(),
                message: "1 to 90 letters, digits or _@.:- characters".into(),
            });
        }
        let ttl = ttl_seconds.unwrap_or(self.inner.cfg.link_ttl.as_secs());
        if ttl == 0 || ttl > MAX_LINK_TTL_SECONDS {
            return Err(UiError::Invalid {
                field: "ttl_seconds".into(),
                message: format!("between 1 and {MAX_LINK_TTL_SECONDS}"),
            });
        }
        let ex = self.exercise(exercise)?;
        // Namespaced so an LMS's learner ids can never collide with anonymous sessions.
        let learner = format!("lms:{learner}");
        let expires_at = now_s() + i64::try_from(ttl).unwrap_or(i64::MAX / 2);
        let key = key.map(str::to_string);
        let as_learner = self.learner_claims(&learner, &ex.name, expires_at, key.clone());
        let session = self.open_session(&as_learner, ex, None).await?;
        let claims = LinkClaims {
            learner,
            exercise: session.exercise.name.clone(),
            expires_at,
            key,
        };
        let token = self.inner.signer.link_token(&claims);
        Ok(Link {
            claims,
            token,
            session,
        })
    }

    /// The claims of a genuine, unexpired link of an API key not revoked; why not
    /// otherwise, as the page to show.
    pub async fn verify_link(&self, token: &str) -> std::result::Result<LinkClaims, LinkRefused> {
        let claims = self
            .inner
            .signer
            .verify_link(token)
            .ok_or(LinkRefused::Invalid)?;
        if claims.expires_at <= now_s() {
            return Err(LinkRefused::Expired);
        }
        if let Some(key) = &claims.key {
            if !self
                .inner
                .platform
                .api_key_active(key)
                .await
                .unwrap_or(false)
            {
                return Err(LinkRefused::Revoked);
            }
        }
        Ok(claims)
    }

    /// The learner token a link's page holds.
    pub fn link_learner(&self, link: &LinkClaims) -> LearnerClaims {
        self.learner_claims(
            &link.learner,
            &link.exercise,
            link.expires_at,
            link.key.clone(),
        )
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Why a signed link opens nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefused {
    /// Not signed by this instance, or altered.
    Invalid,
    /// Past its expiry.
    Expired,
    /// The API key that made it was revoked.
    Revoked,
}

impl LinkRefused {
    /// The page's title and text.
    pub fn page(self) -> String {
        match self {
            Self::Invalid => {
                pages::error_page("Invalid link", "This link is not valid. Ask for a new one.")
            }
            Self::Expired => {
                pages::error_page("Link expired", "This link has expired. Ask for a new one.")
            }
            Self::Revoked => pages::error_page(
                "Link revoked",
                "The learning platform that made this link can no longer give access. Ask it for a new one.",
            ),
        }
    }
}
