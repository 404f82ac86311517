//! One terminal: the gateway's end of an agent session (a link the agent channel opened to
//! the session's daemon, speaking `rnr_agent_proto::session` frames) and the browsers
//! watching it.
//!
//! One task per terminal reads the agent's frames and hands output to clients; whoever has
//! something for the agent (input, a resize, a snapshot request) writes it to the exec's
//! stdin directly, under a lock, so a keystroke crosses no extra task on its way.
//!
//! Where the channel carries descriptors (the native driver), the daemon hands over its pty
//! right after the hello ("direct mode"): the same task then reads the shell's output from
//! the pty itself and sends the daemon a copy for its screen model, and keystrokes go
//! straight into the pty. Copies, snapshot requests and client registrations are ordered
//! by the lock on the daemon's stdin, so a new client's snapshot holds exactly the output
//! read before it was asked for, and what is read after waits in the client's backlog.
//! Copies leave in batches ([`AgentLink`]), never on a keystroke's way to the browser.
//!
//! Owners get
//! backpressure (the reader waits for a full owner's small channel, the agent then stops
//! reading the pty, the shell blocks): nothing queues without bound. Viewers never slow
//! the owner: one that falls behind is skipped and later repainted from a fresh snapshot.

use crate::pty::Pty;
use crate::record::Recorder;
use crate::token::Role;
use crate::GatewayError;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use rnr_agent_proto::frame;
use rnr_agent_proto::session::{FromDaemon, ToDaemon, MAX_FROM_DAEMON, T_COPY};
use rnr_driver::agent::{ChunkStream, FdInbox};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// Largest frame taken from the machine side (a snapshot of a 1000×1000 screen fits);
/// anything larger is an attack or a bug and ends the terminal.
const MAX_FRAME: usize = MAX_FROM_DAEMON;
/// Per-client queue of output chunks (each ≤ 32 KiB from the agent).
pub const CLIENT_QUEUE: usize = 8;
/// Largest input message accepted from a browser.
pub const MAX_INPUT: usize = 64 * 1024;
/// Output held for a client whose snapshot is on its way (direct mode); beyond it the
/// client is repainted from a later snapshot instead.
const MAX_BACKLOG: usize = 256 * 1024;
/// Most output gathered into one copy for the daemon: under the daemon's frame limit (64
/// KiB), and large enough that bulk output wakes it once per many pty reads.
const COPY_BATCH: usize = 60 * 1024;
/// How long a copy may wait for more output. Short: if the gateway dies, what it read
/// but had not copied yet is missing from the screen the daemon repaints.
const COPY_DELAY: Duration = Duration::from_millis(2);

/// Why a terminal's clients are being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

enum Sync {
    /// Waiting for the snapshot with this tag; output before it is in the snapshot.
    Waiting(u32),
    Live,
    /// Skipped output; needs a snapshot once its queue has room.
    Lagging,
}

struct Client {
    id: u64,
    role: Role,
    tx: mpsc::Sender<Bytes>,
    sync: Sync,
    /// Direct mode, while waiting: output read after the snapshot was asked for.
    backlog: BytesMut,
}

pub struct Terminal {
    pub id: String,
    pub machine: String,
    pub shell_pid: AtomicU32,
    size: Mutex<(u16, u16)>,
    /// The exec's stdin: frames for the agent, written whole under this lock.
    to_agent: tokio::sync::Mutex<AgentLink>,
    clients: Mutex<Vec<Client>>,
    /// The pty, once the daemon has handed it over (direct mode).
    pty: Mutex<Option<Arc<Pty>>>,
    /// Keeps one input message whole in the pty.
    pty_in: tokio::sync::Mutex<()>,
    next_client: AtomicU64,
    next_tag: AtomicU32,
    /// Milliseconds since the Unix epoch of the last input or attach.
    pub last_active: AtomicI64,
    closed_tx: watch::Sender<Option<Closed>>,
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Terminal({} on {})", self.id, self.machine)
    }
}

/// The gateway's end of the daemon's connection. In direct mode the output's copies wait
/// in `copies` (one T_COPY frame being filled) and leave ahead of any other frame, so the
/// daemon still sees output, snapshot requests and resizes in the order the gateway did,
/// with one wake-up per batch instead of one per pty read.
struct AgentLink {
    w: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    copies: BytesMut,
}

