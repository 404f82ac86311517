//! permessage-deflate (RFC 7692) for the terminal WebSocket, around tungstenite, which has
//! none: negotiation, outbound compression, and [`Inflating`], a read-side adapter that
//! inflates the client's compressed messages before tungstenite parses them.
//!
//! Only the no-context-takeover variant is ever accepted (both ways), so every message is
//! (de)compressed on its own with a (de)compressor borrowed from a small process-wide pool:
//! an idle terminal holds no deflate state at all, which is what keeps 200 open terminals
//! within a few kilobytes each. Bulk output compresses ~10× at level 1; keystroke echoes
//! stay below [`COMPRESS_MIN`] and go out as they are.

use crate::GatewayError;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The answer to an acceptable offer.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Messages shorter than this go out uncompressed: deflating an echo costs more time than
/// its few bytes cost on the wire, and deflate's framing gains nothing below ~100 bytes.
pub const COMPRESS_MIN: usize = 256;

/// The tail a sync flush ends with; RFC 7692 strips it on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether the request offers permessage-deflate with parameters we can honour.
pub fn negotiate(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(acceptable)
}

/// One offer: `permessage-deflate; param[=value]; …`.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false; // RFC 7692 §7: an offer with a duplicate parameter is declined
        }
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        let ok = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // Our compressor's window is 15 bits; a client asking for less gets no deflate.
            "server_max_window_bits" => bits(value) == Some(15),
            // A 15-bit inflater reads anything a smaller window produced.
            "client_max_window_bits" => {
                value.is_none() || bits(value).is_some_and(|b| (8..=15).contains(&b))
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
}

/// A bounded stack of idle (de)compressors shared by all connections: a busy gateway
/// reuses a few; an idle one keeps at most one per CPU.
struct Pool<T> {
    idle: Mutex<Vec<T>>,
}

impl<T> Pool<T> {
    const fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<R>(&self, make: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> (R, T) {
        let taken = self.idle.lock().expect("deflate pool").pop();
        let mut item = taken.unwrap_or_else(make);
        (f(&mut item), item)
    }

    fn give_back(&self, item: T) {
        static KEEP: OnceLock<usize> = OnceLock::new();
        let keep = *KEEP.get_or_init(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        let mut idle = self.idle.lock().expect("deflate pool");
        if idle.len() < keep {
            idle.push(item);
        }
    }
}

static COMPRESSORS: Pool<Compress> = Pool::new();
static DECOMPRESSORS: Pool<Decompress> = Pool::new();

/// `data` as one compressed message payload (sync flush, tail stripped), or `None` when
/// deflate would not make it smaller.
pub fn compress(data: &[u8]) -> Option<Bytes> {
    let (out, mut c) = COMPRESSORS.with(
        || Compress::new(Compression::fast(), false),
        |c| {
            // Room for as many bytes as the input: if deflate needs more, sending the
            // message as it is is better anyway.
            let mut out = Vec::with_capacity(data.len() + TAIL.len());
            loop {
                let consumed = c.total_in() as usize;
                let r = c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync);
                let done = c.total_in() as usize == data.len() && out.len() < out.capacity();
                match r {
                    Ok(_) if done => break Some(out),
                    Ok(_) if out.len() == out.capacity() => break None,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "deflate failed; sending uncompressed");
                        break None;
                    }
                }
            }
        },
    );
    c.reset();
    COMPRESSORS.give_back(c);
    let mut out = out?;
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(Bytes::from(out))
}

/// Inflates one message's payload (tail not yet appended) into at most `limit` bytes.
pub(crate) fn inflate(mut comp: Vec<u8>, limit: usize) -> Result<Vec<u8>, GatewayError> {
    comp.extend_from_slice(&TAIL);
    let (out, mut d) = DECOMPRESSORS.with(
        || Decompress::new(false),
        |d| {
            // Grown in steps, never past limit + 1: a bomb fills that and is refused
            // without ever holding more.
            let mut out: Vec<u8> = Vec::new();
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(GatewayError::MessageTooBig(limit));
                    }
                    let step = (comp.len() * 4).clamp(4096, 64 * 1024);
                    out.reserve_exact(step.min(limit + 1 - out.len()));
                }
                let before = (d.total_in(), out.len());
                let consumed = d.total_in() as usize;
                let status = d
                    .decompress_vec(&comp[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|e| GatewayError::BadCompression(e.to_string()))?;
                let all_in = d.total_in() as usize == comp.len();
                if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
                    break;
                }
                if (d.total_in(), out.len()) == before && out.len() < out.capacity() {
                    return Err(GatewayError::BadCompression(
                        "truncated deflate data".into(),
                    ));
                }
            }
            if out.len() > limit {
                return Err(GatewayError::MessageTooBig(limit));
            }
            Ok(out)
        },
    );
    d.reset(false);
    DECOMPRESSORS.give_back(d);
    out
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;
const CONTINUATION: u8 = 0x0;

