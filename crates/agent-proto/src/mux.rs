//! The multiplexer of a VM's serial port: many agent connections over one byte stream.
//!
//! A VM's agent is reached over one virtio-serial port (there is no vsock device on the
//! hosts rootnroll runs on), while the platform opens many connections at once (terminals,
//! checks, execs). Both ends cut the port's byte stream into mux frames: each carries a
//! stream id, and every stream is one agent connection as a unix socket would carry it
//! (one request, then what follows it), so the agent serves it with its per-connection
//! code unchanged. Only the host opens streams.
//!
//! Frame: `type u8, stream u32 BE, length u16 BE, payload` — except [`PAD`], a single zero
//! byte with no header. Flow control is by credit: each side may have at most
//! [`WINDOW`] bytes of a stream's data unconsumed at the other; the receiver returns
//! credit ([`Frame::Credit`]) as its consumer takes the data, so one stream whose reader
//! stalls never holds up the port for the others.
//!
//! Synchronising: an end that starts (the host connecting to QEMU's socket, the agent
//! booting) cannot know where the other end is in the byte stream (a previous peer may
//! have died mid-frame). It first sends [`SYNC_PADDING`] `PAD` bytes — more than the
//! longest frame, so whatever frame the other end was in the middle of ends inside the
//! padding, and the rest of the padding parses as pad bytes — and then its hello. The
//! host says [`Frame::Hello`] with a random nonce and ignores everything until the
//! agent's [`Frame::HelloAck`] with that nonce, which it finds by searching the raw bytes;
//! the agent, on a hello, ends every stream it has and answers. An agent that (re)starts
//! says [`Frame::Boot`]: the host's streams of the previous boot are over.

/// The single-byte filler between frames.
pub const PAD: u8 = 0x00;
pub const T_HELLO: u8 = 0x01;
pub const T_HELLO_ACK: u8 = 0x02;
pub const T_BOOT: u8 = 0x03;
pub const T_OPEN: u8 = 0x10;
pub const T_DATA: u8 = 0x11;
pub const T_FIN: u8 = 0x12;
pub const T_CLOSE: u8 = 0x13;
pub const T_CREDIT: u8 = 0x14;

/// Bytes before a frame's payload.
pub const HEADER: usize = 7;
/// The most data one frame carries.
pub const MAX_DATA: usize = 32 * 1024;
/// The most a payload may claim (the length field's range).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Unconsumed data a sender may have outstanding per stream.
pub const WINDOW: u32 = 256 * 1024;
/// Pad bytes sent ahead of a hello: longer than any frame.
pub const SYNC_PADDING: usize = HEADER + MAX_PAYLOAD + 1;
/// The name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "rnr.agent";

/// One mux frame, borrowing its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// host → agent: start over; answer with this nonce.
    Hello(u64),
    /// agent → host: streams ended; ready.
    HelloAck(u64),
    /// agent → host: the agent (re)started; every stream of the last boot is gone.
    Boot(u64),
    /// host → agent: a new connection.
    Open(u32),
    /// Bytes of a stream.
    Data(u32, &'a [u8]),
    /// The sender sends no more on this stream (shutdown of its writing half).
    Fin(u32),
    /// The stream is over both ways (the sender dropped it, or does not know it).
    Close(u32),
    /// The receiver consumed this many bytes of the stream: the sender may send as many more.
    Credit(u32, u32),
}

/// What is wrong with bytes on the port. The agent side may be hostile: every malformed
/// input is one of these, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("unknown mux frame type {0:#04x}")]
    UnknownType(u8),
    #[error("mux frame {ty:#04x} of stream {stream} has a malformed payload of {len} bytes")]
    BadPayload { ty: u8, stream: u32, len: usize },
}

impl Frame<'_> {
    /// Appends the frame to `buf`.
    pub fn push(&self, buf: &mut Vec<u8>) {
        let (ty, stream, payload): (u8, u32, &[u8]) = match self {
            Frame::Hello(n) => return push_u64(buf, T_HELLO, *n),
            Frame::HelloAck(n) => return push_u64(buf, T_HELLO_ACK, *n),
            Frame::Boot(n) => return push_u64(buf, T_BOOT, *n),
            Frame::Open(s) => (T_OPEN, *s, &[]),
            Frame::Data(s, d) => (T_DATA, *s, d),
            Frame::Fin(s) => (T_FIN, *s, &[]),
            Frame::Close(s) => (T_CLOSE, *s, &[]),
            Frame::Credit(s, n) => {
                buf.extend_from_slice(&header(T_CREDIT, *s, 4));
                buf.extend_from_slice(&n.to_be_bytes());
                return;
            }
        };
        // Callers cut data to MAX_DATA; a longer slice is cut here rather than mis-framed.
        let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
        buf.extend_from_slice(&header(ty, stream, payload.len()));
        buf.extend_from_slice(payload);
    }

    /// The frame as a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.push(&mut b);
        b
    }

    /// The frame at the front of `data` and the bytes it took (pad bytes ahead of it
    /// included), or `Ok(None)` when more bytes are needed. A buffer of nothing but
    /// padding yields `Ok(None)` with the padding to drop: see [`skip_padding`].
    pub fn parse(data: &[u8]) -> Result<Option<(Frame<'_>, usize)>, MuxError> {
        let start = skip_padding(data);
        let data = &data[start..];
        if data.len() < HEADER {
            return Ok(None);
        }
        let ty = data[0];
        let stream = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
        let len = usize::from(u16::from_be_bytes([data[5], data[6]]));
        if data.len() < HEADER + len {
            return Ok(None);
        }
        let p = &data[HEADER..HEADER + len];
        let bad = || MuxError::BadPayload { ty, stream, len };
        let u64_of = |p: &[u8]| <[u8; 8]>::try_from(p).map(u64::from_be_bytes);
        let f = match ty {
            T_HELLO => Frame::Hello(u64_of(p).map_err(|_| bad())?),
            T_HELLO_ACK => Frame::HelloAck(u64_of(p).map_err(|_| bad())?),
            T_BOOT => Frame::Boot(u64_of(p).map_err(|_| bad())?),
            T_OPEN | T_FIN | T_CLOSE if !p.is_empty() => return Err(bad()),
            T_OPEN => Frame::Open(stream),
            T_FIN => Frame::Fin(stream),
            T_CLOSE => Frame::Close(stream),
            T_DATA => Frame::Data(stream, p),
            T_CREDIT => Frame::Credit(
                stream,
                <[u8; 4]>::try_from(p)
                    .map(u32::from_be_bytes)
                    .map_err(|_| bad())?,
            ),
            other => return Err(MuxError::UnknownType(other)),
        };
        Ok(Some((f, start + HEADER + len)))
    }
}