impl AgentLink {
    /// Adds output to the pending copy, sending the batch first if it would overflow.
    /// Returns whether this started a new batch (which is then due in [`COPY_DELAY`]).
    async fn copy(&mut self, data: &[u8]) -> bool {
        if !self.copies.is_empty() && self.copies.len() + data.len() > COPY_BATCH {
            self.write(&[]).await;
        }
        let fresh = self.copies.is_empty();
        if fresh {
            // Bulk output fills a batch: room for all of it at once, no regrowing.
            let room = if data.len() >= 4096 {
                COPY_BATCH
            } else {
                data.len()
            };
            self.copies.reserve(frame::HEADER + room);
            self.copies.extend_from_slice(&frame::header(T_COPY, 0));
        }
        self.copies.extend_from_slice(data);
        fresh
    }

    /// Writes the pending copy, then `frames`. A failed write needs no answer here: the
    /// session's end reaches every client through the reader.
    async fn write(&mut self, frames: &[u8]) {
        let out: &[u8] = if self.copies.is_empty() {
            frames
        } else {
            let len = self.copies.len() - frame::HEADER;
            self.copies[..frame::HEADER].copy_from_slice(&frame::header(T_COPY, len));
            self.copies.extend_from_slice(frames);
            &self.copies
        };
        if !out.is_empty() && self.w.write_all(out).await.is_ok() {
            let _ = self.w.flush().await;
        }
        // Let go of the buffer: idle terminals keep none.
        self.copies = BytesMut::new();
    }
}

/// A client's subscription: its output queue and the terminal's closing signal.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Bytes>,
    pub closed: watch::Receiver<Option<Closed>>,
}

impl Terminal {
    /// Attaches to (or starts) the agent session `id` in `machine` and waits for its hello.
    pub async fn attach(
        platform: rnr_core::Platform,
        id: &str,
        machine: &str,
        size: (u16, u16),
        recorder: Option<Recorder>,
        on_end: impl FnOnce(&str) + Send + 'static,
    ) -> Result<Arc<Self>, GatewayError> {
        let agent_err = |message: String| GatewayError::Agent {
            terminal: id.to_string(),
            machine: machine.to_string(),
            message,
        };
        let channel = match platform.agent(machine).await {
            Ok(c) => c,
            Err(rnr_core::CoreError::NotRunning { state, .. }) => {
                return Err(GatewayError::MachineNotRunning {
                    machine: machine.to_string(),
                    state,
                })
            }
            Err(e) => {
                return Err(agent_err(format!(
                    "{e} (is the agent mounted at {}? set agent_path / RNR_AGENT_PATH)",
                    rnr_driver::AGENT_PATH
                )))
            }
        };
        let link = channel
            .session(id, size.0, size.1)
            .await
            .map_err(|e| agent_err(e.to_string()))?;
        let mut output = link.output;
        let mut reader = FrameReader::default();
        let hello = tokio::time::timeout(Duration::from_secs(10), reader.next(&mut output))
            .await
            .map_err(|_| agent_err("no answer from the session within 10 s".into()))?
            .map_err(agent_err)?;
        let hello = match FromDaemon::parse(hello.0, &hello.1) {
            Ok(FromDaemon::Hello(h)) => h,
            _ => return Err(agent_err("unexpected first frame from the session".into())),
        };
        let pid = hello.shell_pid;
        let mut stdin = link.input;
        let passed_fds = link.fds.filter(|_| hello.direct);
        if passed_fds.is_some() {
            stdin
                .write_all(&ToDaemon::DirectReq.encode())
                .await
                .map_err(|e| agent_err(format!("asking for the pty: {e}")))?;
        }
        let keep = link.keep;
        let (closed_tx, _) = watch::channel(None);
        let term = Arc::new(Self {
            id: id.to_string(),
            machine: machine.to_string(),
            shell_pid: AtomicU32::new(pid),
            size: Mutex::new(size),
            to_agent: tokio::sync::Mutex::new(AgentLink {
                w: stdin,
                copies: BytesMut::new(),
            }),
            clients: Mutex::new(Vec::new()),
            pty: Mutex::new(None),
            pty_in: tokio::sync::Mutex::new(()),
            next_client: AtomicU64::new(1),
            next_tag: AtomicU32::new(1),
            last_active: AtomicI64::new(rnr_core::now_ms()),
            closed_tx,
            recorder,
        });
        let t = term.clone();
        tokio::spawn(async move {
            let mut end = t.pump(&mut output, &mut reader, passed_fds).await;
            t.pty.lock().expect("pty lock").take();
            // Ends only this link (and whatever carries it): the session lives on in its
            // daemon.
            drop(keep);
            if end.code == crate::close::SESSION_LOST && machine_gone(&platform, &t.machine).await {
                end = Closed {
                    code: crate::close::MACHINE_GONE,
                    reason: format!("machine {} is gone", t.machine),
                };
            }
            // A reason given by kill() (idle, machine gone) wins over the exec's end.
            t.closed_tx.send_if_modified(|c| {
                if c.is_none() {
                    *c = Some(end);
                    true
                } else {
                    false
                }
            });
            on_end(&t.id);
        });
        Ok(term)
    }

