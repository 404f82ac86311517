//! One machine: its record on disk, its QEMU command line, its cgroup, and starting,
//! observing and ending its QEMU process.
//!
//! `machines/<id>/`: `meta.json` (what the driver knows: owner, image, address, QEMU's pid
//! and start time, for adoption after a restart), `root.qcow2` (the copy-on-write overlay
//! over the image, its virtual size the disk quota), `disk-<n>.qcow2` (extra blank disks),
//! `port.sock` (QEMU's end of the agent's serial port), `qemu.log`, `console.log` (with
//! `console_log`), `jail/` (the empty mount point QEMU's private root is built on).

use crate::config::{Accel, VmConfig};
use crate::error::{VResult, VmError};
use rnr_driver::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Label asking for extra blank disks: comma-separated sizes in MiB (`512,256`); they
/// appear in the VM as `/dev/vdb`, `/dev/vdc`, … in that order.
pub const DISKS_LABEL: &str = "io.rootnroll.vm.disks";

/// What the driver records of a machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub owner: String,
    pub image: String,
    pub hostname: String,
    pub address: Ipv4Addr,
    /// The address's offset in the subnet.
    pub index: u32,
    pub outbound: bool,
    pub created_at: u64,
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
    pub disks: Vec<u64>,
    pub tap: String,
    /// QEMU's pid and start time (0 until it started).
    pub pid: i32,
    pub start: u64,
}

impl Meta {
    pub fn read(path: &Path) -> VResult<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| VmError::io(path.display().to_string(), e))?;
        serde_json::from_str(&text).map_err(|e| VmError::other(path.display().to_string(), e))
    }

    pub fn write(&self, path: &Path) -> VResult<()> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| VmError::other(&self.id, e))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| VmError::io(path.display().to_string(), e))
    }

    pub fn running(&self) -> bool {
        self.pid > 0 && crate::sys::alive(self.pid, self.start)
    }
}

/// The extra disks `labels` ask for, checked against the configured bounds.
pub fn extra_disks(
    id: &str,
    labels: &BTreeMap<String, String>,
    cfg: &VmConfig,
) -> VResult<Vec<u64>> {
    let Some(v) = labels.get(DISKS_LABEL) else {
        return Ok(Vec::new());
    };
    let bad = |m: String| VmError::Invalid {
        id: id.to_string(),
        message: m,
    };
    let sizes: Vec<u64> = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{DISKS_LABEL}: {s:?} is not a size in MiB")))
        })
        .collect::<VResult<_>>()?;
    if sizes.len() > cfg.max_extra_disks {
        return Err(bad(format!(
            "at most {} extra disks, not {}",
            cfg.max_extra_disks,
            sizes.len()
        )));
    }
    if let Some(s) = sizes
        .iter()
        .find(|&&s| s == 0 || s > cfg.max_extra_disk_mib)
    {
        return Err(bad(format!(
            "a disk of {s} MiB: sizes are 1..={} MiB",
            cfg.max_extra_disk_mib
        )));
    }
    Ok(sizes)
}

/// Paths QEMU sees in its private root.
pub const IN_MACHINE: &str = "/machine";
pub const IN_BOOT: &str = "/boot";
pub const IN_IMAGE: &str = "/image/base.ext4";

/// Everything the command line needs.
pub struct Launch<'a> {
    pub cfg: &'a VmConfig,
    pub meta: &'a Meta,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
}

