//! The protocol between the host (drivers, the terminal engine, the checker) and
//! `rnr-agent`, the static binary inside every machine. One crate so that both sides are
//! compiled from the same definitions and can never disagree.
//!
//! Everything on an agent connection is a frame: one tag byte, a big-endian `u32` payload
//! length, the payload ([`frame`]). A connection starts with one [`control::Request`]
//! from the host; what follows depends on it:
//!
//! * **exec** ([`control::ExecRequest`]): the agent starts a process. Where the connection
//!   can carry descriptors ([`control::Stdio::Passed`]) the process's stdio rides along with
//!   the `started` reply and the host reads and writes it directly; otherwise
//!   ([`control::Stdio::Framed`]) stdin, stdout and stderr travel as frames on the
//!   connection itself. Either way the exit code closes the exchange.
//! * **session** ([`control::SessionRequest`]): a terminal session that outlives every
//!   connection. After the `connected` reply the connection (or, where descriptors pass,
//!   the session daemon's own connection that rides along) speaks [`session`] frames.
//! * **check** ([`check::Suite`]): a whole check suite is evaluated inside the machine and
//!   the outcomes come back in one reply.
//!
//! How a connection is made is the driver's business (`rnr_driver::AgentChannel`): a
//! host-only unix socket on the native driver, the stdio of `rnr-agent serve` on Docker, a
//! stream of the serial port's multiplexer ([`mux`]) on a VM.

pub mod check;
pub mod control;
pub mod fdpass;
mod fields;
pub mod frame;
pub mod mux;
pub mod session;

pub use frame::FrameError;

/// Where drivers make the agent visible, read-only, in every machine.
pub const AGENT_PATH: &str = "/.rnr/rnr-agent";
