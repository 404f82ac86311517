//! The native driver: machines started with the OCI runtime crun directly, with no daemon
//! and no per-machine helper process on the host.
//!
//! Layout of `state_dir`:
//!
//! * `images/<name>/rootfs` → symlink to `images/<name>/r-<nanos>`, an extracted rootfs
//!   (replaced atomically on re-import); `images/<name>/info.json` holds its size. A
//!   version stays as long as a machine runs from it: re-importing or removing an image
//!   prunes only versions no machine uses, and deleting the last machine of an old version
//!   prunes it (`images/.lock` orders this against creates; see `image`).
//! * `run/machines/<id>/machine.json` — what the driver knows (owner, image, address, uid
//!   range, init pid); `config.json` — the OCI bundle config; `rootfs/`, `lower/`,
//!   `disk/` — mount points, empty on the host: the machine's overlay (and, in tmpfs disk
//!   mode, the tmpfs holding its upper layer, and the idmapped image) are mounted only
//!   inside the private mount namespace crun runs in, so they live exactly as long as the
//!   machine's own mount namespace and never grow the host's mount table.
//!   `agent.sock` — with an agent configured, the socket its PID 1 (`rnr-agent init`)
//!   listens on (bound here, passed to it as fd 3): every exec is forked by the agent in
//!   about a millisecond; without an agent, PID 1 is a shell loop and execs use `crun exec`.
//! * `disks/<id>/{upper,work}` (btrfs disk mode) — each machine's writable layer, on a
//!   btrfs subvolume of its own whose qgroup limit is the machine's disk size: a real disk
//!   quota, independent of its memory limit. `disks/` is a directory of `state_dir`'s own
//!   filesystem when that is btrfs (quotas get enabled on it), else the mount point of
//!   `disk.img`, a sparse image (`disk_pool_gib`, allocated only as written) formatted
//!   once with mkfs.btrfs and loop-mounted when the driver opens (the one mount the driver
//!   adds to the host's table; [`NativeDriver::teardown`] unmounts it and the loop device
//!   detaches itself). `disk.lock` serialises setting it up.
//! * `run/` — a tmpfs the driver mounts (once; a restarted driver finds it mounted) for
//!   what lives only as long as the machines do: `machines/`, `crun/` and `sock/` below.
//!   Creating a machine makes a dozen files and directories; on ext4 each new inode was
//!   ~0.2 ms of kernel time (the allocator's scan of recently freed inodes), about 10 % of
//!   the CPU of a start. A host reboot ends the machines and empties `run/` together.
//!   [`NativeDriver::teardown`] unmounts it.
//! * `run/crun/` — crun's state root (`--root`).
//!
//! The disk mode ([`DiskMode`]) is chosen by the config: `auto` (the default) takes btrfs
//! when the kernel has it and either `state_dir` is on btrfs or mkfs.btrfs and loop devices
//! are there, else falls back to tmpfs with a warning; in tmpfs mode the writable layer is
//! a per-machine tmpfs whose pages count against the machine's memory limit, so filling
//! the disk ends in the machine's OOM killer rather than in ENOSPC/EDQUOT.
//!
//! Every crun call runs in a fresh private mount namespace where, on cgroup v1 hybrid
//! hosts, an empty file hides `<cgroup_root>/unified/cgroup.controllers` (crun 1.8.1
//! refuses hybrid hosts otherwise).

mod agent;
mod alloc;
mod cgroups;
mod config;
mod create;
mod disk;
mod error;
mod exec;
mod image;
mod layout;
/// Bridges, address halves and iptables chains; shared with the VM driver, whose taps join
/// bridges of the same kind.
pub mod net;
mod netlink;
mod oci;
mod runtime;
mod seccomp;
mod setup;
mod sys;
mod users;

pub use config::{preflight, DiskMode, NativeConfig};
pub use error::{NResult, NativeError};
pub use net::Subnet;
/// The capabilities root in a machine holds; the Docker driver grants machines the same.
pub use oci::CAPABILITIES;
pub use oci::{seccomp as seccomp_profile, DEFAULT_MAX_PTYS};

use async_trait::async_trait;
use rnr_driver::{
    Driver, ExecHandle, ExecSpec, ImageStore, MachineInfo, MachineSpec, MachineStats, Result,
};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// What a driver and its clones share; each module adds the methods of its concern to
/// [`NativeDriver`].
struct Inner {
    cfg: NativeConfig,
    subnet: Subnet,
    /// cgroup v1 with a cgroup2 mount beside it: hide its controllers from crun.
    hybrid: bool,
    /// Machines' swap can be capped (cgroup v1 with swap accounting, or v2).
    swap_limit: bool,
    empty_file: PathBuf,
    alloc: Mutex<alloc::Alloc>,
    userns_fds: Mutex<HashMap<u32, Arc<OwnedFd>>>,
    counter: AtomicU64,
    /// The seccomp profile as crun compiled it (base64), once a machine has started.
    seccomp_bpf: Mutex<Option<String>>,
    /// Bridge segments known to be up (see `net`); the lock serialises creating one.
    segments: tokio::sync::Mutex<BTreeSet<u32>>,
    /// The btrfs pool of the machines' writable layers (btrfs disk mode).
    pool: Option<disk::Pool>,
    /// `images/`, the driver's image store.
    images: image::Images,
    /// `agent/<hash>/`: the configured agent's directory, mounted at `/.rnr`.
    agent_dir: Option<std::path::PathBuf>,
}

/// A driver bound to one state directory and one owner.
#[derive(Clone)]
pub struct NativeDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NativeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeDriver")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

#[async_trait]
impl Driver for NativeDriver {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        Ok(self.create_machine(spec).await?)
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        Ok(self.exec_inner(id, spec).await?)
    }

    async fn agent(&self, id: &str) -> Result<rnr_driver::AgentChannel> {
        let meta = self.own_meta(id)?;
        if self.status_of(&meta) != rnr_driver::MachineStatus::Running {
            return Err(NativeError::NotRunning { id: id.to_string() }.into());
        }
        agent::connect(&self.machine_dir(id).join(layout::AGENT_SOCKET), id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        let meta = self.own_meta(id)?;
        Ok(self.info(&meta))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if layout::check_name("machine", id).is_err() {
            return Ok(());
        }
        Ok(self.delete_inner(id).await?)
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        Ok(self.list_machines()?)
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        Ok(self.cgroup_stats(id)?)
    }

    async fn ready(&self) -> Result<()> {
        Ok(self.runtime_answers().await?)
    }

    fn images(&self) -> &dyn ImageStore {
        &self.inner.images
    }
}