    /// Reads the agent's frames, and the pty once handed over, until the session or the
    /// exec ends.
    async fn pump(
        &self,
        output: &mut ChunkStream,
        reader: &mut FrameReader,
        fds: Option<FdInbox>,
    ) -> Closed {
        let mut pty: Option<Arc<Pty>> = None;
        // When the pending copy for the daemon is due. One timer, reset per batch: a fresh
        // one per turn of the loop would be registered and dropped on every pty read.
        let copy_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(copy_timer);
        let mut copy_pending = false;
        loop {
            let frame = tokio::select! {
                f = reader.next(output) => f,
                r = async { pty.as_ref().expect("guarded by the select").read().await },
                    if pty.is_some() =>
                {
                    match r {
                        Ok(Some(chunk)) => {
                            if self.output_direct(chunk).await {
                                copy_timer
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + COPY_DELAY);
                                copy_pending = true;
                            }
                        }
                        // The shell's side closed: the daemon's exit frame follows.
                        Ok(None) | Err(_) => pty = None,
                    }
                    continue;
                }
                () = &mut copy_timer, if copy_pending => {
                    copy_pending = false;
                    self.to_agent.lock().await.write(&[]).await;
                    continue;
                }
            };
            let (ty, payload) = match frame {
                Ok(f) => f,
                Err(e) => {
                    return Closed {
                        code: crate::close::SESSION_LOST,
                        reason: crate::close::reason(&format!("lost the session: {e}")),
                    }
                }
            };
            let msg = match FromDaemon::parse(ty, &payload) {
                Ok(m) => m,
                Err(e) => {
                    return Closed {
                        code: crate::close::SESSION_LOST,
                        reason: crate::close::reason(&format!(
                            "protocol error from the machine side: {e}"
                        )),
                    }
                }
            };
            match msg {
                FromDaemon::Output(d) => {
                    let data = payload.slice_ref(d);
                    if let Some(r) = &self.recorder {
                        r.output(&data).await;
                    }
                    self.output_relayed(data).await;
                }
                FromDaemon::Direct => {
                    let handed = fds.as_ref().and_then(FdInbox::take);
                    match handed.map(Pty::new) {
                        Some(Ok(p)) => {
                            let p = Arc::new(p);
                            *self.pty.lock().expect("pty lock") = Some(p.clone());
                            pty = Some(p);
                        }
                        other => {
                            let why = match other {
                                Some(Err(e)) => e.to_string(),
                                _ => "no descriptor came with it".into(),
                            };
                            return Closed {
                                code: crate::close::SESSION_LOST,
                                reason: crate::close::reason(&format!(
                                    "the machine side handed over no usable pty: {why}"
                                )),
                            };
                        }
                    }
                }
                FromDaemon::Snapshot { tag, screen } => {
                    self.deliver_snapshot(tag, payload.slice_ref(screen));
                }
                FromDaemon::Hello(h) => {
                    self.shell_pid.store(h.shell_pid, Ordering::Relaxed);
                }
                FromDaemon::Exit { status } => {
                    // What the shell printed last is still in the pty.
                    if let Some(p) = pty.take() {
                        while let Ok(Some(chunk)) = p.read_now() {
                            self.output_direct(chunk).await;
                        }
                    }
                    return Closed {
                        code: crate::close::SESSION_ENDED,
                        reason: format!("the shell exited with status {status}"),
                    };
                }
            }
        }
    }

    /// A snapshot arrived: its client gets it, then the output held meanwhile.
    fn deliver_snapshot(&self, tag: u32, snap: Bytes) {
        let mut clients = self.clients.lock().expect("clients lock");
        for c in clients.iter_mut() {
            if !matches!(c.sync, Sync::Waiting(t) if t == tag) {
                continue;
            }
            let backlog = std::mem::take(&mut c.backlog).freeze();
            let sent = c.tx.try_send(snap.clone()).is_ok()
                && (backlog.is_empty() || c.tx.try_send(backlog).is_ok());
            c.sync = if sent { Sync::Live } else { Sync::Lagging };
        }
    }

    /// Output the daemon read (relay mode): a waiting client skips it, the daemon's
    /// snapshot holds it.
    async fn output_relayed(&self, data: Bytes) {
        let (blocked, resync) = self.dispatch(&data, false);
        for tag in resync {
            self.send(ToDaemon::SnapshotReq { tag }).await;
        }
        for tx in blocked {
            // A departed client is dropped from the list on the next round.
            let _ = tx.send(data.clone()).await;
        }
    }

    /// Output this gateway read from the pty (direct mode). Clients get it first, then the
    /// daemon's pending copy, both under the daemon's lock so that no snapshot request or
    /// new client slips in between. Returns whether a new copy batch started.
    async fn output_direct(&self, data: Bytes) -> bool {
        if let Some(r) = &self.recorder {
            r.output(&data).await;
        }
        let mut link = self.to_agent.lock().await;
        let (blocked, resync) = self.dispatch(&data, true);
        let fresh = link.copy(&data).await;
        if !resync.is_empty() {
            let mut frames = Vec::with_capacity(9 * resync.len());
            for tag in resync {
                ToDaemon::SnapshotReq { tag }.push(&mut frames);
            }
            link.write(&frames).await;
        }
        drop(link);
        for tx in blocked {
            let _ = tx.send(data.clone()).await;
        }
        fresh
    }

    /// Hands `data` to every client that can take it now. Returns the owners whose queue
    /// is full (to be awaited: owners get backpressure) and the tags of the snapshots to
    /// ask for (clients that fell behind and have room again). Viewers never block anyone.
    fn dispatch(&self, data: &Bytes, direct: bool) -> (Vec<mpsc::Sender<Bytes>>, Vec<u32>) {
        let mut blocked = Vec::new();
        let mut resync = Vec::new();
        let mut clients = self.clients.lock().expect("clients lock");
        clients.retain(|c| !c.tx.is_closed());
        for c in clients.iter_mut() {
            match (&c.sync, c.role) {
                (Sync::Live, Role::Owner) => {
                    if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(data.clone()) {
                        blocked.push(c.tx.clone());
                    }
                }
                (Sync::Live, Role::Viewer) if c.tx.try_send(data.clone()).is_err() => {
                    c.sync = Sync::Lagging;
                }
                (Sync::Waiting(_), _) if direct => {
                    if c.backlog.len() + data.len() > MAX_BACKLOG {
                        // Its snapshot is now too old to be worth completing.
                        c.backlog = BytesMut::new();
                        c.sync = Sync::Lagging;
                    } else {
                        c.backlog.extend_from_slice(data);
                    }
                }
                (Sync::Lagging, _) if c.tx.capacity() > CLIENT_QUEUE / 2 => {
                    let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                    c.sync = Sync::Waiting(tag);
                    c.backlog = BytesMut::new();
                    resync.push(tag);
                }
                _ => {}
            }
        }
        (blocked, resync)
    }

    /// Adds a client; it first receives a repaint of the current screen.
    pub async fn subscribe(&self, role: Role) -> Subscription {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.touch();
        // Registered and asked for under the daemon's lock: in direct mode no output is
        // read in between (see the module's header).
        let mut link = self.to_agent.lock().await;
        self.clients.lock().expect("clients lock").push(Client {
            id,
            role,
            tx,
            sync: Sync::Waiting(tag),
            backlog: BytesMut::new(),
        });
        link.write(&ToDaemon::SnapshotReq { tag }.encode()).await;
        drop(link);
        Subscription {
            id,
            rx,
            closed: self.closed_tx.subscribe(),
        }
    }

    /// Writes one frame to the agent (after any pending copy).
    async fn send(&self, msg: ToDaemon<'_>) {
        self.to_agent.lock().await.write(&msg.encode()).await;
    }

    pub fn unsubscribe(&self, id: u64) {
        self.clients
            .lock()
            .expect("clients lock")
            .retain(|c| c.id != id);
    }

    pub fn touch(&self) {
        self.last_active
            .store(rnr_core::now_ms(), Ordering::Relaxed);
    }

    pub async fn input(&self, data: &[u8]) {
        self.touch();
        let pty = self.pty.lock().expect("pty lock").clone();
        if let Some(pty) = pty {
            let _whole = self.pty_in.lock().await;
            // A failed write needs no answer: the session's end reaches the clients.
            let _ = pty.write_all(data).await;
            return;
        }
        for chunk in data.chunks(MAX_INPUT) {
            self.send(ToDaemon::Input(chunk)).await;
        }
    }

    pub async fn resize(&self, rows: u16, cols: u16) {
        let rows = rows.clamp(1, 1000);
        let cols = cols.clamp(1, 1000);
        {
            let mut size = self.size.lock().expect("size lock");
            if *size == (rows, cols) {
                return;
            }
            *size = (rows, cols);
        }
        if let Some(r) = &self.recorder {
            r.resize(rows, cols).await;
        }
        // Direct mode: keystrokes bypass the daemon, so the size must not wait for it.
        let pty = self.pty.lock().expect("pty lock").clone();
        if let Some(pty) = pty {
            // On failure the daemon still sets it.
            let _ = pty.resize(rows, cols);
        }
        self.send(ToDaemon::Resize { rows, cols }).await;
    }

    /// Ends the session: the agent hangs up the shell; clients get `why`.
    pub async fn kill(&self, why: Closed) {
        self.closed_tx.send_replace(Some(why));
        self.send(ToDaemon::Kill).await;
    }

    pub fn closed(&self) -> Option<Closed> {
        self.closed_tx.borrow().clone()
    }
}

