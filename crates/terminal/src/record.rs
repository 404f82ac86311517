//! Recording a terminal as asciicast v2 (one JSON header line, then `[t, "o"|"r", data]`
//! events). A writer task owns the file; output reaches it through a bounded channel, so a
//! slow disk slows the terminal instead of growing memory. Output is decoded as UTF-8
//! incrementally: a character split across reads is kept whole, invalid bytes become U+FFFD.
//!
//! A recording has a size cap: the event that would take it past the cap is not written;
//! a marker (`"m"` event, and the same words as output, so that a replay shows them) says
//! why, and nothing more is recorded. The terminal itself goes on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

enum Event {
    Output(Vec<u8>),
    Resize(u16, u16),
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// Set once the cap is reached: output is no longer even sent to the writer.
    stopped: Arc<AtomicBool>,
}

/// The marker's words for a recording stopped at `max` bytes.
fn stop_note(max: u64) -> String {
    format!("recording stopped: it reached {max} bytes ([terminal] max_recording_bytes)")
}

/// Path of terminal `id`'s recording under `dir`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.cast"))
}

/// Takes the longest valid UTF-8 prefix of `carry`; an incomplete sequence at the end stays.
fn take_text(carry: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (ok, tail) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &tail[n..];
                    }
                    None => {
                        rest = tail;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    out
}

impl Recorder {
    /// Starts (or, after a gateway restart, continues) the recording at `file`, which may
    /// grow to `max_bytes`.
    pub async fn start(
        file: PathBuf,
        rows: u16,
        cols: u16,
        max_bytes: u64,
    ) -> std::io::Result<Self> {
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // Continuing keeps one time base: the header's timestamp.
        let existing = tokio::fs::read_to_string(&file).await.ok();
        let started = existing
            .as_deref()
            .and_then(|s| s.lines().next())
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|h| h.get("timestamp").and_then(|t| t.as_f64()));
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .await?;
        let mut written = existing.as_ref().map_or(0, |s| s.len() as u64);
        let offset = match started {
            Some(ts) => (now - ts).max(0.0),
            None => {
                let header = serde_json::json!({
                    "version": 2, "width": cols, "height": rows, "timestamp": now as i64,
                    "env": {"TERM": "xterm-256color"}
                });
                let line = format!("{header}\n");
                f.write_all(line.as_bytes()).await?;
                written += line.len() as u64;
                now - (now as i64) as f64
            }
        };
        // Continued after a restart at or past the cap: the marker is in the file already.
        let stopped = Arc::new(AtomicBool::new(
            existing.is_some_and(|s| s.contains(&stop_note(max_bytes))) || written >= max_bytes,
        ));
        let (tx, mut rx) = mpsc::channel::<Event>(16);
        let flag = stopped.clone();
        tokio::spawn(async move {
            let base = Instant::now();
            let mut w = tokio::io::BufWriter::new(f);
            let mut carry = Vec::new();
            while let Some(ev) = rx.recv().await {
                if flag.load(Ordering::Relaxed) {
                    // Drained, not written: senders never wait on a stopped recording.
                    continue;
                }
                let t = offset + base.elapsed().as_secs_f64();
                let line = match ev {
                    Event::Output(d) => {
                        carry.extend_from_slice(&d);
                        let text = take_text(&mut carry);
                        if text.is_empty() {
                            continue;
                        }
                        serde_json::json!([t, "o", text])
                    }
                    Event::Resize(r, c) => serde_json::json!([t, "r", format!("{c}x{r}")]),
                };
                let mut line = format!("{line}\n");
                if written + line.len() as u64 > max_bytes {
                    flag.store(true, Ordering::Relaxed);
                    let note = stop_note(max_bytes);
                    let shown = format!("\r\n[{note}]\r\n");
                    line = format!(
                        "{}\n{}\n",
                        serde_json::json!([t, "m", note]),
                        serde_json::json!([t, "o", shown])
                    );
                    tracing::info!(max_bytes, "a recording reached its cap and stopped");
                }
                written += line.len() as u64;
                if w.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                if (rx.is_empty() || flag.load(Ordering::Relaxed)) && w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.flush().await;
        });
        Ok(Self { tx, stopped })
    }

    pub async fn output(&self, data: &[u8]) {
        if !self.stopped.load(Ordering::Relaxed) {
            let _ = self.tx.send(Event::Output(data.to_vec())).await;
        }
    }

    pub async fn resize(&self, rows: u16, cols: u16) {
        if !self.stopped.load(Ordering::Relaxed) {
            let _ = self.tx.send(Event::Resize(rows, cols)).await;
        }
    }

    /// Whether the recording reached its cap.
    #[cfg(test)]
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_recording_stops_at_its_cap_with_a_marker_and_stays_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t-1.cast");
        let r = Recorder::start(file.clone(), 24, 80, 600).await.unwrap();
        // Far more output than the cap, from a terminal that must never block on it.
        let chunk = vec![b'x'; 100];
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            for _ in 0..1000 {
                r.output(&chunk).await;
            }
        })
        .await
        .expect("output is never held up by a full recording");
        for _ in 0..100 {
            if r.stopped() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(r.stopped());
        drop(r);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let text = std::fs::read_to_string(&file).unwrap();
        let ev = events(&text);
        let markers: Vec<_> = ev.iter().filter(|e| e[1] == "m").collect();
        assert_eq!(markers.len(), 1, "{text}");
        assert!(
            markers[0][2].as_str().unwrap().contains("600 bytes"),
            "{text}"
        );
        // The marker is followed by the same words as output, then nothing.
        assert_eq!(ev.last().unwrap()[1], "o");
        assert!(ev.last().unwrap()[2]
            .as_str()
            .unwrap()
            .contains("recording stopped"));
        // Over the cap by the marker only.
        assert!(text.len() < 600 + 400, "{} bytes", text.len());

        // Continued after a restart: nothing more is written.
        let r = Recorder::start(file.clone(), 24, 80, 600).await.unwrap();
        assert!(r.stopped());
        r.output(b"more").await;
        drop(r);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }

    #[test]
    fn utf8_split_and_invalid() {
        let mut c = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_text(&mut c), "");
        c.extend_from_slice(&"é".as_bytes()[1..]);
        c.extend_from_slice(b"\xffa");
        assert_eq!(take_text(&mut c), "é\u{FFFD}a");
        assert!(c.is_empty());
    }
}
