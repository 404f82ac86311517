//! WebSocket framing and permessage-deflate, browser → gateway and back: messages a
//! well-behaved client would send (text, binary, pings; fragmented at any sizes, pings
//! between fragments, compressed by an independent deflate at any level, any mask), read
//! through the gateway's own stack, must come out exactly as sent, in order — or, past the
//! size limit or compressed without the extension, end with the documented close (1009,
//! 1002) after the messages before them. Gateway output compressed by `compress` must
//! inflate (with an independent inflater and with the gateway's own) to what it was, and be
//! smaller. Any `Sec-WebSocket-Extensions` offer is judged without a panic.

#![no_main]

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rnr_terminal::fuzzing::{compress, inflate, read_client, MAX_MESSAGE};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Arbitrary, Debug)]
enum Kind {
    Binary,
    Text,
    Ping,
}

#[derive(Arbitrary, Debug)]
struct Msg {
    kind: Kind,
    data: Vec<u8>,
    /// The data this many times over (up to 32): messages past the limit.
    repeat: u8,
    compress: bool,
    level: u8,
    /// Fragment lengths; what is left goes in the last one.
    fragments: Vec<u16>,
    mask: [u8; 4],
    ping_between: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    deflate: bool,
    chunk: u16,
    msgs: Vec<Msg>,
    close: Option<String>,
    offer: String,
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// One client frame: masked, lengths in their shortest form.
fn frame(wire: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
    wire.push(b0);
    match payload.len() {
        n if n < 126 => wire.push(0x80 | n as u8),
        n if n <= 0xffff => {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            wire.push(0x80 | 127);
            wire.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    wire.extend_from_slice(&mask);
    wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// RFC 7692 §7.2.1: deflate, sync flush, the 00 00 ff ff tail removed.
fn deflate(data: &[u8], level: u8) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(u32::from(level % 10)), false);
    let mut out = Vec::with_capacity(data.len() * 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends so");
    out.truncate(out.len() - 4);
    out
}

fn inflate_independently(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(input.len() * 8 + 1024);
    loop {
        let consumed = d.total_in() as usize;
        d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .expect("the gateway's output inflates");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

fuzz_target!(|input: Input| {
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mut want_end = None;
    for m in input.msgs.iter().take(8) {
        let mut data = m.data.repeat(usize::from(m.repeat % 33).max(1));
        // Server → client: what the gateway compresses, the browser must get back.
        if let Some(z) = compress(&data) {
            assert!(z.len() < data.len(), "compressed only when smaller");
            assert_eq!(inflate_independently(&z), data);
            assert_eq!(inflate(&z, data.len()).expect("own inflate"), data);
        }
        let (opcode, message) = match m.kind {
            Kind::Ping => {
                data.truncate(125);
                frame(&mut wire, FIN | 0x9, &data, m.mask);
                want.push(Message::Ping(data.into()));
                continue;
            }
            Kind::Binary => (0x2, Message::Binary(data.clone().into())),
            Kind::Text => {
                data = String::from_utf8_lossy(&data).into_owned().into_bytes();
                let text = String::from_utf8(data.clone()).expect("made valid");
                (0x1, Message::Text(text.into()))
            }
        };
        let payload = if m.compress {
            deflate(&data, m.level)
        } else {
            data.clone()
        };
        // Cut into fragments: each given length in turn, the rest in the last.
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut rest = &payload[..];
        for &len in m.fragments.iter().take(16) {
            let n = usize::from(len).min(rest.len());
            let (a, b) = rest.split_at(n);
            parts.push(a);
            rest = b;
        }
        parts.push(rest);
        for (i, part) in parts.iter().enumerate() {
            let mut b0 = if i == 0 { opcode } else { 0x0 };
            if i == 0 && m.compress {
                b0 |= RSV1;
            }
            if i + 1 == parts.len() {
                b0 |= FIN;
            }
            frame(&mut wire, b0, part, m.mask);
            if i == 0 && parts.len() > 1 && m.ping_between {
                frame(&mut wire, FIN | 0x9, b"between", m.mask);
                if !(m.compress && !input.deflate) {
                    want.push(Message::Ping(b"between".to_vec().into()));
                }
            }
        }
        if m.compress && !input.deflate {
            want_end = Some(1002);
            break;
        }
        if data.len() > MAX_MESSAGE || payload.len() > MAX_MESSAGE {
            want_end = Some(1009);
            break;
        }
        want.push(message);
    }
    if want_end.is_none() {
        if let Some(reason) = &input.close {
            let mut reason = reason.clone();
            while reason.len() > 123 {
                reason.pop();
            }
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.extend_from_slice(reason.as_bytes());
            frame(&mut wire, FIN | 0x8, &p, [1, 2, 3, 4]);
            want.push(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: reason.into(),
            })));
        }
    }
    let got = read_client(&wire, usize::from(input.chunk), input.deflate);
    let got_codes = got.end.as_ref().map(|(c, _)| *c);
    if want_end == Some(1009) {
        // A message over the limit may be refused as soon as its frames say so, before the
        // pings between them.
        assert_eq!(got_codes, Some(1009), "{:?}", got.end);
        assert!(want.starts_with(&got.messages) || got.messages.starts_with(&want));
    } else {
        assert_eq!(got_codes, want_end, "{:?}", got.end);
        assert_eq!(got.messages, want);
    }

    // Negotiation: never a panic; only ever a permessage-deflate offer is taken.
    if let Ok(v) = http::HeaderValue::from_str(&input.offer) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, v);
        if rnr_terminal::negotiate_deflate(&h) {
            assert!(input.offer.split(',').any(|o| o
                .split(';')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("permessage-deflate"))));
        }
    }
});
