//! The gateway's errors; each names the machine or terminal it concerns. Before a
//! WebSocket exists the HTTP layer answers them with a status and code; after, they end
//! the socket with a close code and reason ([`GatewayError::close`]).

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("machine {0} not found")]
    MachineNotFound(String),
    #[error("machine {machine} is {state}, not running")]
    MachineNotRunning { machine: String, state: String },
    #[error("machine {machine} already has {limit} open terminals, the most allowed")]
    LimitReached { machine: String, limit: usize },
    #[error("terminal {0}: invalid token")]
    TokenInvalid(String),
    #[error("terminal {0}: token expired; ask the API for a new one")]
    TokenExpired(String),
    #[error("terminal {0} was closed: its tokens are revoked")]
    TokenRevoked(String),
    #[error(
        "terminal {terminal} on machine {machine}: the agent cannot hold the session: {message}"
    )]
    Agent {
        terminal: String,
        machine: String,
        message: String,
    },
    #[error("terminal {0} not found")]
    TerminalNotFound(String),
    #[error("origin {0:?} is not allowed to open terminals")]
    OriginRejected(String),
    #[error("terminal {terminal}: recording: {source}")]
    Recording {
        terminal: String,
        #[source]
        source: std::io::Error,
    },
    /// A frame the WebSocket protocol (with the negotiated extensions) does not allow.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    #[error("message too big: more than {0} bytes")]
    MessageTooBig(usize),
    #[error("invalid compressed message: {0}")]
    BadCompression(String),
    #[error(transparent)]
    Core(#[from] rnr_core::CoreError),
}

impl GatewayError {
    /// WebSocket close code and reason, for errors found after the upgrade.
    pub fn close(&self) -> (u16, String) {
        let code = match self {
            Self::TokenInvalid(_) => crate::close::TOKEN_INVALID,
            Self::TokenExpired(_) => crate::close::TOKEN_EXPIRED,
            Self::TokenRevoked(_) => crate::close::TOKEN_REVOKED,
            Self::MachineNotFound(_) | Self::MachineNotRunning { .. } => crate::close::MACHINE_GONE,
            Self::Core(rnr_core::CoreError::NotFound(_)) => crate::close::MACHINE_GONE,
            Self::LimitReached { .. } => crate::close::LIMIT_REACHED,
            Self::Agent { .. } => crate::close::AGENT_UNAVAILABLE,
            Self::Protocol(_) => crate::close::PROTOCOL_ERROR,
            Self::MessageTooBig(_) => crate::close::MESSAGE_TOO_BIG,
            Self::BadCompression(_) => crate::close::INVALID_DATA,
            _ => crate::close::INTERNAL,
        };
        (code, crate::close::reason(&self.to_string()))
    }
}
