//! Plain data that crosses the driver boundary: what to create, what exists, what to run.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// Resource caps for one machine. Every field is enforced by every driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory (RAM) cap in MiB; a process over it is OOM-killed, the machine lives on.
    pub memory_mib: u64,
    /// CPU cap in thousandths of a core (1000 = one full core).
    pub cpu_millis: u64,
    /// Maximum number of tasks (processes + threads) in the machine.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            cpu_millis: 1000,
            pids: 256,
        }
    }
}

/// Network wiring for a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Whether the machine may open connections beyond its own bridge.
    pub outbound: bool,
}

/// What a machine is: a container sharing the host's kernel, or a VM with a kernel of its
/// own (disks, modules, Docker inside). [`crate::Kinds`] sends each to its driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    #[default]
    Container,
    Vm,
}

impl MachineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Vm => "vm",
        }
    }
}

impl std::fmt::Display for MachineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Platform-assigned id; the driver names its resources after it.
    pub id: String,
    /// Which kind of machine; a driver of one kind ignores it, [`crate::Kinds`] routes by it.
    pub kind: MachineKind,
    pub image: String,
    pub hostname: String,
    pub limits: Limits,
    pub network: NetworkSpec,
    /// Extra labels the driver stores with the machine (returned by `inspect`/`list`).
    pub labels: BTreeMap<String, String>,
}

/// Coarse machine state as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineStatus {
    Creating,
    Running,
    /// Exists but its init is not running (crashed, stopped, OOM-killed init…).
    Stopped,
}

/// What a driver knows about one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineInfo {
    pub id: String,
    pub image: String,
    pub status: MachineStatus,
    pub address: Option<IpAddr>,
    pub created_at: Option<SystemTime>,
    pub labels: BTreeMap<String, String>,
}

/// An image a driver can start machines from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub size_bytes: Option<u64>,
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What to run inside a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// User name or `uid[:gid]`; root when `None`.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `Some` allocates a pty of that size: stdout and stderr then arrive merged as stdout.
    pub tty: Option<TtySize>,
}

impl ExecSpec {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            user: None,
            workdir: None,
            tty: None,
        }
    }
}

/// Resource use of one machine at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStats {
    /// CPU time used since the machine started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory charged to the machine (processes, page cache, tmpfs), in bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
}
