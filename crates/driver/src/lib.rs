//! The driver trait: the one seam between the platform and wherever machines run.
//!
//! Everything here speaks of machines, images, limits, addresses and exec streams. No
//! Docker, OCI or Kubernetes type crosses this boundary, so a new backend (native crun,
//! Kubernetes) plugs in without the platform noticing. Each backend lives in its own crate
//! and passes the shared [`conformance`] suite.

pub mod agent;
mod error;
mod exec;
pub mod fault;
pub mod files;
mod images;
mod kinds;
pub mod netguard;
pub mod process;
pub mod stdio;
mod types;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod isolation;
#[cfg(feature = "conformance")]
mod isolation_net;
#[cfg(feature = "conformance")]
pub mod own_kernel;

pub use agent::{stage_agent, AgentChannel, AGENT_DIR};
pub use error::{DriverError, Result};
pub use exec::{
    collect, collect_handle, ExecHandle, ExecOutcome, ExecProcess, ExecRequest, OutputChunk,
    OutputStream, Stdin,
};
pub use images::ImageStore;
pub use kinds::Kinds;
pub use types::{
    ExecSpec, ImageInfo, Limits, MachineInfo, MachineKind, MachineSpec, MachineStats,
    MachineStatus, NetworkSpec, TtySize,
};

use async_trait::async_trait;

/// Label/annotation key a driver stamps on every machine it creates, carrying the owner
/// (the platform instance). `list` returns only machines carrying the driver's owner.
pub const OWNER_LABEL: &str = "io.rootnroll.owner";
/// Where a driver configured with an agent binary makes it visible, read-only, in every
/// machine (see DESIGN.md: one static binary that holds terminal sessions and evaluates
/// checks from inside).
pub const AGENT_PATH: &str = rnr_agent_proto::AGENT_PATH;
/// Label carrying the platform's machine id.
pub const MACHINE_LABEL: &str = "io.rootnroll.machine";

/// A backend family that runs machines.
///
/// Implementations must be cheap to share (`Arc<dyn Driver>`), and every method must be
/// safe to call concurrently for different machines.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Short name used in config and logs (`docker`, `native`, …).
    fn name(&self) -> &'static str;

    /// Creates and starts a machine. On error nothing is left behind.
    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo>;

    /// Starts a process in a running machine; its streams are returned at once.
    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle>;

    /// A new connection to the agent in a running machine (terminal sessions, check suites,
    /// execs where the backend has no exec of its own). [`DriverError::NoAgent`] when the
    /// machine was started without one.
    async fn agent(&self, id: &str) -> Result<AgentChannel>;

    /// Current state of one machine this driver owns; [`DriverError::NotFound`] if gone.
    async fn inspect(&self, id: &str) -> Result<MachineInfo>;

    /// Stops and removes a machine and everything it holds. Deleting a machine that is
    /// already gone succeeds, so callers can retry freely.
    async fn delete(&self, id: &str) -> Result<()>;

    /// Every machine this driver's owner has, running or not, for reconciliation.
    async fn list(&self) -> Result<Vec<MachineInfo>>;

    /// The images this driver starts machines from. A borrow rather than an `Arc`: the
    /// store is part of the driver and lives exactly as long as it, so no backend has to
    /// keep it in an `Arc` of its own; a caller that needs it beyond one borrow (a spawned
    /// task) keeps the `Arc<dyn Driver>` and asks again.
    fn images(&self) -> &dyn ImageStore;

    /// Current resource use of a machine, for operators; `None` when the backend cannot
    /// tell.
    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        let _ = id;
        Ok(None)
    }

    /// Whether the backend answers now (the runtime, the engine): `/readyz` asks this,
    /// within a timeout of its own, so an implementation may take as long as its backend
    /// does. The default lists the machines.
    async fn ready(&self) -> Result<()> {
        self.list().await.map(|_| ())
    }
}
