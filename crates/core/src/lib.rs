//! The platform core: owns machine state and drives the driver.
//!
//! The HTTP layer only parses requests and calls into [`Platform`]; everything that decides
//! (capacity, TTLs, limits policy, reconciliation after a restart, reaping) lives here, so
//! the CLI, the HTTP layer, the terminal gateway, the checker and the UI all see one
//! source of truth. None of them holds the store or the driver.

mod auth;
mod error;
mod metrics;
mod platform;
mod records;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{hash_key, new_api_key, NewApiKey};
pub use error::{CoreError, Result};
pub use metrics::{Histogram, Metrics, SampledGauge};
pub use platform::{
    CreateMachine, DeleteHook, ExecCommand, KeyQuotas, LimitsRequest, Machine, MachinePolicy,
    Platform, QuotaLimit, ReconcileReport,
};
pub use records::{ApiKey, Terminal};
pub use rnr_driver::{MachineInfo, MachineKind, MachineStats};
pub use rnr_store::MachineState;
pub use rnr_store::{KeyLimits, Quota};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A random lowercase id of `n` base-32 characters, e.g. for machine ids.
pub fn random_id(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = vec![0u8; n];
    // The OS RNG failing is unrecoverable for a server that hands out ids and keys.
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
