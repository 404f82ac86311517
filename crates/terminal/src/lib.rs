//! The terminal gateway (Kaylee): a root shell in the browser that survives page reloads,
//! dropped networks and gateway restarts. A library: the HTTP layer (rnr-http) routes
//! requests here and hands over each browser's upgraded WebSocket connection.
//!
//! The shell lives in an agent session inside the machine (reached through the driver's
//! agent channel), which owns the pty and a screen model; the gateway only relays. A browser proves what
//! it may do with a short-lived HMAC token bound to one terminal and one machine (owner or
//! read-only viewer); the token alone is enough to find the terminal again after a restart.
//! The wire protocol is in docs/terminal-protocol.md.

pub mod client;
mod deflate;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod pty;
mod record;
mod terminal;
pub mod token;
mod ws;

pub use deflate::{negotiate as negotiate_deflate, RESPONSE as DEFLATE_RESPONSE};
pub use error::GatewayError;
pub use token::{Claims, Role, Signer};
pub use ws::Opened;

use rnr_core::{MachineState, Platform};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terminal::{Closed, Terminal};

/// WebSocket close codes the gateway uses (4000–4999 are the application's range).
pub mod close {
    /// Normal end: the client went away or the gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame the protocol does not allow (e.g. a compressed frame without
    /// permessage-deflate, or on a control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A compressed message that does not inflate.
    pub const INVALID_DATA: u16 = 1007;
    /// A message over the input limit, compressed or inflated.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected failure inside the gateway.
    pub const INTERNAL: u16 = 1011;
    /// A control message that is not in the protocol.
    pub const BAD_MESSAGE: u16 = 4000;
    pub const TOKEN_INVALID: u16 = 4001;
    /// The token is past its expiry: ask the API for a new one.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The terminal was closed through the API: its tokens are revoked.
    pub const TOKEN_REVOKED: u16 = 4003;
    /// The machine was deleted, expired or stopped.
    pub const MACHINE_GONE: u16 = 4004;
    /// No input for the idle timeout; the session was ended.
    pub const IDLE_TIMEOUT: u16 = 4008;
    /// The shell exited (e.g. the learner typed `exit`).
    pub const SESSION_ENDED: u16 = 4010;
    /// The agent could not start or reach the session.
    pub const AGENT_UNAVAILABLE: u16 = 4011;
    /// The connection to the session broke; reconnecting re-attaches.
    pub const SESSION_LOST: u16 = 4012;
    /// The machine already has the most terminals allowed.
    pub const LIMIT_REACHED: u16 = 4029;
    /// No pong within the ping timeout.
    pub const PING_TIMEOUT: u16 = 4408;

    /// Close reasons must fit in a control frame (123 bytes).
    pub fn reason(s: &str) -> String {
        let mut end = s.len().min(120);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    }
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Lifetime of a token; connected clients are sent fresh ones well before it ends.
    pub token_ttl: Duration,
    /// A session with no input for this long is ended.
    pub idle_timeout: Duration,
    /// Open terminals per machine.
    pub max_per_machine: usize,
    /// Origins (`scheme://host[:port]`) besides the gateway's own that may open terminals;
    /// `*` allows any.
    pub allowed_origins: Vec<String>,
    pub ping_interval: Duration,
    /// A client that has not answered for this long is dropped.
    pub ping_timeout: Duration,
    /// Where asciicast recordings are kept.
    pub recordings_dir: PathBuf,
    /// Largest recording; past it, recording stops with a marker and the terminal goes on.
    pub max_recording_bytes: u64,
}

/// The `[terminal]` section of rnr's configuration file (env `RNR_TERMINAL__<KEY>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalSettings {
    pub token_ttl_seconds: u64,
    pub idle_seconds: u64,
    pub max_per_machine: usize,
    /// Origins besides the gateway's own whose pages may open terminals; "*" for any.
    pub allowed_origins: Vec<String>,
    pub ping_seconds: u64,
    /// Largest asciicast recording in bytes; past it, recording stops with a marker (the
    /// terminal goes on).
    pub max_recording_bytes: u64,
}

impl Default for TerminalSettings {
    fn default() -> Self {
        Self {
            token_ttl_seconds: 900,
            idle_seconds: 1800,
            max_per_machine: 8,
            allowed_origins: Vec::new(),
            ping_seconds: 10,
            max_recording_bytes: 64 << 20,
        }
    }
}