/// How many pad bytes `data` starts with.
pub fn skip_padding(data: &[u8]) -> usize {
    data.iter().take_while(|&&b| b == PAD).count()
}

fn header(ty: u8, stream: u32, len: usize) -> [u8; HEADER] {
    let s = stream.to_be_bytes();
    let l = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [ty, s[0], s[1], s[2], s[3], l[0], l[1]]
}

fn push_u64(buf: &mut Vec<u8>, ty: u8, n: u64) {
    buf.extend_from_slice(&header(ty, 0, 8));
    buf.extend_from_slice(&n.to_be_bytes());
}

/// The padding and hello-like frame an end sends when it starts: [`SYNC_PADDING`] pad
/// bytes, then `frame`.
pub fn synced(frame: Frame<'_>) -> Vec<u8> {
    let mut b = vec![PAD; SYNC_PADDING];
    frame.push(&mut b);
    b
}

/// Where the encoding of `frame` first occurs in `data` (a host looking for the answer
/// to its hello among whatever an earlier peer left on the port).
pub fn find(data: &[u8], frame: Frame<'_>) -> Option<usize> {
    let needle = frame.encode();
    data.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello(0x0102_0304_0506_0708),
            Frame::HelloAck(7),
            Frame::Boot(u64::MAX),
            Frame::Open(1),
            Frame::Data(2, b"hello"),
            Frame::Data(3, &[]),
            Frame::Fin(4),
            Frame::Close(u32::MAX),
            Frame::Credit(5, WINDOW),
        ];
        let mut all = Vec::new();
        for f in frames {
            let enc = f.encode();
            assert_eq!(Frame::parse(&enc), Ok(Some((f, enc.len()))));
            all.push(PAD);
            all.extend_from_slice(&enc);
        }
        let mut at = 0;
        for f in frames {
            let (got, used) = Frame::parse(&all[at..]).unwrap().unwrap();
            assert_eq!(got, f);
            at += used;
        }
        assert_eq!(at, all.len());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let enc = Frame::Data(9, b"abcdef").encode();
        for cut in 0..enc.len() {
            assert_eq!(Frame::parse(&enc[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(Frame::parse(&[PAD; 10]), Ok(None));
        assert_eq!(skip_padding(&[PAD, PAD, 1]), 2);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            Frame::parse(&[0x7f, 0, 0, 0, 1, 0, 0]),
            Err(MuxError::UnknownType(0x7f))
        );
        let bad_open = [T_OPEN, 0, 0, 0, 1, 0, 1, 9];
        assert!(matches!(
            Frame::parse(&bad_open),
            Err(MuxError::BadPayload { ty: T_OPEN, .. })
        ));
        let bad_credit = [T_CREDIT, 0, 0, 0, 1, 0, 2, 0, 1];
        assert!(Frame::parse(&bad_credit).is_err());
        let bad_hello = [T_HELLO, 0, 0, 0, 0, 0, 1, 1];
        assert!(Frame::parse(&bad_hello).is_err());
    }

    /// Whatever frame a dead peer was in the middle of, the padding ahead of a hello ends
    /// it, and the hello parses.
    #[test]
    fn padding_resynchronises_after_a_torn_frame() {
        let torn = Frame::Data(1, &[0xab; MAX_DATA]).encode();
        for cut in [1, 3, HEADER, HEADER + 100, torn.len() - 1] {
            let mut stream = torn[..cut].to_vec();
            stream.extend_from_slice(&synced(Frame::Hello(42)));
            let mut at = 0;
            let mut seen = Vec::new();
            while let Ok(Some((f, used))) = Frame::parse(&stream[at..]) {
                seen.push(format!("{f:?}"));
                at += used;
            }
            // The torn frame may parse as garbage data, or not at all; the hello is last.
            assert!(
                seen.last().is_some_and(|s| s == "Hello(42)"),
                "cut {cut}: {seen:?}"
            );
        }
    }

    #[test]
    fn finds_an_answer_among_leftovers() {
        let mut data = vec![0x11, 0, 0, 0];
        data.extend_from_slice(&synced(Frame::HelloAck(99)));
        let at = find(&data, Frame::HelloAck(99)).expect("found");
        assert_eq!(
            Frame::parse(&data[at..]).unwrap().unwrap().0,
            Frame::HelloAck(99)
        );
        assert_eq!(find(&data, Frame::HelloAck(98)), None);
    }
}
