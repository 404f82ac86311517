//! Messages of the host ⇄ `rnr-agent init` exec protocol. One file, compiled into both the
//! agent and the native driver (`#[path]`), so the two sides can never disagree; the agent
//! stays free of workspace crates.
//!
//! The native driver binds a unix stream socket in the machine's host-side directory (never
//! visible inside the machine) and hands the listening descriptor to the machine's PID 1,
//! `rnr-agent init`, as fd [`LISTEN_FD`]. One connection per process:
//!
//! 1. host → agent: one [`Request`] as a JSON line.
//! 2. agent → host: one [`Reply`] line. [`Reply::Started`] carries, with SCM_RIGHTS, the
//!    host's ends of the process's stdio: `[stdin, stdout, stderr]` pipes, or the pty
//!    master alone for a tty. The host reads and writes them directly; the agent relays
//!    nothing.
//! 3. agent → host: [`Reply::Exited`] when the process has ended.
//!
//! At any time the host may send [`KILL`] to kill the process and its descendants. Closing
//! the connection does not kill the process (a `crun exec` whose caller died did not
//! either).

use serde::{Deserialize, Serialize};

/// Descriptor number of the listening socket in `rnr-agent init`.
pub const LISTEN_FD: i32 = 3;

/// Largest request line the agent reads.
pub const MAX_REQUEST: usize = 1 << 20;

/// Host → agent, after the request: kill the process and everything it started.
pub const KILL: &[u8] = b"kill\n";

/// A process to start in the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Program and arguments; a program without '/' is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The whole environment, `KEY=VALUE`.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Working directory; `/` when absent.
    pub cwd: Option<String>,
    /// `[rows, cols]` of a pty to run the process on; pipes when absent.
    pub tty: Option<[u16; 2]>,
    /// A terminal session id: `argv` is the agent's own `session attach` for it, and
    /// instead of running a relay the agent hands over a connection to the session's
    /// daemon ([`Reply::Connected`]), starting the daemon with `argv` first if needed.
    #[serde(default)]
    pub session: Option<String>,
}

/// Agent → host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The program runs (its stdio descriptors ride along); `pid` is in the machine's pid
    /// namespace.
    Started { pid: i32 },
    /// The program could not be started (not found, not executable, bad user or cwd).
    Failed { message: String },
    /// The process ended: its exit code, or 128 + signal.
    Exited { code: i64 },
    /// The connection to the session daemon rides along (SCM_RIGHTS): it speaks the
    /// session protocol exactly as `session attach`'s stdio would, one relay fewer.
    Connected,
}
