//! What machines hold of the host's shared ranges: their addresses in the subnet and, with
//! user namespaces, their 65536-id uid ranges (and a cached user namespace per range).

use crate::error::{NResult, NativeError};
use crate::layout::Meta;
use crate::{sys, NativeDriver};
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Addresses and uid ranges in use.
#[derive(Debug, Default)]
pub(crate) struct Alloc {
    ips: BTreeSet<u32>,
    ranges: BTreeSet<u32>,
}

impl Alloc {
    /// Marks what machine `meta` holds as taken (a machine found when the driver opens).
    pub(crate) fn adopt(&mut self, meta: &Meta) {
        self.ips.insert(meta.ip_index);
        if let Some(r) = meta.range {
            self.ranges.insert(r);
        }
    }
}

impl NativeDriver {
    /// A user namespace fd with the map of uid range `range` (cached).
    pub(crate) fn userns_fd(&self, id: &str, range: u32) -> NResult<Arc<OwnedFd>> {
        let base = self.range_base(range);
        let mut fds = self
            .inner
            .userns_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = fds.get(&base) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(sys::make_userns(base).map_err(|e| {
            NativeError::io(
                format!("machine {id}: creating a user namespace for uid {base}"),
                e,
            )
        })?);
        fds.insert(base, fd.clone());
        Ok(fd)
    }

    /// The first host uid of uid range `range`.
    pub(crate) fn range_base(&self, range: u32) -> u32 {
        self.inner.cfg.uid_base + range * 65536
    }

    /// Takes a free address (in the half of the subnet `outbound` asks for) and, with user
    /// namespaces, a free uid range for machine `id`.
    pub(crate) fn allocate(&self, id: &str, outbound: bool) -> NResult<(u32, Option<u32>)> {
        let mut alloc = self.inner.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let ip = self
            .inner
            .subnet
            .range(outbound)
            .find(|i| self.inner.subnet.usable(*i) && !alloc.ips.contains(i))
            .ok_or_else(|| NativeError::other(id, "no free address in the subnet"))?;
        let range = if self.inner.cfg.userns {
            let max = (u32::MAX - self.inner.cfg.uid_base) / 65536;
            let r = (0..max)
                .find(|r| !alloc.ranges.contains(r))
                .ok_or_else(|| NativeError::other(id, "no free uid range"))?;
            alloc.ranges.insert(r);
            Some(r)
        } else {
            None
        };
        alloc.ips.insert(ip);
        Ok((ip, range))
    }

    /// Gives back what [`NativeDriver::allocate`] took for the machine of `meta`.
    pub(crate) fn release(&self, meta: &Meta) {
        let mut alloc = self.inner.alloc.lock().unwrap_or_else(|p| p.into_inner());
        alloc.ips.remove(&meta.ip_index);
        if let Some(r) = meta.range {
            alloc.ranges.remove(&r);
        }
    }
}
