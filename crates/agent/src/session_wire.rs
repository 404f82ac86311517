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
/// Daemon → gateway: shell pid u32, rows u16, cols u16; first frame of every connection.
pub const T_HELLO: u8 = 0x80;
/// Daemon → gateway: bytes the pty printed.
pub const T_OUTPUT: u8 = 0x81;
/// Daemon → gateway: tag u32, then escape sequences that repaint the current screen.
pub const T_SNAPSHOT: u8 = 0x82;
/// Daemon → gateway: exit status i32 of the shell; the session is over.
pub const T_EXIT: u8 = 0x83;