enum Phase {
    /// Collecting a frame header (2–14 bytes) in `hdr`.
    Header,
    /// `remaining` payload bytes of the current frame to go.
    Payload,
}

/// The client → server half of the socket, seen by tungstenite: passes frames through as
/// they are, except compressed messages, which it collects, inflates and hands on as one
/// unmasked, uncompressed frame (tungstenite runs with `accept_unmasked_frames` for that;
/// this adapter itself refuses unmasked frames from the client).
///
/// Idle, it holds a 14-byte header buffer and nothing else; the buffers of a message in
/// flight are dropped once tungstenite has it.
pub struct Inflating<S> {
    inner: S,
    deflate: bool,
    /// Most bytes of one compressed message, before and after inflating.
    limit: usize,
    phase: Phase,
    hdr: [u8; 14],
    hdr_len: usize,
    remaining: u64,
    mask: [u8; 4],
    mask_pos: usize,
    /// The current frame's payload goes to `comp` (it belongs to a compressed message).
    collecting: bool,
    fin: bool,
    /// Opcode of the compressed message being collected, if one is.
    compressed_op: Option<u8>,
    /// An uncompressed message is in fragments (its continuations pass through).
    plain_fragmented: bool,
    comp: Vec<u8>,
    /// Bytes for tungstenite not yet handed over.
    out: Vec<u8>,
    out_pos: usize,
    /// Why the client's bytes were refused, reported once what came before is read; then
    /// every read fails.
    failed: Option<GatewayError>,
    failed_before: bool,
}

impl<S> Inflating<S> {
    pub fn new(inner: S, deflate: bool, limit: usize) -> Self {
        Self {
            inner,
            deflate,
            limit,
            phase: Phase::Header,
            hdr: [0; 14],
            hdr_len: 0,
            remaining: 0,
            mask: [0; 4],
            mask_pos: 0,
            collecting: false,
            fin: false,
            compressed_op: None,
            plain_fragmented: false,
            comp: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            failed: None,
            failed_before: false,
        }
    }

