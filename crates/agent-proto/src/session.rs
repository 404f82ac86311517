//! Frames between the terminal engine and a session daemon (docs/terminal-protocol.md):
//! typed, in both directions, decoded from borrowed payloads so bulk output is sliced, not
//! copied.

use crate::frame::{self, FrameError};

/// Gateway → daemon: bytes typed into the terminal.
pub const T_INPUT: u8 = 0x01;
/// Gateway → daemon: rows u16, cols u16.
pub const T_RESIZE: u8 = 0x02;
/// Gateway → daemon: tag u32; answered in order by [`T_SNAPSHOT`].
pub const T_SNAPSHOT_REQ: u8 = 0x03;
/// Gateway → daemon: end the session (hang up the shell).
pub const T_KILL: u8 = 0x04;
/// Gateway → daemon: hand me the pty (answered by [`T_DIRECT`]); only after a hello that
/// offers [`HELLO_DIRECT`], on a connection that passes descriptors.
pub const T_DIRECT_REQ: u8 = 0x05;
/// Gateway → daemon, direct mode: bytes the gateway read from the pty, for the screen model.
pub const T_COPY: u8 = 0x06;
/// Daemon → gateway: shell pid u32, rows u16, cols u16, flags u8; first frame of every
/// connection.
pub const T_HELLO: u8 = 0x80;
/// Hello flag: the daemon can hand the pty to the gateway.
pub const HELLO_DIRECT: u8 = 0x01;
/// Daemon → gateway: bytes the pty printed.
pub const T_OUTPUT: u8 = 0x81;
/// Daemon → gateway: tag u32, then escape sequences that repaint the current screen.
pub const T_SNAPSHOT: u8 = 0x82;
/// Daemon → gateway: exit status i32 of the shell; the session is over.
pub const T_EXIT: u8 = 0x83;
/// Daemon → gateway: empty; carries the pty master (SCM_RIGHTS). From here on the gateway
/// reads and writes the pty itself and sends what it read back in [`T_COPY`] frames; the
/// daemon reads the pty again once the connection ends.
pub const T_DIRECT: u8 = 0x84;

/// Largest frame the daemon accepts (input, copies).
pub const MAX_TO_DAEMON: usize = 64 * 1024;
/// Largest frame the gateway accepts (a snapshot of a 1000×1000 screen fits); anything
/// larger is an attack or a bug and ends the terminal.
pub const MAX_FROM_DAEMON: usize = 4 << 20;
/// Largest terminal side, in cells.
pub const MAX_DIM: u16 = 1000;

/// The first frame of every daemon connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub shell_pid: u32,
    pub rows: u16,
    pub cols: u16,
    /// The daemon offers to hand over its pty ([`T_DIRECT_REQ`]).
    pub direct: bool,
}