impl GatewayConfig {
    pub fn new(s: &TerminalSettings, data_dir: &std::path::Path) -> Self {
        let ping = s.ping_seconds.max(1);
        Self {
            token_ttl: Duration::from_secs(s.token_ttl_seconds.max(1)),
            idle_timeout: Duration::from_secs(s.idle_seconds.max(1)),
            max_per_machine: s.max_per_machine,
            allowed_origins: s
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            ping_interval: Duration::from_secs(ping),
            ping_timeout: Duration::from_secs(ping * 3),
            recordings_dir: data_dir.join("recordings"),
            max_recording_bytes: s.max_recording_bytes,
        }
    }
}

/// Called with a machine id on its owner's input.
type ActivityHook = Box<dyn Fn(&str) + Send + Sync>;

struct Inner {
    platform: Platform,
    signer: Signer,
    cfg: GatewayConfig,
    terminals: Mutex<HashMap<String, Arc<Terminal>>>,
    /// One attach at a time per terminal id, so two reconnecting tabs share one session.
    attaching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Told of the owner's input per machine (live checking re-runs checks after it).
    on_activity: std::sync::OnceLock<ActivityHook>,
}

/// The gateway: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateway")
    }
}

/// Body of `POST /api/v1/machines/{id}/terminals`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTerminal {
    /// Record the session as asciicast v2.
    #[serde(default)]
    pub record: bool,
    /// Initial height in rows (1–1000, default 24); the client resizes once connected.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    /// Initial width in columns (1–1000, default 80).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
}

/// A terminal and the tokens to reach it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TerminalCreated {
    /// Terminal id, `t-…`.
    pub id: String,
    pub machine_id: String,
    /// Owner token: type, resize.
    pub token: String,
    /// Read-only token for viewers.
    pub viewer_token: String,
    /// Unix seconds after which both tokens are refused.
    pub expires_at: i64,
    /// `ws(s)://host/ws/terminals/{id}?token=<token>`: the WebSocket for the owner.
    pub ws_url: String,
    /// The same WebSocket with the viewer token: output only, input is dropped.
    pub viewer_ws_url: String,
    /// The page with the terminal, for a browser.
    pub page_url: String,
    /// The page with the read-only terminal.
    pub viewer_page_url: String,
    /// Whether the session is recorded (`GET /api/v1/terminals/{id}/recording`).
    pub recording: bool,
}

fn now_s() -> i64 {
    rnr_core::now_ms() / 1000
}

impl Gateway {
    /// A gateway whose token secret lives in the store, so tokens survive restarts.
    pub async fn new(platform: Platform, cfg: GatewayConfig) -> Result<Self, GatewayError> {
        let secret = platform.secret("terminal_token_secret").await?;
        let gw = Self {
            inner: Arc::new(Inner {
                platform,
                signer: Signer::new(secret.as_bytes()),
                cfg,
                terminals: Mutex::new(HashMap::new()),
                attaching: Mutex::new(HashMap::new()),
                on_activity: std::sync::OnceLock::new(),
            }),
        };
        gw.spawn_idle_sweeper();
        // A deleted machine's terminals end and their recordings go with it.
        let weak = Arc::downgrade(&gw.inner);
        gw.inner.platform.on_delete(move |machine| {
            let weak = weak.clone();
            async move {
                if let Some(inner) = weak.upgrade() {
                    Gateway { inner }.machine_deleted(&machine).await;
                }
            }
        });
        Ok(gw)
    }

    /// The terminals attached to machine `machine` now.
    fn attached_to(&self, machine: &str) -> Vec<Arc<Terminal>> {
        self.inner
            .terminals
            .lock()
            .expect("terminals lock")
            .values()
            .filter(|t| t.machine == machine)
            .cloned()
            .collect()
    }