    /// The socket under the adapter.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Header length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.hdr[1] & MASKED != 0 { 4 } else { 0 }
    }

    /// A complete header is in `hdr`: decide where the frame goes.
    fn start_frame(&mut self) -> Result<(), GatewayError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let opcode = b0 & 0x0f;
        let control = opcode & 0x08 != 0;
        let rsv1 = b0 & RSV1 != 0;
        if b1 & MASKED == 0 {
            return Err(GatewayError::Protocol(
                "unmasked frame from the client".into(),
            ));
        }
        let len_bytes = &self.hdr[2..self.hdr_len - 4];
        self.remaining = match len_bytes.len() {
            0 => u64::from(b1 & 0x7f),
            n => len_bytes
                .iter()
                .take(n)
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        self.mask
            .copy_from_slice(&self.hdr[self.hdr_len - 4..self.hdr_len]);
        self.mask_pos = 0;
        self.fin = b0 & FIN != 0;
        self.collecting = false;
        if rsv1 && !self.deflate {
            return Err(GatewayError::Protocol(
                "compressed frame (RSV1) without permessage-deflate".into(),
            ));
        }
        if control {
            if rsv1 {
                return Err(GatewayError::Protocol("compressed control frame".into()));
            }
        } else if opcode == CONTINUATION {
            if rsv1 {
                return Err(GatewayError::Protocol(
                    "RSV1 on a continuation frame".into(),
                ));
            }
            self.collecting = self.compressed_op.is_some();
            if !self.collecting && self.fin {
                self.plain_fragmented = false;
            }
        } else {
            if self.compressed_op.is_some() || (rsv1 && self.plain_fragmented) {
                return Err(GatewayError::Protocol(
                    "new message before the last one ended".into(),
                ));
            }
            if rsv1 {
                self.collecting = true;
                self.compressed_op = Some(opcode);
            } else {
                self.plain_fragmented = !self.fin;
            }
        }
        if self.collecting {
            // Saturating: a continuation may claim up to 2^64 - 1 bytes.
            if (self.comp.len() as u64).saturating_add(self.remaining) > self.limit as u64 {
                return Err(GatewayError::MessageTooBig(self.limit));
            }
            self.comp.reserve_exact(self.remaining as usize);
        } else {
            self.out.extend_from_slice(&self.hdr[..self.hdr_len]);
        }
        Ok(())
    }

    /// The current frame's payload is complete.
    fn end_frame(&mut self) -> Result<(), GatewayError> {
        if !(self.collecting && self.fin) {
            return Ok(());
        }
        let op = self.compressed_op.take().unwrap_or(0x2);
        let data = inflate(std::mem::take(&mut self.comp), self.limit)?;
        // One final, unmasked frame with RSV1 clear.
        self.out.push(FIN | op);
        match data.len() {
            n if n < 126 => self.out.push(n as u8),
            n if n <= 0xffff => {
                self.out.push(126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&data);
        Ok(())
    }

    /// Runs bytes from the socket through the frame parser.
    fn process(&mut self, mut data: &[u8]) -> Result<(), GatewayError> {
        while !data.is_empty() || matches!(self.phase, Phase::Payload if self.remaining == 0) {
            match self.phase {
                Phase::Header => {
                    let want = if self.hdr_len < 2 {
                        2
                    } else {
                        self.header_len()
                    };
                    let n = (want - self.hdr_len).min(data.len());
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                    self.hdr_len += n;
                    data = &data[n..];
                    if self.hdr_len >= 2 && self.hdr_len == self.header_len() {
                        self.start_frame()?;
                        self.hdr_len = 0;
                        self.phase = Phase::Payload;
                    }
                }
                Phase::Payload => {
                    let n = (self.remaining.min(data.len() as u64)) as usize;
                    let (chunk, rest) = data.split_at(n);
                    if self.collecting {
                        self.comp.extend(
                            chunk
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ self.mask[(self.mask_pos + i) % 4]),
                        );
                        self.mask_pos = (self.mask_pos + n) % 4;
                    } else {
                        self.out.extend_from_slice(chunk);
                    }
                    self.remaining -= n as u64;
                    data = rest;
                    if self.remaining == 0 {
                        self.end_frame()?;
                        self.phase = Phase::Header;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The adapter's protocol errors reach the WebSocket handler inside an `io::Error`.
pub fn gateway_error(e: &io::Error) -> Option<&GatewayError> {
    e.get_ref()?.downcast_ref::<GatewayError>()
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    // Freed, not kept: an idle connection holds no buffer here.
                    this.out = Vec::new();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if this.failed_before {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    GatewayError::Protocol("the connection already failed".into()),
                )));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // On the stack: tungstenite reads in chunks of its read buffer (4 KiB).
            let mut tmp = [0u8; 4096];
            let want = buf.remaining().min(tmp.len());
            let mut rb = ReadBuf::new(&mut tmp[..want]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            if let Err(e) = this.process(rb.filled()) {
                // The frames before the bad one are whole and go to tungstenite first (the
                // keystrokes a client sent before breaking the protocol are not lost); the
                // error follows them.
                this.failed = Some(e);
                this.failed_before = true;
                this.comp = Vec::new();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn offer(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        negotiate(&h)
    }

    #[test]
    fn negotiation_accepts_what_it_can_honour() {
        assert!(offer("permessage-deflate; client_max_window_bits"));
        assert!(offer("permessage-deflate"));
        assert!(offer(
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10"
        ));
        assert!(offer(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(!offer("permessage-deflate; server_max_window_bits=10"));
        assert!(!offer(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!offer("permessage-deflate; frobnicate"));
        assert!(!offer("x-webkit-deflate-frame"));
        assert!(!negotiate(&HeaderMap::new()));
    }

    /// A client frame: masked with a fixed key.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(MASKED | n as u8),
            n => {
                f.push(MASKED | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    async fn through(deflate: bool, wire: Vec<u8>) -> io::Result<Vec<u8>> {
        // One byte at a time from the socket: every parser state sees a split.
        let (mut a, b) = tokio::io::duplex(1);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = a.write_all(&wire).await;
        });
        let mut r = Inflating::new(b, deflate, 64 * 1024);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn compressed_fragments_become_one_plain_frame_and_control_frames_pass() {
        let text = b"echo hi; seq 1 100\r".repeat(20);
        let z = compress(&text).expect("compressible");
        let (a, b) = z.split_at(z.len() / 2);
        let ping = frame(FIN | 0x9, b"p");
        let mut wire = frame(RSV1 | 0x2, a);
        wire.extend_from_slice(&ping);
        wire.extend(frame(FIN, b));
        let plain = frame(FIN | 0x2, b"ls\r");
        wire.extend_from_slice(&plain);
        let out = through(true, wire).await.unwrap();
        let mut want = ping.clone();
        want.extend_from_slice(&[FIN | 0x2, 126]);
        want.extend_from_slice(&(text.len() as u16).to_be_bytes());
        want.extend_from_slice(&text);
        want.extend_from_slice(&plain);
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn bombs_and_stray_rsv1_fail_with_their_close_codes() {
        // 1 MiB of one byte at the best level: ~1 KiB on the wire.
        let mut c = Compress::new(Compression::best(), false);
        let mut bomb = Vec::with_capacity(4096);
        c.compress_vec(&vec![b'a'; 1 << 20], &mut bomb, FlushCompress::Sync)
            .unwrap();
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let e = through(true, frame(FIN | RSV1 | 0x2, &bomb))
            .await
            .unwrap_err();
        assert_eq!(gateway_error(&e).unwrap().close().0, 1009, "{e}");

        let z = compress(&[b'x'; 300]).unwrap();
        let e = through(false, frame(FIN | RSV1 | 0x2, &z))
            .await
            .unwrap_err();
        assert_eq!(gateway_error(&e).unwrap().close().0, 1002, "{e}");
        let e = through(true, frame(FIN | RSV1 | 0x9, b""))
            .await
            .unwrap_err();
        assert_eq!(gateway_error(&e).unwrap().close().0, 1002, "{e}");
        let e = through(true, frame(FIN | RSV1 | 0x2, b"\xff\xff\xff"))
            .await
            .unwrap_err();
        assert_eq!(gateway_error(&e).unwrap().close().0, 1007, "{e}");
    }

    /// Found by fuzz/terminal_frames: a continuation claiming 2^64 - 1 bytes after a first
    /// fragment wrapped the limit's sum and had the adapter reserve that much (a panic).
    #[tokio::test]
    async fn a_huge_continuation_length_is_refused_not_wrapped() {
        let z = compress(&[b'x'; 300]).unwrap();
        let mut wire = frame(RSV1 | 0x2, &z[..4]);
        wire.extend_from_slice(&[FIN, MASKED | 127]);
        wire.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4, 5]);
        let e = through(true, wire).await.unwrap_err();
        assert_eq!(gateway_error(&e).unwrap().close().0, 1009, "{e}");
    }

    /// Found by fuzz/websocket: frames that arrived in the same read as a bad one were
    /// dropped with it; they are whole, and are read before the error.
    #[tokio::test]
    async fn frames_before_a_bad_one_are_read_before_the_error() {
        let typed = frame(FIN | 0x2, b"ls\r");
        let mut wire = typed.clone();
        wire.extend(frame(FIN | RSV1 | 0x2, b"\x01"));
        // All of it in one read.
        let mut r = Inflating::new(&wire[..], false, 64 * 1024);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let e = loop {
            match r.read(&mut buf).await {
                Ok(0) => panic!("no error after {out:?}"),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(out, typed);
        assert_eq!(gateway_error(&e).unwrap().close().0, 1002, "{e}");
        assert!(r.read(&mut buf).await.is_err(), "and it stays failed");
    }

    #[test]
    fn short_or_incompressible_output_is_not_compressed() {
        let mut noise = vec![0u8; 4096];
        getrandom::getrandom(&mut noise).unwrap();
        assert!(compress(&noise).is_none());
        let text = b"0123456789\n".repeat(1000);
        let z = compress(&text).unwrap();
        assert!(z.len() < text.len() / 5, "{}", z.len());
        assert_eq!(inflate(z.to_vec(), text.len()).unwrap(), text);
        assert!(matches!(
            inflate(z.to_vec(), text.len() - 1),
            Err(GatewayError::MessageTooBig(_))
        ));
    }
}