/// The QEMU arguments of a machine: a microvm with no firmware detours (qboot loads the
/// kernel straight from fw_cfg), direct kernel and initramfs boot, virtio-mmio devices
/// only, the tap passed as fd 3, every sandbox knob on.
pub fn qemu_args(l: &Launch<'_>) -> Vec<String> {
    let m = l.meta;
    let console = l.cfg.console_log;
    let mut machine = format!(
        "microvm,x-option-roms=off,pic=off,isa-serial={}",
        if console { "on" } else { "off" }
    );
    let (accel, cpu) = match l.cfg.accel {
        Accel::Kvm => {
            machine.push_str(",pit=off,rtc=off");
            ("kvm", "host")
        }
        // Without kvm-clock the emulated guest needs the PIT to calibrate its TSC.
        Accel::Tcg => {
            machine.push_str(",pit=on,rtc=on");
            ("tcg", "max")
        }
    };
    let mem = m.limits.memory_mib + l.cfg.kernel_overhead_mib;
    let cpus = m.limits.cpu_millis.div_ceil(1000).max(1);
    let mut cmdline = format!(
        "console={} quiet loglevel={} panic=-1 reboot=t nomodeset mitigations=off \
         rnr.hostname={} rnr.mem={} rnr.pids={} rnr.ip={}/{} rnr.gw={}",
        if console { "ttyS0" } else { "none" },
        if console { 4 } else { 0 },
        m.hostname,
        m.limits.memory_mib,
        m.limits.pids,
        m.address,
        l.prefix,
        l.gateway,
    );
    if l.cfg.accel == Accel::Tcg {
        // Emulated, the guest's TSC runs at the host's rate, which it cannot calibrate
        // without kvm-clock: it is told.
        cmdline.push_str(" tsc=reliable no_timer_check");
        if let Some(khz) = host_tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    let mut a: Vec<String> = [
        "-name",
        &m.id,
        "-M",
        &machine,
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        &format!("{mem}M"),
        "-smp",
        &cpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
        "-kernel",
        &format!("{IN_BOOT}/vmlinuz"),
        "-initrd",
        &format!("{IN_BOOT}/initrd.cpio"),
        "-append",
        &cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    push(&[
        "-drive",
        &format!("id=root,file={IN_MACHINE}/root.qcow2,format=qcow2,if=none,cache=writeback,discard=unmap,detect-zeroes=unmap"),
        "-device",
        "virtio-blk-device,drive=root,serial=rnr-root",
    ]);
    for (n, _) in m.disks.iter().enumerate() {
        push(&[
            "-drive",
            &format!("id=disk{n},file={IN_MACHINE}/disk-{n}.qcow2,format=qcow2,if=none,cache=writeback,discard=unmap"),
            "-device",
            &format!("virtio-blk-device,drive=disk{n},serial=rnr-disk-{n}"),
        ]);
    }
    push(&[
        "-drive",
        &format!("id=agent,file={IN_BOOT}/agent.ext4,format=raw,if=none,readonly=on"),
        "-device",
        "virtio-blk-device,drive=agent,serial=rnr-agent",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!("socket,id=port,path={IN_MACHINE}/port.sock,server=on,wait=off"),
        "-device",
        &format!(
            "virtserialport,chardev=port,name={}",
            rnr_agent_proto::mux::PORT_NAME
        ),
        "-netdev",
        "tap,id=net,fd=3",
        "-device",
        &format!("virtio-net-device,netdev=net,mac={}", l.mac),
        "-device",
        "virtio-balloon-device,free-page-reporting=on",
        "-serial",
        &if console {
            format!("file:{IN_MACHINE}/console.log")
        } else {
            "none".to_string()
        },
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    a
}

/// The host's TSC frequency in kHz, as /proc/cpuinfo tells it.
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))?
        .trim_start_matches([' ', '\t', ':'])
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The machine's MAC address: locally administered, from its address offset (so its pin
/// needs nothing recorded).
pub fn mac_bytes(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x52, 0x54, b[0], b[1], b[2], b[3]]
}

/// [`mac_bytes`] as QEMU takes it.
pub fn mac(index: u32) -> String {
    let m = mac_bytes(index);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The host's cgroups of one machine's QEMU (CPU cap, accounting, a memory guard).
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// cgroup v2: one directory; v1: one per controller.
    pub dirs: Vec<(String, PathBuf)>,
    pub v2: bool,
}

impl Cgroups {
    pub fn of(cfg: &VmConfig, id: &str) -> Self {
        let parent: String = format!(
            "rnr-vm-{}",
            cfg.owner
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                })
                .collect::<String>()
        );
        let root = &cfg.cgroup_root;
        if root.join("cgroup.controllers").exists() {
            return Self {
                dirs: vec![("unified".into(), root.join(&parent).join(id))],
                v2: true,
            };
        }
        let mut dirs = Vec::new();
        for c in ["cpu", "cpuacct", "memory", "pids"] {
            if root.join(c).is_dir() {
                dirs.push((c.to_string(), root.join(c).join(&parent).join(id)));
            }
        }
        if root.join("unified/cgroup.controllers").exists() && dirs.is_empty() {
            dirs.push((
                "unified".into(),
                root.join("unified").join(&parent).join(id),
            ));
        }
        Self { dirs, v2: false }
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == controller || c == "unified")
            .map(|(_, d)| d.as_path())
    }

    /// Creates the cgroups with the CPU cap and a memory ceiling well above the guest's RAM
    /// (it only keeps a runaway QEMU from the host's memory).
    pub fn create(&self, id: &str, cpu_millis: u64, guest_mib: u64) -> VResult<()> {
        let w = |p: PathBuf, v: &str| {
            std::fs::write(&p, v).map_err(|e| {
                VmError::io(format!("machine {id}: writing {v:?} to {}", p.display()), e)
            })
        };
        let period: u64 = 100_000;
        let quota = (cpu_millis * period / 1000).max(1000);
        let ceiling = (guest_mib + 512) << 20;
        for (c, d) in &self.dirs {
            if self.v2 {
                if let Some(parent) = d.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| VmError::io(parent.display().to_string(), e))?;
                    if let Some(root) = parent.parent() {
                        let _ = std::fs::write(
                            root.join("cgroup.subtree_control"),
                            "+cpu +memory +pids",
                        );
                    }
                    let _ =
                        std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory +pids");
                }
            }
            std::fs::create_dir_all(d).map_err(|e| VmError::io(d.display().to_string(), e))?;
            match (self.v2, c.as_str()) {
                (true, _) => {
                    w(d.join("cpu.max"), &format!("{quota} {period}"))?;
                    w(d.join("memory.max"), &ceiling.to_string())?;
                }
                (false, "cpu") => {
                    w(d.join("cpu.cfs_period_us"), &period.to_string())?;
                    w(d.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                (false, "memory") => w(d.join("memory.limit_in_bytes"), &ceiling.to_string())?,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// CPU time (ns) and memory (bytes) QEMU has used.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        let read =
            |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        if self.v2 {
            let d = self.dir("unified");
            let cpu = d
                .and_then(|d| std::fs::read_to_string(d.join("cpu.stat")).ok())
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us * 1000)
                });
            return (cpu, d.and_then(|d| read(d.join("memory.current"))));
        }
        (
            self.dir("cpuacct")
                .and_then(|d| read(d.join("cpuacct.usage"))),
            self.dir("memory")
                .and_then(|d| read(d.join("memory.usage_in_bytes"))),
        )
    }

    /// Removes the cgroups (QEMU has ended: they are empty).
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "m-1".into(),
            owner: "o".into(),
            image: "tiny".into(),
            hostname: "h".into(),
            address: Ipv4Addr::new(10, 1, 0, 2),
            index: 2,
            outbound: false,
            created_at: 0,
            labels: BTreeMap::new(),
            limits: Limits::default(),
            disks: vec![512],
            tap: "tv0".into(),
            pid: 0,
            start: 0,
        }
    }

    #[test]
    fn command_line_is_confined_and_complete() {
        let cfg = VmConfig::default();
        let m = meta();
        let args = qemu_args(&Launch {
            cfg: &cfg,
            meta: &m,
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            prefix: 22,
            mac: mac(2),
        });
        let line = args.join(" ");
        for want in [
            "-M microvm,x-option-roms=off",
            "-accel kvm",
            "-nodefaults -no-user-config",
            "elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "rnr.ip=10.1.0.2/22 rnr.gw=10.1.0.1",
            "serial=rnr-disk-0",
            "readonly=on",
            "fd=3",
            "free-page-reporting=on",
            "-m 320M",
        ] {
            assert!(line.contains(want), "{want:?} missing from {line}");
        }
        assert_eq!(mac(0x0a0b), "52:54:00:00:0a:0b");
    }

    #[test]
    fn extra_disks_are_bounded() {
        let cfg = VmConfig::default();
        let mut labels = BTreeMap::new();
        assert!(extra_disks("m", &labels, &cfg).unwrap().is_empty());
        labels.insert(DISKS_LABEL.to_string(), "512, 256".to_string());
        assert_eq!(extra_disks("m", &labels, &cfg).unwrap(), vec![512, 256]);
        labels.insert(DISKS_LABEL.to_string(), "0".to_string());
        assert!(extra_disks("m", &labels, &cfg).is_err());
        labels.insert(DISKS_LABEL.to_string(), "big".to_string());
        assert!(extra_disks("m", &labels, &cfg).is_err());
    }
}
