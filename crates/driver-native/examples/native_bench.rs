//! Measures create → first successful `true` exec over N machines with the native driver,
//! then deletes everything it made. Usage (root):
//! `native_bench <busybox-rootfs.tar> [N] [--userns] [--disk=auto|btrfs|tmpfs] [--keep-going]`.
//! With `RUST_LOG=rnr_driver_native=debug` it logs each start's steps and their times.
//! With `RNR_DEBUG_EXEC="cmd"` it runs one command in one machine and prints the outcome.

use rnr_driver::{collect, Driver, ExecRequest, ExecSpec, Limits, MachineSpec, NetworkSpec};
use rnr_driver_native::{NativeConfig, NativeDriver};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `RUST_LOG=rnr_driver_native=debug` shows each start's steps (prepare, disk, runtime…).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let tar = args
        .get(1)
        .ok_or("usage: native_bench <rootfs.tar> [N] [--userns]")?;
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let userns = args.iter().any(|a| a == "--userns");
    let dir = std::env::temp_dir().join(format!("rnr-bench-{}", std::process::id()));
    let mut cfg = NativeConfig::new(&dir, format!("bench-{}", std::process::id()));
    cfg.bridge = "rnrbench0".into();
    cfg.subnet = "10.239.0.0/16".into();
    cfg.userns = userns;
    if let Some(mode) = args.iter().find_map(|a| a.strip_prefix("--disk=")) {
        cfg.disk = mode.parse()?;
    }
    let driver = NativeDriver::new(cfg).await?;
    println!("disk mode: {:?}", driver.disk_mode());
    driver
        .images()
        .import("tiny", std::path::Path::new(tar))
        .await?;
    let mut times = Vec::new();
    let mut create_times = Vec::new();
    let mut result = Ok(());
    for i in 0..n {
        let spec = MachineSpec {
            kind: Default::default(),
            id: format!("b{i}"),
            image: "tiny".into(),
            hostname: format!("b{i}"),
            limits: Limits::default(),
            network: NetworkSpec::default(),
            labels: BTreeMap::new(),
        };
        let t = Instant::now();
        if let Err(e) = driver.create(&spec).await {
            result = Err(format!("create {i}: {e}"));
            break;
        }
        let created = t.elapsed();
        let argv: Vec<String> = match std::env::var("RNR_DEBUG_EXEC") {
            Ok(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd],
            Err(_) => vec!["true".into()],
        };
        let out = collect(
            &driver,
            &spec.id,
            ExecRequest::new(ExecSpec::new(argv), Duration::from_secs(10)),
        )
        .await;
        times.push(t.elapsed());
        create_times.push(created);
        match out {
            Ok(o) if std::env::var("RNR_DEBUG_EXEC").is_ok() => {
                println!("{o:?}");
                println!("stdout: {}", String::from_utf8_lossy(&o.stdout));
                println!("stderr: {}", String::from_utf8_lossy(&o.stderr));
            }
            Ok(o) if o.exit_code == Some(0) => {}
            other => {
                result = Err(format!("exec in {i}: {other:?}"));
                break;
            }
        }
    }
    let t = Instant::now();
    for m in driver.list().await? {
        driver.delete(&m.id).await?;
    }
    let delete_time = t.elapsed();
    driver.teardown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    times.sort();
    create_times.sort();
    let create_p50 = create_times[create_times.len() / 2];
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{} starts (create → `true` exec ok): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (create alone p50 {:.1} ms); delete all {:.1} ms",
        times.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
        create_p50.as_secs_f64() * 1e3,
        delete_time.as_secs_f64() * 1e3
    );
    Ok(())
}
