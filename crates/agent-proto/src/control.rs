//! The request that opens every agent connection, the agent's replies, and the frames of a
//! framed exec (a process whose stdio travels on the connection itself).

use crate::check::{Outcome, Suite};
use crate::frame::{self, FrameError};
use serde::{Deserialize, Serialize};

/// Host → agent: the connection's [`Request`], JSON.
pub const T_REQUEST: u8 = 0x10;
/// Agent → host: a [`Reply`], JSON. Descriptors may ride along (SCM_RIGHTS).
pub const T_REPLY: u8 = 0x11;
/// Host → agent, framed exec: bytes for the process's stdin; an empty payload closes it.
pub const T_STDIN: u8 = 0x20;
/// Host → agent, framed exec: rows `u16`, cols `u16` for the process's pty.
pub const T_EXEC_RESIZE: u8 = 0x21;
/// Host → agent, any exec: kill the process and everything it started.
pub const T_EXEC_KILL: u8 = 0x22;
/// Agent → host, framed exec: bytes the process wrote to stdout (or its pty).
pub const T_STDOUT: u8 = 0x30;
/// Agent → host, framed exec: bytes the process wrote to stderr.
pub const T_STDERR: u8 = 0x31;

/// Largest request the agent reads (argv and environment included).
pub const MAX_REQUEST: usize = 1 << 20;
/// Largest reply the host reads (a check suite's outcomes included).
pub const MAX_REPLY: usize = 4 << 20;
/// Largest stdio frame either side sends or accepts in a framed exec.
pub const MAX_STDIO_FRAME: usize = 64 * 1024;

/// Descriptor number of the listening socket `rnr-agent init` is handed by drivers that
/// bind the agent's socket outside the machine (native).
pub const LISTEN_FD: i32 = 3;
/// Abstract unix socket `rnr-agent init` listens on where no socket was handed to it
/// (Docker): `rnr-agent serve` reaches init through it and checks that its peer is PID 1.
pub const INIT_ABSTRACT_NAME: &str = "rnr-agent-init";

/// What a connection is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Exec(ExecRequest),
    Session(SessionRequest),
    Check(Suite),
}

/// How a process's stdio reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stdio {
    /// The host's ends ride along with [`Reply::Started`]: `[stdin, stdout, stderr]` pipes,
    /// or the pty master alone for a tty. Only on connections that pass descriptors.
    #[default]
    Passed,
    /// stdin/stdout/stderr travel as [`ExecFrame`]s on the connection.
    Framed,
}

/// A process to start in the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; a program without '/' is looked up in the `PATH` of the
    /// process's environment.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs added to the defaults (`PATH`, `TERM`, the user's `HOME`).
    #[serde(default)]
    pub env: Vec<String>,
    /// User name or uid, optionally `:group` or `:gid`, as the machine's own /etc/passwd
    /// and /etc/group know them (resolved inside the machine); root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `[rows, cols]` of a pty to run the process on; pipes when absent.
    #[serde(default)]
    pub tty: Option<[u16; 2]>,
    #[serde(default)]
    pub stdio: Stdio,
}

impl ExecRequest {
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            env: Vec::new(),
            user: None,
            cwd: None,
            tty: None,
            stdio: Stdio::Passed,
        }
    }
}

/// A terminal session to attach to, started first when it does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// 1-64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Size of the pty when the session is started now.
    pub rows: u16,
    pub cols: u16,
    /// [`Stdio::Passed`]: the daemon's own connection rides along with the reply and the
    /// host talks to the daemon directly; [`Stdio::Framed`]: the agent copies the session's
    /// frames between this connection and the daemon.
    #[serde(default)]
    pub stdio: Stdio,
}

/// Whether `id` may name a session.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Agent → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The process runs; `pid` is in the machine's pid namespace. With
    /// [`Stdio::Passed`] its stdio descriptors ride along.
    Started { pid: i32 },
    /// The request could not be carried out (program not found, unknown user, bad
    /// session id…): the message says why, for the learner or operator to read.
    Failed { message: String },
    /// The process ended: its exit code, or 128 + signal.
    Exited { code: i64 },
    /// Attached to the session: from here on session frames flow, on this connection or
    /// (where descriptors pass) on the session daemon's connection that rides along.
    Connected,
    /// A check suite's outcomes, one per check, in the suite's order.
    Checked { outcomes: Vec<Outcome> },
}

impl Reply {
    /// Number of descriptors that ride along with this reply on a connection that passes
    /// them, given the request it answers.
    pub fn fds_expected(&self, req: &Request) -> std::ops::RangeInclusive<usize> {
        match (self, req) {
            (Reply::Started { .. }, Request::Exec(e)) if e.stdio == Stdio::Passed => {
                if e.tty.is_some() {
                    1..=1
                } else {
                    3..=3
                }
            }
            (Reply::Connected, _) => 0..=1,
            _ => 0..=0,
        }
    }
}

