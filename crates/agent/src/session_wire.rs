//! Frame tags of the gateway ⇄ session-daemon protocol (docs/terminal-protocol.md). One
//! file, compiled into both the agent and the gateway (`#[path]`), so the two sides can never
//! disagree; the agent stays free of workspace crates.

/// Gateway → daemon: bytes typed into the terminal.
pub const T_INPUT: u8 = 0x01;
/// Gateway → daemon: rows u16, cols u16.
pub const T_RESIZE: u8 = 0x02;
/// Gateway → daemon: tag u32; answered in order by [`T_SNAPSHOT`].
pub const T_SNAPSHOT_REQ: u8 = 0x03;
/// Gateway → daemon: end the session (hang up the shell).
pub const T_KILL: u8 = 0x04;
/// Gateway → daemon: hand me the pty (answered by [`T_DIRECT`]); only after a hello that
/// offers [`HELLO_DIRECT`].
pub const T_DIRECT_REQ: u8 = 0x05;
/// Gateway → daemon, direct mode: bytes the gateway read from the pty, for the screen model.
pub const T_COPY: u8 = 0x06;
/// Daemon → gateway: shell pid u32, rows u16, cols u16, then (newer daemons) a flags byte;
/// first frame of every connection.
pub const T_HELLO: u8 = 0x80;
/// Hello flag: the daemon can hand the pty to the gateway (the connection passes fds).
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
