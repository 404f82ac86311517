//! The driver error type, shared by every backend so the platform can map it to API
//! errors without knowing which backend produced it.

/// Errors a driver reports. Every variant names the machine or image it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("machine {0} not found")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("machine {id} is not running (state: {state})")]
    NotRunning { id: String, state: String },
    #[error("invalid request for machine {id}: {message}")]
    Invalid { id: String, message: String },
    #[error("machine {0} has no agent (the driver runs without agent_path)")]
    NoAgent(String),
    #[error("machine {id}: its agent: {message}")]
    Agent { id: String, message: String },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("machine {id}: {message}")]
    Backend { id: String, message: String },
    #[error("io error for {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    pub fn backend(id: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Backend {
            id: id.into(),
            message: message.to_string(),
        }
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;
