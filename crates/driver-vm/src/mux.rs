//! The host end of a VM's serial-port multiplexer (`rnr_agent_proto::mux`): one
//! connection to QEMU's chardev socket per machine, owned by two tasks (one reads, one
//! writes), handing out each agent connection as an [`AgentChannel::bytes`] over
//! in-process streams. Everything read from the port is the VM's, hence hostile: a frame
//! that does not parse ends the multiplexer (the next channel connects afresh).

use bytes::Bytes;
use futures::StreamExt;
use rnr_agent_proto::mux::{self, Frame};
use rnr_driver::AgentChannel;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};

type Inbox = mpsc::UnboundedSender<std::io::Result<Bytes>>;

struct Entry {
    /// Where the stream's data goes; `None` once the agent said it sends no more.
    inbox: Option<Inbox>,
    /// Bytes the agent still accepts on this stream.
    credit: Arc<Semaphore>,
}

/// One VM's multiplexer.
pub struct Mux {
    machine: String,
    out: mpsc::UnboundedSender<Vec<u8>>,
    streams: Arc<Mutex<HashMap<u32, Entry>>>,
    next: AtomicU32,
    dead: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mux({}, dead: {})", self.machine, self.is_dead())
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Mux {
    /// Connects to the port's socket and says hello until the agent answers, within
    /// `patience` (a VM that is still booting answers when its init is up).
    pub async fn connect(
        machine: &str,
        socket: &Path,
        patience: Duration,
    ) -> Result<Arc<Self>, String> {
        let deadline = Instant::now() + patience;
        let sock = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("connecting to {}: {e}", socket.display()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (mut r, mut w) = sock.into_split();
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce);
        let nonce = u64::from_be_bytes(nonce);
        let hello = mux::synced(Frame::Hello(nonce));
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let at = 'answered: loop {
            w.write_all(&hello)
                .await
                .map_err(|e| format!("saying hello: {e}"))?;
            let resend = Instant::now() + Duration::from_millis(500);
            loop {
                let wait = resend
                    .min(deadline)
                    .saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, r.read(&mut buf)).await {
                    Ok(Ok(0)) => return Err("the port closed before the agent answered".into()),
                    Ok(Ok(n)) => {
                        raw.extend_from_slice(&buf[..n]);
                        if let Some(at) = mux::find(&raw, Frame::HelloAck(nonce)) {
                            break 'answered at;
                        }
                        // Only the tail can still hold the start of the answer.
                        if raw.len() > 1 << 20 {
                            raw.drain(..raw.len() - 64);
                        }
                    }
                    Ok(Err(e)) => return Err(format!("reading the port: {e}")),
                    Err(_) if Instant::now() >= deadline => {
                        return Err(format!(
                            "the agent did not answer within {} s",
                            patience.as_secs()
                        ))
                    }
                    Err(_) => break,
                }
            }
        };
        let ack_len = Frame::HelloAck(nonce).encode().len();
        let rest = raw.split_off(at + ack_len);

        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (stop, mut stop_rx) = watch::channel(false);
        let streams: Arc<Mutex<HashMap<u32, Entry>>> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        {
            let dead = dead.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        frame = out_rx.recv() => match frame {
                            Some(f) => if w.write_all(&f).await.is_err() { break },
                            None => break,
                        },
                        _ = stop_rx.changed() => break,
                    }
                }
                dead.store(true, Ordering::SeqCst);
            });
        }
        {
            let (dead, streams, out, machine) = (
                dead.clone(),
                streams.clone(),
                out.clone(),
                machine.to_string(),
            );
            tokio::spawn(async move {
                let mut rbuf = rest;
                let why = 'read: loop {
                    let mut at = 0;
                    loop {
                        match Frame::parse(&rbuf[at..]) {
                            Ok(Some((f, used))) => {
                                at += used;
                                if let Err(why) = dispatch(f, &streams, &out) {
                                    break 'read why;
                                }
                            }
                            Ok(None) => {
                                at += mux::skip_padding(&rbuf[at..]);
                                break;
                            }
                            Err(e) => break 'read format!("the agent sent garbage: {e}"),
                        }
                    }
                    rbuf.drain(..at);
                    tokio::select! {
                        n = r.read(&mut buf) => match n {
                            Ok(0) => break "the port closed (QEMU ended)".to_string(),
                            Ok(n) => rbuf.extend_from_slice(&buf[..n]),
                            Err(e) => break format!("reading the port: {e}"),
                        },
                        _ = stop_rx.changed() => break "closed".to_string(),
                    }
                };
                tracing::debug!(machine = %machine, why = %why, "vm agent port ends");
                dead.store(true, Ordering::SeqCst);
                let gone: Vec<Entry> = lock(&streams).drain().map(|(_, e)| e).collect();
                for e in gone {
                    e.credit.close();
                    if let Some(tx) = e.inbox {
                        let _ = tx.send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            why.clone(),
                        )));
                    }
                }
            });
        }
        Ok(Arc::new(Self {
            machine: machine.to_string(),
            out,
            streams,
            next: AtomicU32::new(1),
            dead,
            stop,
        }))
    }

    /// Whether the port broke (QEMU ended, the VM rebooted, garbage): open no more here.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// A new agent connection.
    pub fn open(self: &Arc<Self>) -> Result<AgentChannel, String> {
        if self.is_dead() {
            return Err("the agent's port is closed".into());
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel::<std::io::Result<Bytes>>();
        let credit = Arc::new(Semaphore::new(mux::WINDOW as usize));
        lock(&self.streams).insert(
            id,
            Entry {
                inbox: Some(tx),
                credit: credit.clone(),
            },
        );
        let send = |f: Frame<'_>| self.out.send(f.encode()).is_ok();
        if !send(Frame::Open(id)) {
            return Err("the agent's port is closed".into());
        }
        // Reading: each chunk taken returns its credit to the agent.
        let out = self.out.clone();
        let read = futures::stream::poll_fn(move |cx| {
            let item = std::task::ready!(rx.poll_recv(cx));
            if let Some(Ok(b)) = &item {
                let _ = out.send(Frame::Credit(id, b.len() as u32).encode());
            }
            std::task::Poll::Ready(item)
        })
        .boxed();
        // Writing: what the caller writes is cut into frames within the agent's credit.
        let (writer, mut pump) = tokio::io::duplex(64 * 1024);
        let out = self.out.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; mux::MAX_DATA];
            loop {
                let n = match pump.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = out.send(Frame::Fin(id).encode());
                        return;
                    }
                    Ok(n) => n,
                };
                match credit.acquire_many(n as u32).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                if out.send(Frame::Data(id, &buf[..n]).encode()).is_err() {
                    return;
                }
            }
        });
        let guard = StreamGuard {
            id,
            mux: self.clone(),
        };
        Ok(AgentChannel::bytes(
            self.machine.clone(),
            read,
            Box::pin(writer),
            Some(Box::new(guard)),
        ))
    }
}