/// Gateway → daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToDaemon<'a> {
    Input(&'a [u8]),
    Resize { rows: u16, cols: u16 },
    SnapshotReq { tag: u32 },
    Kill,
    DirectReq,
    Copy(&'a [u8]),
}

/// Daemon → gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromDaemon<'a> {
    Hello(Hello),
    Output(&'a [u8]),
    Snapshot { tag: u32, screen: &'a [u8] },
    Exit { status: i32 },
    Direct,
}

fn bad(tag: u8, p: &[u8], why: &'static str) -> FrameError {
    FrameError::BadPayload {
        tag,
        len: p.len(),
        why,
    }
}

fn u16_pair(tag: u8, p: &[u8]) -> Result<(u16, u16), FrameError> {
    match *p {
        [a, b, c, d] => Ok((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))),
        _ => Err(bad(tag, p, "expected rows u16 and cols u16")),
    }
}

fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn push_size(buf: &mut Vec<u8>, tag: u8, rows: u16, cols: u16) {
    let [r0, r1] = rows.to_be_bytes();
    let [c0, c1] = cols.to_be_bytes();
    frame::push(buf, tag, &[r0, r1, c0, c1]);
}

impl<'a> ToDaemon<'a> {
    pub fn parse(tag: u8, p: &'a [u8]) -> Result<Self, FrameError> {
        Ok(match tag {
            T_INPUT => Self::Input(p),
            T_RESIZE => {
                let (rows, cols) = u16_pair(tag, p)?;
                Self::Resize { rows, cols }
            }
            T_SNAPSHOT_REQ if p.len() == 4 => Self::SnapshotReq {
                tag: be_u32(p).unwrap_or(0),
            },
            T_SNAPSHOT_REQ => return Err(bad(tag, p, "expected a u32 tag")),
            T_KILL => Self::Kill,
            T_DIRECT_REQ if p.is_empty() => Self::DirectReq,
            T_DIRECT_REQ => return Err(bad(tag, p, "expected no payload")),
            T_COPY => Self::Copy(p),
            _ => return Err(FrameError::UnknownTag(tag)),
        })
    }

    pub fn push(&self, buf: &mut Vec<u8>) {
        match *self {
            Self::Input(d) => frame::push(buf, T_INPUT, d),
            Self::Resize { rows, cols } => push_size(buf, T_RESIZE, rows, cols),
            Self::SnapshotReq { tag } => frame::push(buf, T_SNAPSHOT_REQ, &tag.to_be_bytes()),
            Self::Kill => frame::push(buf, T_KILL, &[]),
            Self::DirectReq => frame::push(buf, T_DIRECT_REQ, &[]),
            Self::Copy(d) => frame::push(buf, T_COPY, d),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.push(&mut b);
        b
    }
}

impl<'a> FromDaemon<'a> {
    pub fn parse(tag: u8, p: &'a [u8]) -> Result<Self, FrameError> {
        Ok(match tag {
            T_HELLO => {
                if p.len() < 8 {
                    return Err(bad(tag, p, "expected pid u32, rows u16, cols u16"));
                }
                let (rows, cols) = u16_pair(tag, &p[4..8])?;
                Self::Hello(Hello {
                    shell_pid: be_u32(p).unwrap_or(0),
                    rows,
                    cols,
                    direct: p.get(8).is_some_and(|f| f & HELLO_DIRECT != 0),
                })
            }
            T_OUTPUT => Self::Output(p),
            T_SNAPSHOT => match be_u32(p) {
                Some(t) => Self::Snapshot {
                    tag: t,
                    screen: &p[4..],
                },
                None => return Err(bad(tag, p, "expected a u32 tag first")),
            },
            T_EXIT => Self::Exit {
                status: be_u32(p).map_or(-1, |v| v as i32),
            },
            T_DIRECT if p.is_empty() => Self::Direct,
            T_DIRECT => return Err(bad(tag, p, "expected no payload")),
            _ => return Err(FrameError::UnknownTag(tag)),
        })
    }

    pub fn push(&self, buf: &mut Vec<u8>) {
        match *self {
            Self::Hello(h) => {
                let mut p = h.shell_pid.to_be_bytes().to_vec();
                p.extend_from_slice(&h.rows.to_be_bytes());
                p.extend_from_slice(&h.cols.to_be_bytes());
                p.push(if h.direct { HELLO_DIRECT } else { 0 });
                frame::push(buf, T_HELLO, &p);
            }
            Self::Output(d) => frame::push(buf, T_OUTPUT, d),
            Self::Snapshot { tag, screen } => {
                buf.extend_from_slice(&frame::header(T_SNAPSHOT, 4 + screen.len()));
                buf.extend_from_slice(&tag.to_be_bytes());
                buf.extend_from_slice(screen);
            }
            Self::Exit { status } => frame::push(buf, T_EXIT, &status.to_be_bytes()),
            Self::Direct => frame::push(buf, T_DIRECT, &[]),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.push(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_frames_round_trip() {
        for f in [
            ToDaemon::Input(b"ls\r"),
            ToDaemon::Resize {
                rows: 40,
                cols: 120,
            },
            ToDaemon::SnapshotReq { tag: 7 },
            ToDaemon::Kill,
            ToDaemon::DirectReq,
            ToDaemon::Copy(b"\x1b[1mhi"),
        ] {
            let b = f.encode();
            let (tag, p, _) = frame::split(&b, MAX_TO_DAEMON).unwrap().unwrap();
            assert_eq!(ToDaemon::parse(tag, p).unwrap(), f);
        }
    }

    #[test]
    fn daemon_frames_round_trip() {
        for f in [
            FromDaemon::Hello(Hello {
                shell_pid: 9,
                rows: 24,
                cols: 80,
                direct: true,
            }),
            FromDaemon::Hello(Hello {
                shell_pid: 9,
                rows: 24,
                cols: 80,
                direct: false,
            }),
            FromDaemon::Output(b"hello\r\n"),
            FromDaemon::Snapshot {
                tag: 3,
                screen: b"\x1bc$ ",
            },
            FromDaemon::Exit { status: 130 },
            FromDaemon::Direct,
        ] {
            let b = f.encode();
            let (tag, p, _) = frame::split(&b, MAX_FROM_DAEMON).unwrap().unwrap();
            assert_eq!(FromDaemon::parse(tag, p).unwrap(), f);
        }
    }

    #[test]
    fn an_old_hello_without_flags_offers_nothing() {
        let p = [0, 0, 0, 5, 0, 24, 0, 80];
        assert_eq!(
            FromDaemon::parse(T_HELLO, &p).unwrap(),
            FromDaemon::Hello(Hello {
                shell_pid: 5,
                rows: 24,
                cols: 80,
                direct: false
            })
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(FromDaemon::parse(T_HELLO, &[1, 2]).is_err());
        assert!(FromDaemon::parse(T_SNAPSHOT, &[1]).is_err());
        assert!(FromDaemon::parse(T_DIRECT, &[1]).is_err());
        assert!(FromDaemon::parse(T_INPUT, &[]).is_err());
        assert!(ToDaemon::parse(T_RESIZE, &[0; 5]).is_err());
        assert!(ToDaemon::parse(T_SNAPSHOT_REQ, &[]).is_err());
        assert!(ToDaemon::parse(T_OUTPUT, &[]).is_err());
        // Any bytes at all: a decode never panics.
        for tag in 0..=255u8 {
            for len in 0..10 {
                let p = vec![0xff; len];
                let _ = FromDaemon::parse(tag, &p);
                let _ = ToDaemon::parse(tag, &p);
            }
        }
    }
}
