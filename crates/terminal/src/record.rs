//! Recording a terminal as asciicast v2 (one JSON header line, then `[t, "o"|"r", data]`
//! events). A writer task owns the file; output reaches it through a bounded channel, so a
//! slow disk slows the terminal instead of growing memory. Output is decoded as UTF-8
//! incrementally: a character split across reads is kept whole, invalid bytes become U+FFFD.

use std::path::{Path, PathBuf};
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
    /// Starts (or, after a gateway restart, continues) the recording at `file`.
    pub async fn start(file: PathBuf, rows: u16, cols: u16) -> std::io::Result<Self> {
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
        let offset = match started {
            Some(ts) => (now - ts).max(0.0),
            None => {
                let header = serde_json::json!({
                    "version": 2, "width": cols, "height": rows, "timestamp": now as i64,
                    "env": {"TERM": "xterm-256color"}
                });
                f.write_all(format!("{header}\n").as_bytes()).await?;
                now - (now as i64) as f64
            }
        };
        let (tx, mut rx) = mpsc::channel::<Event>(16);
        tokio::spawn(async move {
            let base = Instant::now();
            let mut w = tokio::io::BufWriter::new(f);
            let mut carry = Vec::new();
            while let Some(ev) = rx.recv().await {
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
                if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
                if rx.is_empty() && w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.flush().await;
        });
        Ok(Self { tx })
    }

    pub async fn output(&self, data: &[u8]) {
        let _ = self.tx.send(Event::Output(data.to_vec())).await;
    }

    pub async fn resize(&self, rows: u16, cols: u16) {
        let _ = self.tx.send(Event::Resize(rows, cols)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::take_text;

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