    /// Ends machine `machine`'s live terminals and deletes their recordings.
    async fn machine_deleted(&self, machine: &str) {
        for t in self.attached_to(machine) {
            t.kill(Closed {
                code: close::MACHINE_GONE,
                reason: format!("machine {machine} was deleted"),
            })
            .await;
        }
        let recorded = match self.inner.platform.terminals_of(machine).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(machine, error = %e, "cannot list the terminals of a deleted machine");
                return;
            }
        };
        for t in recorded {
            let file = record::path(&self.inner.cfg.recordings_dir, &t.id);
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {
                    tracing::info!(machine, terminal = %t.id, "recording deleted with its machine")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(machine, file = %file.display(), error = %e, "cannot delete a recording")
                }
            }
        }
    }

    /// Calls `f(machine_id)` on every burst of the owner's input (it must be cheap: the
    /// checker only notes the time and debounces). Only the first hook set counts.
    pub fn on_activity(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.inner.on_activity.set(Box::new(f));
    }

    pub(crate) fn activity(&self, machine: &str) {
        if let Some(f) = self.inner.on_activity.get() {
            f(machine);
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.cfg
    }

    fn spawn_idle_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.cfg.idle_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let idle_ms = inner.cfg.idle_timeout.as_millis() as i64;
                let now = rnr_core::now_ms();
                let idle: Vec<Arc<Terminal>> = inner
                    .terminals
                    .lock()
                    .expect("terminals lock")
                    .values()
                    .filter(|t| {
                        now - t.last_active.load(std::sync::atomic::Ordering::Relaxed) > idle_ms
                    })
                    .cloned()
                    .collect();
                for t in idle {
                    tracing::info!(terminal = %t.id, machine = %t.machine, "ending idle terminal");
                    t.kill(Closed {
                        code: close::IDLE_TIMEOUT,
                        reason: format!(
                            "idle for {} s; the session was ended",
                            inner.cfg.idle_timeout.as_secs()
                        ),
                    })
                    .await;
                }
            }
        });
    }

    fn sign(&self, terminal: &str, machine: &str, role: Role) -> (String, i64) {
        let exp = now_s() + self.inner.cfg.token_ttl.as_secs() as i64;
        let tok = self.inner.signer.sign(&Claims {
            terminal: terminal.into(),
            machine: machine.into(),
            role,
            expires_at: exp,
        });
        (tok, exp)
    }

    /// The claims of a genuine, unexpired token of terminal `terminal` whose tokens were
    /// not revoked (`DELETE /api/v1/terminals/{id}`).
    pub async fn verify(&self, token: &str, terminal: &str) -> Result<Claims, GatewayError> {
        let claims = self.inner.signer.verify(token, terminal, now_s())?;
        match self.inner.platform.terminal(terminal).await? {
            Some(t) if t.revoked_at.is_some() => Err(GatewayError::TokenRevoked(terminal.into())),
            _ => Ok(claims),
        }
    }

    /// Whether terminal `id`'s tokens were revoked.
    pub async fn revoked(&self, id: &str) -> Result<bool, GatewayError> {
        Ok(self
            .inner
            .platform
            .terminal(id)
            .await?
            .is_some_and(|t| t.revoked_at.is_some()))
    }

    async fn running_machine(&self, machine: &str) -> Result<(), GatewayError> {
        let m = match self.inner.platform.get(machine).await {
            Ok(m) => m,
            Err(rnr_core::CoreError::NotFound(_)) => {
                return Err(GatewayError::MachineNotFound(machine.into()))
            }
            Err(e) => return Err(e.into()),
        };
        if m.state != MachineState::Running {
            return Err(GatewayError::MachineNotRunning {
                machine: machine.into(),
                state: m.state.as_str().into(),
            });
        }
        Ok(())
    }

    fn live(&self, id: &str) -> Option<Arc<Terminal>> {
        let mut map = self.inner.terminals.lock().expect("terminals lock");
        match map.get(id) {
            Some(t) if t.closed().is_none() => Some(t.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Attaches terminal `id` (new, or after a restart) unless it is already attached.
    async fn attach(
        &self,
        id: &str,
        machine: &str,
        size: (u16, u16),
        record: bool,
    ) -> Result<Arc<Terminal>, GatewayError> {
        if let Some(t) = self.live(id) {
            return Ok(t);
        }
        let lock = self
            .inner
            .attaching
            .lock()
            .expect("attaching lock")
            .entry(id.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(t) = self.live(id) {
            return Ok(t);
        }
        self.running_machine(machine).await?;
        // An ended terminal (closed through the API, idle) frees its place at once, not
        // when its session's link has wound down.
        let open = self
            .attached_to(machine)
            .iter()
            .filter(|t| t.closed().is_none())
            .count();
        if open >= self.inner.cfg.max_per_machine {
            return Err(GatewayError::LimitReached {
                machine: machine.into(),
                limit: self.inner.cfg.max_per_machine,
            });
        }
        let file = record::path(&self.inner.cfg.recordings_dir, id);
        // A terminal created with recording on keeps recording after a gateway restart.
        let recorder = if record || file.exists() {
            Some(
                record::Recorder::start(file, size.0, size.1, self.inner.cfg.max_recording_bytes)
                    .await
                    .map_err(|source| GatewayError::Recording {
                        terminal: id.into(),
                        source,
                    })?,
            )
        } else {
            None
        };
        let weak = Arc::downgrade(&self.inner);
        let t = Terminal::attach(
            self.inner.platform.clone(),
            id,
            machine,
            size,
            recorder,
            move |id| {
                if let Some(inner) = weak.upgrade() {
                    let mut map = inner.terminals.lock().expect("terminals lock");
                    // Only the ended terminal: a newer attach of the same id stays.
                    if map.get(id).is_some_and(|t| t.closed().is_some()) {
                        map.remove(id);
                    }
                }
            },
        )
        .await?;
        self.inner
            .terminals
            .lock()
            .expect("terminals lock")
            .insert(id.to_string(), t.clone());
        Ok(t)
    }

    /// Creates a terminal on a running machine and returns its tokens; `base` is the
    /// gateway's external `http(s)://host[:port]`.
    pub async fn create(
        &self,
        machine: &str,
        req: CreateTerminal,
        base: &str,
    ) -> Result<TerminalCreated, GatewayError> {
        let id = format!("t-{}", rnr_core::random_id(12));
        self.open(machine, &id, req, base).await
    }

    /// Tokens and URLs for terminal `id` on `machine`, attaching it first if it is not
    /// attached (new, or after a gateway restart). A learner's page reloaded hours later
    /// gets the same shell with fresh tokens this way.
    pub async fn open(
        &self,
        machine: &str,
        id: &str,
        req: CreateTerminal,
        base: &str,
    ) -> Result<TerminalCreated, GatewayError> {
        if let Some(t) = self.live(id) {
            if t.machine != machine {
                return Err(GatewayError::TerminalNotFound(id.into()));
            }
        }
        match self.inner.platform.terminal(id).await? {
            // A closed terminal stays closed: its tokens are revoked, and so would be new
            // ones.
            Some(t) if t.revoked_at.is_some() || t.machine_id != machine => {
                return Err(GatewayError::TerminalNotFound(id.into()))
            }
            Some(_) => {}
            None => {
                self.running_machine(machine).await?;
                self.inner.platform.add_terminal(id, machine).await?;
            }
        }
        let size = (
            req.rows.unwrap_or(24).clamp(1, 1000),
            req.cols.unwrap_or(80).clamp(1, 1000),
        );
        self.attach(id, machine, size, req.record).await?;
        let id = id.to_string();
        let (token, expires_at) = self.sign(&id, machine, Role::Owner);
        let (viewer_token, _) = self.sign(&id, machine, Role::Viewer);
        let ws_base = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        Ok(TerminalCreated {
            ws_url: format!("{ws_base}/ws/terminals/{id}?token={token}"),
            viewer_ws_url: format!("{ws_base}/ws/terminals/{id}?token={viewer_token}"),
            page_url: format!("{base}/terminals/{id}?token={token}"),
            viewer_page_url: format!("{base}/terminals/{id}?token={viewer_token}"),
            id,
            machine_id: machine.into(),
            token,
            viewer_token,
            expires_at,
            recording: req.record,
        })
    }

    /// Ends terminal `id`'s session and revokes its tokens: its connected clients are
    /// closed (4010) and every later use of its owner and viewer tokens is refused (4003
    /// on the socket). Refused for a terminal never opened, or one already closed.
    pub async fn kill(&self, id: &str) -> Result<(), GatewayError> {
        let live = self.live(id);
        let revoked = self.inner.platform.revoke_terminal(id).await?;
        if live.is_none() && !revoked {
            return Err(GatewayError::TerminalNotFound(id.into()));
        }
        if let Some(t) = live {
            t.kill(Closed {
                code: close::SESSION_ENDED,
                reason: "the terminal was closed through the API; its tokens are revoked".into(),
            })
            .await;
        }
        tracing::info!(terminal = id, "terminal closed and its tokens revoked");
        Ok(())
    }

    /// Open terminals (for tests and metrics).
    pub fn open_terminals(&self) -> usize {
        self.inner.terminals.lock().expect("terminals lock").len()
    }

    /// Whether a page at `origin` (the request's `Origin`, absent for non-browsers) may
    /// open a socket on this gateway, reached as `host`: its own origin, or one listed in
    /// `[terminal] allowed_origins`.
    pub fn origin_allowed(&self, origin: Option<&str>, host: &str) -> Result<(), GatewayError> {
        let Some(origin) = origin else {
            // Not a browser: the token is the whole authorisation.
            return Ok(());
        };
        let origin = origin.trim_end_matches('/');
        let own = origin
            .split_once("://")
            .is_some_and(|(_, h)| !host.is_empty() && h.eq_ignore_ascii_case(host));
        let listed = self
            .inner
            .cfg
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
        if own || listed {
            Ok(())
        } else {
            Err(GatewayError::OriginRejected(origin.into()))
        }
    }

    /// The asciicast v2 recording of terminal `id` (one opened with `record: true`).
    pub async fn recording(&self, id: &str) -> Result<Vec<u8>, GatewayError> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(GatewayError::TerminalNotFound(id.into()));
        }
        tokio::fs::read(record::path(&self.inner.cfg.recordings_dir, id))
            .await
            .map_err(|source| GatewayError::Recording {
                terminal: id.into(),
                source,
            })
    }
}
