//! The core's error type; the API maps each variant to a status and an error code.

use rnr_driver::DriverError;
use rnr_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("machine {0} not found")]
    NotFound(String),
    #[error("capacity reached: {active} of {capacity} machines are in use; try again when one is deleted or expires")]
    Capacity { active: u64, capacity: u64 },
    /// A quota (an API key's, anonymous learners') is reached; room is expected in
    /// `retry_after` seconds.
    #[error("{what}: {limit}; try again in {retry_after} s")]
    Quota {
        what: String,
        limit: String,
        retry_after: u64,
    },
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error(
        "image {0} not found; build or import it first (`rnr image build` / `rnr image import`)"
    )]
    ImageNotFound(String),
    #[error("machine {id} is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error("machine {id}: driver: {source}")]
    Driver {
        id: String,
        #[source]
        source: DriverError,
    },
    /// `/readyz`: the parts that do not answer as they must, each with why.
    #[error("not ready: {}", problems.join("; "))]
    NotReady { problems: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CoreError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn driver(id: &str, e: DriverError) -> Self {
        match e {
            DriverError::NotFound(_) => Self::NotRunning {
                id: id.to_string(),
                state: "gone".into(),
            },
            DriverError::ImageNotFound(image) => Self::ImageNotFound(image),
            DriverError::NotRunning { id, state } => Self::NotRunning { id, state },
            DriverError::Invalid { message, .. } => Self::invalid("request", message),
            source => Self::Driver {
                id: id.to_string(),
                source,
            },
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
