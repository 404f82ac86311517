//! The crate's own errors; each names the machine, image or path it concerns, and maps
//! into [`rnr_driver::DriverError`] at the trait boundary.

use rnr_driver::DriverError;

/// What can go wrong inside the VM driver.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("machine {0} not found")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("machine {id} is not running")]
    NotRunning { id: String },
    #[error("invalid request for {id}: {message}")]
    Invalid { id: String, message: String },
    /// The host cannot run VMs as configured (no usable KVM, no QEMU, no kernel…).
    #[error("the vm driver cannot start: {0}")]
    Unavailable(String),
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

impl VmError {
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

impl From<rnr_driver_native::NativeError> for VmError {
    fn from(e: rnr_driver_native::NativeError) -> Self {
        match DriverError::from(e) {
            DriverError::Backend { id, message } => VmError::Other { id, message },
            other => VmError::Driver(other),
        }
    }
}

impl From<VmError> for DriverError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::NotFound(id) => DriverError::NotFound(id),
            VmError::ImageNotFound(name) => DriverError::ImageNotFound(name),
            VmError::NotRunning { id } => DriverError::NotRunning {
                id,
                state: "stopped".into(),
            },
            VmError::Invalid { id, message } => DriverError::Invalid { id, message },
            VmError::Unavailable(m) => DriverError::Unavailable(m),
            VmError::Io { what, source } => DriverError::Io { what, source },
            VmError::Driver(d) => d,
            other @ (VmError::Command { .. } | VmError::Other { .. }) => {
                let id = match &other {
                    VmError::Command { id, .. } | VmError::Other { id, .. } => id.clone(),
                    _ => String::new(),
                };
                DriverError::Backend {
                    id,
                    message: other.to_string(),
                }
            }
        }
    }
}

pub type VResult<T> = std::result::Result<T, VmError>;
