//! The learner's side: the exercise index and page, signed links (full page and
//! `/embed/…`), and what the page asks for — a session (machine + terminal), a reset, more
//! time, check runs and their results. Every call names the learner it speaks for, and a
//! machine that is not theirs is "not found".

use crate::identity::{valid_learner, LinkClaims};
use crate::{pages, Result, Ui, UiError};
use rnr_checker::{CheckRunRow, Exercise};
use rnr_core::{CreateMachine, Machine, MachineState};
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

    /// The page of exercise `ex` for `learner` (its session token is in the page).
    pub fn exercise_page(&self, ex: &Exercise, learner: &str, mode: pages::Mode) -> String {
        pages::exercise(ex, &self.inner.signer.learner_token(learner), mode)
    }

    /// Machine `id` if it belongs to `learner`; "not found" otherwise, whether it exists or
    /// not.
    pub async fn owned(&self, learner: &str, id: &str) -> Result<Machine> {
        match self.inner.platform.get(id).await {
            Ok(m) if m.owner.as_deref() == Some(learner) => Ok(m),
            Ok(_) | Err(rnr_core::CoreError::NotFound(_)) => {
                Err(UiError::NotFound(format!("machine {id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The learner's running machine for `ex` (created, set up, if there is none) with its
    /// terminal.
    pub async fn open_session(&self, learner: &str, ex: Exercise) -> Result<Session> {
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
                let req = CreateMachine {
                    owner: Some(learner.to_string()),
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
    pub async fn reset(&self, learner: &str, id: &str) -> Result<Session> {
        let m = self.owned(learner, id).await?;
        let name = self
            .inner
            .platform
            .exercise_of(&m.id)
            .await?
            .ok_or_else(|| UiError::NotFound("exercise of this machine".into()))?;
        let ex = self.exercise(&name)?;
        self.inner.platform.delete(&m.id).await?;
        tracing::info!(machine = %m.id, exercise = %name, learner, "learner reset the machine");
        self.open_session(learner, ex).await
    }

    /// One press of "extend": the configured time more, or what is left of the platform's
    /// maximum lifetime.
    pub async fn extend(&self, learner: &str, id: &str) -> Result<Machine> {
        let m = self.owned(learner, id).await?;
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

    /// Queues a check run of the learner's machine `id`; returns the run's id.
    pub async fn start_checks(&self, learner: &str, id: &str) -> Result<String> {
        let m = self.owned(learner, id).await?;
        Ok(self.inner.checker.enqueue(&m.id, None, None).await?)
    }

    /// Check run `id`, if it is of one of the learner's machines.
    pub async fn check_run(&self, learner: &str, id: &str) -> Result<CheckRunRow> {
        let not_found = || UiError::NotFound(format!("check run {id}"));
        let run = self
            .inner
            .checker
            .get_run(id)
            .await
            .map_err(|_| not_found())?;
        self.owned(learner, &run.machine_id)
            .await
            .map_err(|_| not_found())?;
        Ok(run)
    }

    /// For an LMS: the machine of its learner `learner` for `exercise` (the running one, or
    /// a new one set up), owned by `lms:<learner>`, and a link to it valid for `ttl_seconds`
    /// (default: the configured link lifetime).
    pub async fn create_link(
        &self,
        learner: &str,
        exercise: &str,
        ttl_seconds: Option<u64>,
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
        let session = self.open_session(&learner, ex).await?;
        let claims = LinkClaims {
            learner,
            exercise: session.exercise.name.clone(),
            expires_at: now_s() + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
        };
        let token = self.inner.signer.link_token(&claims);
        Ok(Link {
            claims,
            token,
            session,
        })
    }

    /// The claims of a genuine, unexpired link; why not otherwise, as the page to show.
    pub fn verify_link(&self, token: &str) -> std::result::Result<LinkClaims, LinkRefused> {
        let claims = self
            .inner
            .signer
            .verify_link(token)
            .ok_or(LinkRefused::Invalid)?;
        if claims.expires_at <= now_s() {
            return Err(LinkRefused::Expired);
        }
        Ok(claims)
    }
}

/// Why a signed link opens nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefused {
    /// Not signed by this instance, or altered.
    Invalid,
    /// Past its expiry.
    Expired,
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
        }
    }
}
