//! The agent protocol's decoders, fed what a hostile machine (or a broken host) could
//! send: the frame layer (`frame::split`/`peek`/`read_blocking`), every typed frame of
//! framed execs and terminal sessions, the JSON requests and replies (exec, session, check
//! suites and their outcomes) and the VM serial port's multiplexer. No panic, no payload
//! past the limit asked for, and everything that decodes re-encodes to something that
//! decodes to the same thing (frames byte for byte).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rnr_agent_proto::check::{Check, CheckKind, Suite};
use rnr_agent_proto::control::{self, ExecFrame};
use rnr_agent_proto::session::{FromDaemon, ToDaemon};
use rnr_agent_proto::{frame, mux};

/// The typed decoders of one frame: what decodes must come back through its encoder.
fn typed(tag: u8, payload: &[u8]) {
    if let Ok(f) = ExecFrame::parse(tag, payload) {
        let enc = f.encode();
        let (t, p, rest) = frame::split(&enc, usize::MAX).unwrap().unwrap();
        assert!(rest.is_empty());
        assert_eq!(ExecFrame::parse(t, p), Ok(f));
    }
    if let Ok(f) = ToDaemon::parse(tag, payload) {
        let enc = f.encode();
        let (t, p, _) = frame::split(&enc, usize::MAX).unwrap().unwrap();
        assert_eq!(ToDaemon::parse(t, p), Ok(f));
    }
    if let Ok(f) = FromDaemon::parse(tag, payload) {
        let enc = f.encode();
        let (t, p, _) = frame::split(&enc, usize::MAX).unwrap().unwrap();
        assert_eq!(FromDaemon::parse(t, p), Ok(f));
    }
    // Requests and replies, whatever the tag says.
    if let Ok(req) = control::parse_request(control::T_REQUEST, payload) {
        let enc = control::encode_request(&req);
        let (t, p, _) = frame::split(&enc, usize::MAX).unwrap().unwrap();
        assert_eq!(control::parse_request(t, p).as_ref(), Ok(&req), "{req:?}");
    }
    if let Ok(reply) = control::parse_reply(control::T_REPLY, payload) {
        let enc = control::encode_reply(&reply);
        let (t, p, _) = frame::split(&enc, usize::MAX).unwrap().unwrap();
        assert_eq!(control::parse_reply(t, p).as_ref(), Ok(&reply), "{reply:?}");
    }
    if let Ok(suite) = serde_json::from_slice::<Suite>(payload) {
        let text = serde_json::to_vec(&suite).unwrap();
        assert_eq!(serde_json::from_slice::<Suite>(&text).unwrap(), suite);
    }
    if let Ok(check) = serde_json::from_slice::<Check>(payload) {
        let text = serde_json::to_vec(&check).unwrap();
        assert_eq!(serde_json::from_slice::<Check>(&text).unwrap(), check);
    }
    // A kind read by its name (as the exercise validator does) is the kind the tag names.
    if let Some(name) = CheckKind::NAMES.get(usize::from(tag) % CheckKind::NAMES.len()) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
            if let Ok(k) = CheckKind::deserialize_named(name, v) {
                assert_eq!(k.name(), *name);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, data)) = data.split_first() else {
        return;
    };
    // A small limit too, so that "too large" is reached.
    let max = if m & 1 == 0 {
        usize::from(m) * 16
    } else {
        4 << 20
    };

    // The frame layer: frames split off one by one, each as its header says, byte for byte
    // what `encode` makes of it; the blocking reader sees the same frames.
    let mut rest = data;
    let mut frames = Vec::new();
    loop {
        match frame::split(rest, max) {
            Ok(Some((tag, payload, after))) => {
                assert!(payload.len() <= max);
                let used = rest.len() - after.len();
                assert_eq!(used, frame::HEADER + payload.len());
                assert_eq!(frame::encode(tag, payload), rest[..used]);
                assert_eq!(frame::peek(rest, max), Ok(Some((tag, payload.len()))));
                frames.push((tag, payload));
                typed(tag, payload);
                rest = after;
            }
            Ok(None) => {
                if rest.len() >= frame::HEADER {
                    let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                    assert!(len <= max && rest.len() < frame::HEADER + len);
                }
                break;
            }
            Err(frame::FrameError::TooLarge { len, max: m, .. }) => {
                assert!(len > m && m == max);
                break;
            }
            Err(e) => panic!("split fails only on size: {e}"),
        }
    }
    let mut r = std::io::Cursor::new(data);
    for (tag, payload) in &frames {
        let (t, p) = frame::read_blocking(&mut r, max).unwrap().unwrap();
        assert_eq!((t, &p[..]), (*tag, *payload));
    }
    if let Ok(Some((_, p))) = frame::read_blocking(&mut r, max) {
        panic!("a frame split did not see: {} bytes", p.len());
    }
    // The whole input as one payload too (JSON lives there).
    typed(m, data);

    // The serial port's multiplexer: frames and the bytes they took, padding included.
    let mut at = 0;
    while let Ok(Some((f, used))) = mux::Frame::parse(&data[at..]) {
        assert!(used > 0 && at + used <= data.len());
        let enc = f.encode();
        assert_eq!(mux::Frame::parse(&enc), Ok(Some((f, enc.len()))));
        if let Some(i) = mux::find(&data[at..], f) {
            assert_eq!(mux::Frame::parse(&data[at + i..]).unwrap().unwrap().0, f);
        }
        at += used;
    }
});
