//! The one frame format of every agent connection: tag `u8`, payload length `u32`
//! big-endian, payload. Decoding works on borrowed bytes, so a reader can slice payloads
//! out of what it read without copying them (bulk terminal output).

/// Bytes before the payload.
pub const HEADER: usize = 5;

/// What is wrong with bytes that claim to be a frame. The machine side may be hostile: every
/// malformed input is one of these, never a panic or an unbounded allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame {tag:#04x} of {len} bytes is larger than the {max} allowed")]
    TooLarge { tag: u8, len: usize, max: usize },
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("frame {tag:#04x} has a malformed payload of {len} bytes: {why}")]
    BadPayload {
        tag: u8,
        len: usize,
        why: &'static str,
    },
    #[error("frame {tag:#04x}: invalid JSON: {message}")]
    Json { tag: u8, message: String },
    #[error("expected frame {expected:#04x}, got {got:#04x}")]
    Unexpected { expected: u8, got: u8 },
}

/// The header of a frame with `len` payload bytes.
pub fn header(tag: u8, len: usize) -> [u8; HEADER] {
    let l = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [tag, l[0], l[1], l[2], l[3]]
}

/// Appends one frame to `buf`.
pub fn push(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    buf.reserve(HEADER + payload.len());
    buf.extend_from_slice(&header(tag, payload.len()));
    buf.extend_from_slice(payload);
}

/// One frame as a fresh buffer.
pub fn encode(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + payload.len());
    push(&mut b, tag, payload);
    b
}

/// Appends a frame whose payload is `value` as JSON.
pub fn push_json<T: serde::Serialize>(buf: &mut Vec<u8>, tag: u8, value: &T) {
    let start = buf.len();
    buf.extend_from_slice(&header(tag, 0));
    // Serializing plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, value);
    let len = buf.len() - start - HEADER;
    buf[start..start + HEADER].copy_from_slice(&header(tag, len));
}

/// Parses a JSON payload of frame `tag`.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(
    tag: u8,
    payload: &'a [u8],
) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Json {
        tag,
        message: e.to_string(),
    })
}

/// The frame at the front of `data`: `Ok(Some((tag, payload_len)))` when all of it is
/// there, `Ok(None)` when more bytes are needed, an error when it claims more than `max`
/// payload bytes (refused before anything is buffered for it).
pub fn peek(data: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if data.len() < HEADER {
        return Ok(None);
    }
    let tag = data[0];
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { tag, len, max });
    }
    Ok((data.len() >= HEADER + len).then_some((tag, len)))
}

/// A frame split off the front of some bytes: `(tag, payload, rest)`.
pub type Split<'a> = (u8, &'a [u8], &'a [u8]);

/// Splits the frame at the front of `data` off.
pub fn split(data: &[u8], max: usize) -> Result<Option<Split<'_>>, FrameError> {
    Ok(peek(data, max)?.map(|(tag, len)| {
        let (frame, rest) = data.split_at(HEADER + len);
        (tag, &frame[HEADER..], rest)
    }))
}

/// Reads one whole frame from a blocking reader (the agent's side), refusing payloads over
/// `max`. `Ok(None)` at a clean end of stream before a frame starts.
pub fn read_blocking(
    r: &mut impl std::io::Read,
    max: usize,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (tag, len) = match peek(&h, max) {
        Ok(Some(_)) | Ok(None) => (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize),
        Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((tag, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_at_any_byte() {
        let mut buf = Vec::new();
        push(&mut buf, 0x01, b"hello");
        push(&mut buf, 0x02, b"");
        push_json(&mut buf, 0x10, &serde_json::json!({"a": 1}));
        for cut in 0..buf.len() {
            // Every prefix is either incomplete or yields the first frame intact.
            match split(&buf[..cut], 1 << 20).unwrap() {
                None => assert!(cut < HEADER + 5),
                Some((tag, payload, _)) => {
                    assert_eq!((tag, payload), (0x01, &b"hello"[..]));
                }
            }
        }
        let (t1, p1, rest) = split(&buf, 64).unwrap().unwrap();
        let (t2, p2, rest) = split(rest, 64).unwrap().unwrap();
        let (t3, p3, rest) = split(rest, 64).unwrap().unwrap();
        assert_eq!(
            (t1, p1, t2, p2, t3),
            (0x01, &b"hello"[..], 0x02, &b""[..], 0x10)
        );
        let v: serde_json::Value = parse_json(t3, p3).unwrap();
        assert_eq!(v["a"], 1);
        assert!(rest.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let h = header(0x81, 5 << 20);
        assert_eq!(
            peek(&h, 4 << 20),
            Err(FrameError::TooLarge {
                tag: 0x81,
                len: 5 << 20,
                max: 4 << 20
            })
        );
        let mut r = std::io::Cursor::new(h.to_vec());
        let err = read_blocking(&mut r, 4 << 20).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn blocking_reads_see_clean_and_unclean_ends() {
        let mut r = std::io::Cursor::new(Vec::new());
        assert!(read_blocking(&mut r, 16).unwrap().is_none());
        let mut r = std::io::Cursor::new(encode(7, b"abc")[..6].to_vec());
        assert!(read_blocking(&mut r, 16).is_err());
        let mut r = std::io::Cursor::new(encode(7, b"abc"));
        assert_eq!(
            read_blocking(&mut r, 16).unwrap(),
            Some((7, b"abc".to_vec()))
        );
    }

    #[test]
    fn bad_json_names_the_frame() {
        let err = parse_json::<serde_json::Value>(0x11, b"{nope").unwrap_err();
        assert!(matches!(err, FrameError::Json { tag: 0x11, .. }), "{err}");
    }
}