/// A frame of a framed exec, either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFrame<'a> {
    /// To the process's stdin; empty closes it.
    Stdin(&'a [u8]),
    Resize {
        rows: u16,
        cols: u16,
    },
    Kill,
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

impl<'a> ExecFrame<'a> {
    /// Decodes a frame of a framed exec; replies (`T_REPLY`) are not exec frames.
    pub fn parse(tag: u8, p: &'a [u8]) -> Result<Self, FrameError> {
        Ok(match tag {
            T_STDIN => Self::Stdin(p),
            T_EXEC_RESIZE => {
                let [r0, r1, c0, c1] =
                    <[u8; 4]>::try_from(p).map_err(|_| FrameError::BadPayload {
                        tag,
                        len: p.len(),
                        why: "a resize is rows u16 and cols u16",
                    })?;
                Self::Resize {
                    rows: u16::from_be_bytes([r0, r1]),
                    cols: u16::from_be_bytes([c0, c1]),
                }
            }
            T_EXEC_KILL => Self::Kill,
            T_STDOUT => Self::Stdout(p),
            T_STDERR => Self::Stderr(p),
            _ => return Err(FrameError::UnknownTag(tag)),
        })
    }

    pub fn push(&self, buf: &mut Vec<u8>) {
        match *self {
            Self::Stdin(d) => frame::push(buf, T_STDIN, d),
            Self::Resize { rows, cols } => {
                let [r0, r1] = rows.to_be_bytes();
                let [c0, c1] = cols.to_be_bytes();
                frame::push(buf, T_EXEC_RESIZE, &[r0, r1, c0, c1]);
            }
            Self::Kill => frame::push(buf, T_EXEC_KILL, &[]),
            Self::Stdout(d) => frame::push(buf, T_STDOUT, d),
            Self::Stderr(d) => frame::push(buf, T_STDERR, d),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.push(&mut b);
        b
    }
}

/// The request frame for `req`.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut b = Vec::new();
    frame::push_json(&mut b, T_REQUEST, req);
    b
}

/// The reply frame for `reply`.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut b = Vec::new();
    frame::push_json(&mut b, T_REPLY, reply);
    b
}

/// Decodes a request frame.
pub fn parse_request(tag: u8, payload: &[u8]) -> Result<Request, FrameError> {
    if tag != T_REQUEST {
        return Err(FrameError::Unexpected {
            expected: T_REQUEST,
            got: tag,
        });
    }
    frame::parse_json(tag, payload)
}

/// Decodes a reply frame.
pub fn parse_reply(tag: u8, payload: &[u8]) -> Result<Reply, FrameError> {
    if tag != T_REPLY {
        return Err(FrameError::Unexpected {
            expected: T_REPLY,
            got: tag,
        });
    }
    frame::parse_json(tag, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Check, Status};

    fn round_trip_request(req: Request) {
        let bytes = encode_request(&req);
        let (tag, payload, rest) = frame::split(&bytes, MAX_REQUEST).unwrap().unwrap();
        assert!(rest.is_empty());
        assert_eq!(parse_request(tag, payload).unwrap(), req);
    }

    #[test]
    fn every_request_round_trips() {
        let mut exec = ExecRequest::new(vec!["sh".into(), "-c".into(), "echo hi".into()]);
        exec.env = vec!["A=b".into()];
        exec.user = Some("nobody:nogroup".into());
        exec.cwd = Some("/tmp".into());
        exec.tty = Some([24, 80]);
        exec.stdio = Stdio::Framed;
        round_trip_request(Request::Exec(exec));
        round_trip_request(Request::Session(SessionRequest {
            id: "t-abc".into(),
            rows: 30,
            cols: 100,
            stdio: Stdio::Framed,
        }));
        round_trip_request(Request::Check(Suite {
            checks: vec![Check {
                name: "x".into(),
                kind: "file".into(),
                path: Some("/etc/x".into()),
                ..Default::default()
            }],
        }));
    }

    #[test]
    fn every_reply_round_trips() {
        for reply in [
            Reply::Started { pid: 42 },
            Reply::Failed {
                message: "no such user \"bob\"".into(),
            },
            Reply::Exited { code: 137 },
            Reply::Connected,
            Reply::Checked {
                outcomes: vec![Outcome {
                    name: "x".into(),
                    status: Status::Passed,
                    detail: "ok".into(),
                    message: None,
                    duration_ms: 3,
                }],
            },
        ] {
            let bytes = encode_reply(&reply);
            let (tag, payload, _) = frame::split(&bytes, MAX_REPLY).unwrap().unwrap();
            assert_eq!(parse_reply(tag, payload).unwrap(), reply);
        }
    }

    #[test]
    fn a_minimal_exec_request_takes_defaults() {
        let req: Request = serde_json::from_str(r#"{"exec":{"argv":["true"]}}"#).unwrap();
        assert_eq!(req, Request::Exec(ExecRequest::new(vec!["true".into()])));
    }

    #[test]
    fn exec_frames_round_trip_and_reject_garbage() {
        for f in [
            ExecFrame::Stdin(b"abc"),
            ExecFrame::Stdin(b""),
            ExecFrame::Resize { rows: 3, cols: 500 },
            ExecFrame::Kill,
            ExecFrame::Stdout(b"out"),
            ExecFrame::Stderr(b"err"),
        ] {
            let bytes = f.encode();
            let (tag, p, _) = frame::split(&bytes, MAX_STDIO_FRAME).unwrap().unwrap();
            assert_eq!(ExecFrame::parse(tag, p).unwrap(), f);
        }
        assert!(ExecFrame::parse(T_EXEC_RESIZE, &[1, 2, 3]).is_err());
        assert_eq!(
            ExecFrame::parse(0x99, &[]),
            Err(FrameError::UnknownTag(0x99))
        );
        assert!(parse_reply(T_REQUEST, b"{}").is_err());
    }

    #[test]
    fn fds_ride_along_only_where_the_request_says() {
        let mut e = ExecRequest::new(vec!["true".into()]);
        let started = Reply::Started { pid: 1 };
        assert_eq!(started.fds_expected(&Request::Exec(e.clone())), 3..=3);
        e.tty = Some([1, 1]);
        assert_eq!(started.fds_expected(&Request::Exec(e.clone())), 1..=1);
        e.stdio = Stdio::Framed;
        assert_eq!(started.fds_expected(&Request::Exec(e)), 0..=0);
    }

    #[test]
    fn session_ids_are_a_safe_alphabet() {
        assert!(valid_session_id("t-abc_1"));
        for bad in ["", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }
}
