//! Create → shell ready for the vm kind, against a bare `qemu-system-x86_64` boot of the
//! same kernel, initramfs modules and root disk to a shell, and the native container, in
//! the same run; then the host memory (PSS) of idle VMs. Deletes everything it made.
//! Usage (root): `vm_bench <rootfs.tar> [N]`; `RNR_VM_ACCEL=tcg` on hosts whose KVM cannot
//! boot Debian's kernel; `RNR_AGENT_PATH` is the static agent.

use rnr_driver::{collect, Driver, ExecRequest, ExecSpec, Limits, MachineSpec, NetworkSpec};
use rnr_driver_vm::{Accel, VmConfig, VmDriver};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

fn spec(i: usize, tag: &str) -> MachineSpec {
    MachineSpec {
        kind: Default::default(),
        id: format!("bench-{tag}{i}"),
        image: "tiny".into(),
        hostname: format!("{tag}{i}"),
        limits: Limits {
            memory_mib: 128,
            cpu_millis: 1000,
            pids: 256,
        },
        network: NetworkSpec::default(),
        labels: BTreeMap::new(),
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn shell_ready(d: &dyn Driver, id: &str) -> Result<(), String> {
    let out = collect(
        d,
        id,
        ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", "true"]),
            Duration::from_secs(30),
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    (out.exit_code == Some(0))
        .then_some(())
        .ok_or("exec failed".into())
}

/// Seconds from starting QEMU to the root disk's shell having run, with no agent: the
/// same kernel, the driver's initramfs (its modules), the image's disk.
fn bare_boot(cfg: &VmConfig, boot: &Path, disk: &Path) -> Result<f64, String> {
    let machine = match cfg.accel {
        Accel::Kvm => "microvm,x-option-roms=off,pic=off,pit=off,rtc=off,isa-serial=on",
        Accel::Tcg => "microvm,x-option-roms=off,pic=off,pit=on,rtc=on,isa-serial=on",
    };
    let (accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let khz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|i| {
            i.lines().find_map(|l| {
                l.strip_prefix("cpu MHz")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|m| {
            format!(
                " tsc=reliable no_timer_check tsc_early_khz={}",
                (m * 1000.0) as u64
            )
        })
        .unwrap_or_default();
    let tcg = if cfg.accel == Accel::Tcg {
        khz
    } else {
        String::new()
    };
    let script = "/bin/busybox mount -t devtmpfs d /dev; for m in $(/bin/busybox cat /modules); do /bin/busybox insmod /lib/modules/$m; done; /bin/busybox mount -o ro /dev/vda /newroot && /bin/busybox chroot /newroot /bin/sh -c true && /bin/busybox echo SHELL-READY; /bin/busybox poweroff -f";
    let append = format!("console=ttyS0 quiet panic=-1 reboot=t mitigations=off{tcg} rdinit=/bin/busybox -- sh -c \"{script}\"");
    let t = Instant::now();
    let mut child = std::process::Command::new(&cfg.qemu)
        .args([
            "-M", machine, "-accel", accel, "-cpu", cpu, "-m", "192M", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(boot.join("vmlinuz"))
        .arg("-initrd")
        .arg(boot.join("initrd.cpio"))
        .arg("-append")
        .arg(&append)
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut secs = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if line.contains("SHELL-READY") {
            secs = Some(t.elapsed().as_secs_f64());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    secs.ok_or_else(|| "the bare VM never reached its shell".into())
}

/// QEMU's PSS in KiB for machine `id` (found by its `-name`).
fn qemu_pss_kib(id: &str) -> Option<u64> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("/usr/bin/qemu-system") && cmd.contains(&format!("-name\0{id}\0")) {
            let s = std::fs::read_to_string(e.path().join("smaps_rollup")).ok()?;
            return s
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let tar = args.get(1).ok_or("usage: vm_bench <rootfs.tar> [N]")?;
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let agent = std::env::var("RNR_AGENT_PATH").map_err(|_| "set RNR_AGENT_PATH")?;
    let pid = std::process::id();
    let dir = std::path::PathBuf::from(format!("/var/tmp/rnr-vmbench-{pid}"));
    let mut cfg = VmConfig::new(dir.join("vm"), format!("vmbench-{pid}"));
    cfg.agent = Some(agent.clone().into());
    cfg.bridge = "rnrvmb0".into();
    cfg.subnet = "10.238.0.0/22".into();
    cfg.disk_mib = 1024;
    if std::env::var("RNR_VM_ACCEL").as_deref() == Ok("tcg") {
        cfg.accel = Accel::Tcg;
        cfg.boot_timeout_seconds = 120;
    }
    let vm = VmDriver::new(cfg.clone()).await?;
    vm.images().import("tiny", Path::new(tar)).await?;
    let mut ncfg =
        rnr_driver_native::NativeConfig::new(dir.join("native"), format!("vmbench-n-{pid}"));
    ncfg.bridge = "rnrvmbn0".into();
    ncfg.subnet = "10.238.8.0/22".into();
    ncfg.agent = Some(agent.into());
    let native = rnr_driver_native::NativeDriver::new(ncfg).await?;
    native.images().import("tiny", Path::new(tar)).await?;
    let boot = std::fs::read_dir(dir.join("vm/boot"))?
        .flatten()
        .next()
        .ok_or("no boot files")?
        .path();
    let disk = std::fs::read_dir(dir.join("vm/images/tiny"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ext4"))
        .ok_or("no image disk")?;

    let (mut vm_t, mut bare_t, mut nat_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut result: Result<(), String> = Ok(());
    // Interleaved, so that a noisy moment of the host hits all three alike.
    for i in 0..n {
        let t = Instant::now();
        let s = spec(i, "v");
        if let Err(e) = vm.create(&s).await {
            result = Err(format!("vm create: {e}"));
            break;
        }
        if let Err(e) = shell_ready(&vm, &s.id).await {
            result = Err(format!("vm exec: {e}"));
            break;
        }
        vm_t.push(t.elapsed().as_secs_f64());
        match bare_boot(&cfg, &boot, &disk) {
            Ok(s) => bare_t.push(s),
            Err(e) => eprintln!("bare boot: {e}"),
        }
        let t = Instant::now();
        let s = spec(i, "n");
        if let Err(e) = native.create(&s).await {
            result = Err(format!("native create: {e}"));
            break;
        }
        let _ = shell_ready(&native, &s.id).await;
        nat_t.push(t.elapsed().as_secs_f64());
    }
    if result.is_ok() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut pss: Vec<f64> = (0..vm_t.len())
            .filter_map(|i| qemu_pss_kib(&spec(i, "v").id))
            .map(|k| k as f64 / 1024.0)
            .collect();
        println!("accel: {:?}, {} rounds", cfg.accel, vm_t.len());
        println!(
            "vm kind   create -> shell ready: p50 {:.3} s  p90 {:.3} s",
            pct(&mut vm_t.clone(), 0.5),
            pct(&mut vm_t, 0.9)
        );
        println!(
            "bare qemu boot   -> shell      : p50 {:.3} s  p90 {:.3} s",
            pct(&mut bare_t.clone(), 0.5),
            pct(&mut bare_t, 0.9)
        );
        println!(
            "native    create -> shell ready: p50 {:.3} s  p90 {:.3} s",
            pct(&mut nat_t.clone(), 0.5),
            pct(&mut nat_t, 0.9)
        );
        if !pss.is_empty() {
            println!(
                "idle VM (128 MiB limit) QEMU PSS after 10 s: median {:.1} MiB, max {:.1} MiB",
                pct(&mut pss.clone(), 0.5),
                pct(&mut pss, 1.0)
            );
        }
    }
    for m in vm.list().await.unwrap_or_default() {
        let _ = vm.delete(&m.id).await;
    }
    for m in native.list().await.unwrap_or_default() {
        let _ = native.delete(&m.id).await;
    }
    vm.teardown().await;
    native.teardown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Into::into)
}
