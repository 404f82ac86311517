//! The crate's own errors; each names the machine, image or path it concerns, and maps
//! into [`rnr_driver::DriverError`] at the trait boundary.

use rnr_driver::DriverError;

/// What can go wrong inside the native driver.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("machine {0} not found")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("machine {id} is not running")]
    NotRunning { id: String },
    #[error("invalid request for {id}: {message}")]
    Invalid { id: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {id}: `{command}` failed ({status}): {stderr}")]
    Command {
        id: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("machine {id}: {message}")]
    Other { id: String, message: String },
    /// What a shared piece of the driver layer (the agent channel) reported.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl NativeError {
    /// An I/O error about `what` (a path or an action naming the machine).
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Any other failure concerning machine or image `id`.
    pub fn other(id: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Other {
            id: id.into(),
            message: message.to_string(),
        }
    }
}

impl From<NativeError> for DriverError {
    fn from(e: NativeError) -> Self {
        match e {
            NativeError::NotFound(id) => DriverError::NotFound(id),
            NativeError::ImageNotFound(name) => DriverError::ImageNotFound(name),
            NativeError::NotRunning { id } => DriverError::NotRunning {
                id,
                state: "stopped".into(),
            },
            NativeError::Invalid { id, message } => DriverError::Invalid { id, message },
            NativeError::Io { what, source } => DriverError::Io { what, source },
            e @ NativeError::Command { .. } => {
                let id = match &e {
                    NativeError::Command { id, .. } => id.clone(),
                    _ => String::new(),
                };
                DriverError::backend(id, e)
            }
            NativeError::Other { id, message } => DriverError::Backend { id, message },
            NativeError::Driver(e) => e,
        }
    }
}

/// Result with the crate's error.
pub type NResult<T> = std::result::Result<T, NativeError>;
