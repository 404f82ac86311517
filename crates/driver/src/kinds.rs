//! Machines of more than one kind on one platform. [`Kinds`] is a driver that sends each new
//! machine to the driver of its [`MachineKind`] (containers to the native or Docker driver,
//! VMs to the vm driver) and every later call to the driver that has the machine. Which
//! one has it is learnt at create and from each driver's `list`, so a restarted platform
//! finds its VMs again; the platform above sees one driver and stays unchanged.
//!
//! Images are imported into every driver (each keeps them its own way: a VM boots a disk
//! made from the same root filesystem), so an exercise's image serves both kinds.

use crate::{
    AgentChannel, Driver, DriverError, ExecHandle, ExecSpec, ImageInfo, ImageStore, MachineInfo,
    MachineKind, MachineSpec, MachineStats, Result,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The drivers of each kind, as one [`Driver`].
pub struct Kinds {
    container: Arc<dyn Driver>,
    vm: Result<Arc<dyn Driver>, String>,
    /// The kind of each machine seen; absent ones are containers unless the vm driver
    /// knows them.
    placed: Mutex<HashMap<String, MachineKind>>,
    images: FanOut,
}

impl Kinds {
    /// Containers on `container`; VMs on `vm`, or refused with the reason `vm` gives (the
    /// host has no KVM or QEMU, the operator turned them off).
    pub fn new(container: Arc<dyn Driver>, vm: Result<Arc<dyn Driver>, String>) -> Self {
        let mut stores = vec![container.clone()];
        if let Ok(v) = &vm {
            stores.push(v.clone());
        }
        Self {
            container,
            vm,
            placed: Mutex::default(),
            images: FanOut { drivers: stores },
        }
    }

    /// Which kinds this platform can start now.
    pub fn available(&self) -> Vec<MachineKind> {
        let mut k = vec![MachineKind::Container];
        if self.vm.is_ok() {
            k.push(MachineKind::Vm);
        }
        k
    }

    fn place(&self, id: &str, kind: MachineKind) {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), kind);
    }

    fn placed(&self, id: &str) -> Option<MachineKind> {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    fn of_kind(&self, id: &str, kind: MachineKind) -> Result<&Arc<dyn Driver>> {
        match kind {
            MachineKind::Container => Ok(&self.container),
            MachineKind::Vm => self.vm.as_ref().map_err(|why| DriverError::Invalid {
                id: id.to_string(),
                message: format!("machines of kind vm cannot run on this host: {why}"),
            }),
        }
    }

    /// The driver that has machine `id`.
    async fn owner_of(&self, id: &str) -> &Arc<dyn Driver> {
        if let Some(kind) = self.placed(id) {
            if let Ok(d) = self.of_kind(id, kind) {
                return d;
            }
        }
        // Not seen since this process started (a restart before the first `list`).
        if let Ok(vm) = &self.vm {
            if vm.inspect(id).await.is_ok() {
                self.place(id, MachineKind::Vm);
                return vm;
            }
        }
        &self.container
    }
}

#[async_trait]
impl Driver for Kinds {
    fn name(&self) -> &'static str {
        self.container.name()
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let d = self.of_kind(&spec.id, spec.kind)?;
        self.place(&spec.id, spec.kind);
        let r = d.create(spec).await;
        if r.is_err() {
            self.placed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&spec.id);
        }
        r
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        self.owner_of(id).await.exec(id, spec).await
    }

    async fn agent(&self, id: &str) -> Result<AgentChannel> {
        self.owner_of(id).await.agent(id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.owner_of(id).await.inspect(id).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.owner_of(id).await.delete(id).await?;
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        let mut all = self.container.list().await?;
        for m in &all {
            self.place(&m.id, MachineKind::Container);
        }
        if let Ok(vm) = &self.vm {
            let vms = vm.list().await?;
            for m in &vms {
                self.place(&m.id, MachineKind::Vm);
            }
            all.extend(vms);
        }
        Ok(all)
    }

    fn images(&self) -> &dyn ImageStore {
        &self.images
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        self.owner_of(id).await.stats(id).await
    }

    /// Ready when every driver is: a platform whose VMs' driver hangs is not ready either.
    async fn ready(&self) -> Result<()> {
        self.container.ready().await?;
        if let Ok(vm) = &self.vm {
            vm.ready().await?;
        }
        Ok(())
    }
}

/// Every driver's image store as one: an import goes to each, a listing is their union.
struct FanOut {
    drivers: Vec<Arc<dyn Driver>>,
}

#[async_trait]
impl ImageStore for FanOut {
    async fn import(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo> {
        let mut first = None;
        for d in &self.drivers {
            let info = d.images().import(name, rootfs_tar).await?;
            first.get_or_insert(info);
        }
        first.ok_or_else(|| DriverError::ImageNotFound(name.to_string()))
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut by_name = BTreeMap::new();
        for d in &self.drivers {
            for i in d.images().list().await? {
                by_name.entry(i.name.clone()).or_insert(i);
            }
        }
        Ok(by_name.into_values().collect())
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let mut removed = false;
        for d in &self.drivers {
            match d.images().remove(name).await {
                Ok(()) => removed = true,
                Err(DriverError::ImageNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if removed {
            Ok(())
        } else {
            Err(DriverError::ImageNotFound(name.to_string()))
        }
    }
}
