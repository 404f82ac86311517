//! The terminal socket as a hostile browser sees it: any bytes after the handshake, with
//! or without permessage-deflate, as owner or viewer, read through the gateway's stack and
//! its message handling. Whatever the bytes: no panic; every message is within the limits
//! (data at most the 65 KiB input limit, control frames at most 125 bytes); a broken
//! protocol ends with one of the documented closes (1002, 1007, 1009) and a reason that
//! fits a close frame; a viewer's keystrokes and resizes never reach the shell; a text
//! message is one of the control messages or closes the socket with 4000.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rnr_terminal::fuzzing::{classify, read_client, Inbound, MAX_MESSAGE};
use rnr_terminal::Role;
use tokio_tungstenite::tungstenite::Message;

/// A close frame carries a 2-byte code and at most 123 bytes of reason.
const MAX_REASON: usize = 123;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let deflate = flags & 1 != 0;
    let role = if flags & 2 != 0 {
        Role::Viewer
    } else {
        Role::Owner
    };
    let chunk = usize::from(flags >> 2) + 1;
    let got = read_client(wire, chunk, deflate);
    if let Some((code, reason)) = &got.end {
        assert!([1002, 1007, 1009].contains(code), "close {code}: {reason}");
        assert!(reason.len() <= MAX_REASON, "{reason:?}");
    }
    for (i, m) in got.messages.iter().enumerate() {
        match m {
            Message::Binary(b) => assert!(b.len() <= MAX_MESSAGE),
            Message::Text(t) => assert!(t.len() <= MAX_MESSAGE),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close(_) => assert_eq!(i + 1, got.messages.len(), "nothing after a close"),
            Message::Frame(_) => panic!("raw frames are never read"),
        }
        match (classify(m.clone(), role), m) {
            (Inbound::Input(b), Message::Binary(d)) => {
                assert_eq!(role, Role::Owner, "a viewer typed");
                assert_eq!(&b, d);
            }
            (Inbound::Input(_), m) => panic!("input from {m:?}"),
            (Inbound::Resize { .. }, Message::Text(t)) => {
                assert_eq!(role, Role::Owner, "a viewer resized");
                let v: serde_json::Value = serde_json::from_str(t).expect("JSON");
                assert_eq!(v["t"], "resize");
            }
            (Inbound::Pause | Inbound::Resume, Message::Text(_)) => {}
            (Inbound::Close(code, reason), Message::Text(_)) => {
                assert_eq!(code, 4000);
                assert!(reason.len() <= MAX_REASON, "{reason:?}");
            }
            (Inbound::Leave, Message::Close(_)) => {}
            (Inbound::Ignore, Message::Ping(_) | Message::Pong(_)) => {}
            (Inbound::Ignore, Message::Binary(_) | Message::Text(_)) => {
                assert_eq!(role, Role::Viewer);
            }
            (what, m) => panic!("{m:?} read as {what:?}"),
        }
    }
});
