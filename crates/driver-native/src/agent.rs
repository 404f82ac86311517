//! The machine's agent channel: `rnr-agent init`, the machine's PID 1, listens on a unix
//! socket the driver bound in the machine's host-side directory (never visible inside the
//! machine) and handed to it as fd 3. A connection to it passes descriptors, so execs'
//! stdio and terminals' ptys are handed to the host.

use crate::NativeError;
use rnr_driver::{AgentChannel, DriverError, Result};
use std::path::Path;
use tokio::net::UnixStream;

/// A channel to the agent listening on `socket`; [`DriverError::NoAgent`] when nothing
/// listens there (a machine started without one).
pub async fn connect(socket: &Path, machine: &str) -> Result<AgentChannel> {
    match UnixStream::connect(socket).await {
        Ok(s) => Ok(AgentChannel::unix(machine, s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(DriverError::NoAgent(machine.to_string()))
        }
        Err(e) => {
            Err(NativeError::io(format!("machine {machine}: connecting to its agent"), e).into())
        }
    }
}