/// Ends a stream when its channel (or what it became: an exec, a session link) is dropped.
struct StreamGuard {
    id: u32,
    mux: Arc<Mux>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(e) = lock(&self.mux.streams).remove(&self.id) {
            e.credit.close();
        }
        let _ = self.mux.out.send(Frame::Close(self.id).encode());
    }
}

/// One frame from the agent; `Err` ends the multiplexer.
fn dispatch(
    f: Frame<'_>,
    streams: &Mutex<HashMap<u32, Entry>>,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<(), String> {
    match f {
        Frame::Data(id, d) => {
            let all = lock(streams);
            match all.get(&id).and_then(|e| e.inbox.as_ref()) {
                Some(tx) => {
                    let _ = tx.send(Ok(Bytes::copy_from_slice(d)));
                }
                None => {
                    drop(all);
                    let _ = out.send(Frame::Close(id).encode());
                }
            }
        }
        Frame::Fin(id) => {
            if let Some(e) = lock(streams).get_mut(&id) {
                e.inbox = None;
            }
        }
        Frame::Close(id) => {
            if let Some(e) = lock(streams).remove(&id) {
                e.credit.close();
            }
        }
        Frame::Credit(id, n) => {
            if let Some(e) = lock(streams).get(&id) {
                // Bounded: an agent granting more than a window is ignored beyond it.
                let room = (mux::WINDOW as usize * 4).saturating_sub(e.credit.available_permits());
                e.credit.add_permits((n as usize).min(room));
            }
        }
        Frame::Boot(_) => return Err("the VM's agent restarted (the VM rebooted)".into()),
        Frame::HelloAck(_) => {}
        Frame::Hello(_) | Frame::Open(_) => return Err("the agent sent a host's frame".into()),
    }
    Ok(())
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: getrandom fills the buffer it is given, of that length.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
}