/// Whether the session ended because its machine went away. Deletion ends the session's
/// connection before the store says so, hence a short wait for either to tell.
async fn machine_gone(platform: &rnr_core::Platform, machine: &str) -> bool {
    for _ in 0..20 {
        let stored = platform.get(machine).await.map(|m| m.state);
        if !matches!(stored, Ok(rnr_core::MachineState::Running)) {
            return true;
        }
        match platform.inspect(machine).await {
            Ok(info) if info.status == rnr_driver::MachineStatus::Running => {}
            _ => return true,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Splits the link's bytes into session frames: sliced out of the chunk read when it holds
/// them whole (bulk output: no copy), gathered in `buf` when they straddle reads.
#[derive(Default)]
struct FrameReader {
    cur: Bytes,
    buf: BytesMut,
}

impl FrameReader {
    async fn next(&mut self, output: &mut ChunkStream) -> Result<(u8, Bytes), String> {
        let peek =
            |d: &[u8]| frame::peek(d, MAX_FRAME).map_err(|e| format!("from the machine side: {e}"));
        loop {
            if self.buf.is_empty() {
                if let Some((ty, len)) = peek(&self.cur)? {
                    let payload = self.cur.slice(frame::HEADER..frame::HEADER + len);
                    self.cur.advance(frame::HEADER + len);
                    return Ok((ty, payload));
                }
                if !self.cur.is_empty() {
                    self.buf.extend_from_slice(&self.cur);
                    self.cur = Bytes::new();
                }
            } else if let Some((ty, len)) = peek(&self.buf)? {
                self.buf.advance(frame::HEADER);
                let payload = self.buf.split_to(len).freeze();
                if self.buf.is_empty() {
                    // Let go of the gathering buffer: idle terminals keep none.
                    self.buf = BytesMut::new();
                }
                return Ok((ty, payload));
            }
            match output.next().await {
                Some(Ok(d)) if self.buf.is_empty() => self.cur = d,
                Some(Ok(d)) => self.buf.extend_from_slice(&d),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the session's connection ended".into()),
            }
        }
    }
}
