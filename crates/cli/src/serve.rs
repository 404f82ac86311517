//! `rnr serve`: opens the store, connects the driver, reconciles, then serves the HTTP
//! layer (API, terminals, pages) and reaps expired machines until SIGINT/SIGTERM.

use crate::config::{Config, DriverChoice, LogFormat};
use anyhow::Context;
use rnr_core::{MachinePolicy, Platform};
use rnr_driver::Driver;
use rnr_store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RNR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Repeated initialisation (tests) is harmless: the first subscriber stays.
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    Ok(Store::open(&cfg.data_dir.join("rnr.db")).await?)
}

/// The driver named by the configuration, owning the machines of this data dir's instance,
/// ready to run machines.
pub async fn connect_driver(cfg: &Config, store: &Store) -> anyhow::Result<Arc<dyn Driver>> {
    connect(cfg, store, true).await
}

/// The configured driver for image commands: the native driver leaves the host's network
/// (bridge, iptables) alone, since importing and listing images needs none of it.
pub async fn connect_image_driver(cfg: &Config, store: &Store) -> anyhow::Result<Arc<dyn Driver>> {
    connect(cfg, store, false).await
}

/// The native driver's settings from the configuration (runtime resolved on PATH).
pub fn native_config(cfg: &Config, owner: &str) -> rnr_driver_native::NativeConfig {
    let n = &cfg.native;
    let state_dir = n
        .state_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("native"));
    let mut c = rnr_driver_native::NativeConfig::new(state_dir, owner);
    c.runtime = resolve_program(&n.runtime);
    c.bridge = n.bridge.clone();
    c.subnet = n.subnet.clone();
    c.userns = n.userns;
    c.uid_base = n.uid_base;
    c.disk_mib = (n.disk_mib > 0).then_some(n.disk_mib);
    c.disk = n.disk;
    c.disk_pool_gib = n.disk_pool_gib;
    c.max_ptys = n.max_ptys;
    c.runtime_timeout = Duration::from_secs(n.runtime_timeout_seconds.max(1));
    c.cgroup_root = cfg.cgroup_root.clone();
    c.proc_root = cfg.proc_root.clone();
    c.agent = cfg.agent();
    c
}

/// A bare program name found on PATH, else the name as given.
fn resolve_program(p: &Path) -> PathBuf {
    if p.components().count() != 1 {
        return p.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(p))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| p.to_path_buf())
}

/// The backend that runs machines, once `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Native,
    Docker,
}

/// The backend the `driver` setting stands for here; `auto`: native when its preflight
/// passes, else docker (saying why).
fn choose_backend(cfg: &Config, owner: &str) -> Backend {
    match cfg.driver {
        DriverChoice::Native => Backend::Native,
        DriverChoice::Docker => Backend::Docker,
        DriverChoice::Auto => match rnr_driver_native::preflight(&native_config(cfg, owner)) {
            Ok(()) => Backend::Native,
            Err(e) => {
                let warning = auto_fallback_warning(&e.to_string());
                // Also straight on stderr: a log filter or JSON logs must not hide it.
                eprintln!("rnr: WARNING: {warning}");
                tracing::warn!(reason = %e, "{warning}");
                Backend::Docker
            }
        },
    }
}

/// What `driver = auto` says when it falls back to Docker: why native could not be used,
/// and what the operator loses with Docker.
fn auto_fallback_warning(reason: &str) -> String {
    format!(
        "driver = auto is FALLING BACK TO DOCKER: the native driver cannot run here \
         ({reason}). Machines are slower to start (a container through dockerd and \
         containerd instead of one runtime call) and every exec and keystroke crosses the \
         engine; root in them is an unprivileged host uid only if the engine remaps user \
         namespaces, and then all machines share one uid range (native gives each its \
         own); [native] runtime (e.g. runsc, a second kernel boundary) does not apply. Fix \
         the above to get the native driver, or set driver = \"docker\" to choose Docker \
         knowingly"
    )
}

async fn connect(cfg: &Config, store: &Store, machines: bool) -> anyhow::Result<Arc<dyn Driver>> {
    let instance = store
        .meta_or_insert("instance_id", || rnr_core::random_id(10))
        .await?;
    let owner = format!("rnr-{instance}");
    let containers = connect_containers(cfg, &owner, machines).await?;
    let vms = connect_vms(cfg, &owner).await?;
    Ok(Arc::new(rnr_driver::Kinds::new(containers, vms)))
}

/// The vm driver when `[vm] enabled`, else why there is none (said to whoever asks for a
/// VM). Enabled on a host that cannot run it is an error that names what is missing.
async fn connect_vms(cfg: &Config, owner: &str) -> anyhow::Result<Result<Arc<dyn Driver>, String>> {
    let v = &cfg.vm;
    if !v.enabled {
        return Ok(Err("[vm] enabled is false on this platform".into()));
    }
    let state_dir = v
        .state_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("vm"));
    let mut c = rnr_driver_vm::VmConfig::new(state_dir, owner);
    c.accel = v.accel;
    c.kernel = v.kernel.clone();
    c.disk_mib = v.disk_mib;
    c.kernel_overhead_mib = v.kernel_overhead_mib;
    c.bridge = v.bridge.clone();
    c.subnet = v.subnet.clone();
    c.boot_timeout_seconds = v.boot_timeout_seconds;
    c.agent = cfg.agent();
    c.cgroup_root = cfg.cgroup_root.clone();
    if c.accel == rnr_driver_vm::Accel::Kvm {
        rnr_driver_vm::kvm_usable().context("[vm] enabled with accel = \"kvm\"")?;
    } else {
        tracing::warn!(
            "[vm] accel = \"tcg\": VMs are emulated, boots take seconds; not for learners"
        );
    }
    let driver = rnr_driver_vm::VmDriver::new(c)
        .await
        .context("[vm] enabled, but the vm driver cannot run here")?;
    tracing::info!(accel = ?v.accel, "vm driver: machines of kind vm available");
    Ok(Ok(Arc::new(driver)))
}

async fn connect_containers(
    cfg: &Config,
    owner: &str,
    machines: bool,
) -> anyhow::Result<Arc<dyn Driver>> {
    let owner = owner.to_string();
    match choose_backend(cfg, &owner) {
        Backend::Native => {
            let ncfg = native_config(cfg, &owner);
            let state_dir = ncfg.state_dir.clone();
            let driver = if machines {
                rnr_driver_native::NativeDriver::new(ncfg).await
            } else {
                rnr_driver_native::NativeDriver::open(ncfg)
            };
            let driver = driver.with_context(|| {
                format!(
                    "cannot use the native driver (state dir {})",
                    state_dir.display()
                )
            })?;
            Ok(Arc::new(driver))
        }
        Backend::Docker => {
            let driver =
                rnr_driver_docker::DockerDriver::connect(rnr_driver_docker::DockerConfig {
                    socket: cfg.docker.socket.clone(),
                    owner,
                    network: cfg.docker.network.clone(),
                    proc_root: cfg.proc_root.clone(),
                    agent: cfg.agent(),
                    agent_stage: cfg.data_dir.join("agent"),
                    disk_mib: (cfg.docker.disk_mib > 0).then_some(cfg.docker.disk_mib),
                    require_userns_remap: cfg.docker.require_userns_remap,
                    max_ptys: cfg.docker.max_ptys,
                })
                .await
                .with_context(|| {
                    format!(
                        "cannot use the docker driver (is dockerd running at {}?)",
                        cfg.docker.socket.display()
                    )
                })?;
            tracing::info!(
                storage_driver = driver.storage_driver(),
                disk_quota_mib = ?driver.disk_quota_mib(),
                userns_remap = driver.userns_remapped(),
                "docker driver"
            );
            if machines && !driver.userns_remapped() {
                // The driver logged why; also straight on stderr, as for auto's fallback.
                eprintln!(
                    "rnr: WARNING: the docker engine at {} does not remap user namespaces: \
                     root in a machine is root on the host (docker.require_userns_remap \
                     refuses such an engine)",
                    cfg.docker.socket.display()
                );
            }
            Ok(Arc::new(driver))
        }
    }
}

pub fn policy(cfg: &Config) -> MachinePolicy {
    MachinePolicy {
        capacity: cfg.capacity,
        default_image: cfg.default_image.clone(),
        default_ttl: Duration::from_secs(cfg.default_ttl_seconds),
        max_ttl: Duration::from_secs(cfg.max_ttl_seconds),
        default_limits: cfg.default_limits,
        max_limits: cfg.max_limits,
        allow_outbound: cfg.allow_outbound,
        max_exec_timeout: Duration::from_secs(600),
        delete_timeout: Duration::from_secs(cfg.delete_timeout_seconds.max(1)),
        parallel_deletes: cfg.parallel_deletes.max(1),
        ready_timeout: Duration::from_millis(cfg.ready_timeout_ms.max(1)),
        disk_dirs: {
            let mut dirs = vec![cfg.data_dir.clone()];
            dirs.extend(cfg.native.state_dir.clone());
            dirs.extend(cfg.vm.state_dir.clone());
            dirs
        },
        min_free_disk_mib: cfg.min_free_disk_mib,
        key_quotas: rnr_core::KeyQuotas {
            max_machines: cfg.quotas.max_machines_per_key,
            creations_per_minute: cfg.quotas.creations_per_minute_per_key,
        },
    }
}

/// The web UI's settings.
pub fn ui_config(cfg: &Config) -> rnr_ui::UiConfig {
    let u = &cfg.ui;
    rnr_ui::UiConfig {
        anonymous: u.anonymous,
        max_anonymous_per_client: u.max_anonymous_per_client,
        max_anonymous: u.max_anonymous,
        learner_token_ttl: Duration::from_secs(u.learner_token_ttl_seconds.max(60)),
        visitor_ttl: Duration::from_secs(u.visitor_ttl_seconds.max(60)),
        ..rnr_ui::UiConfig::default()
    }
}

/// The HTTP layer's settings; a bad origin or proxy is refused naming it.
pub fn http_config(cfg: &Config) -> anyhow::Result<rnr_http::HttpConfig> {
    let h = &cfg.http;
    Ok(rnr_http::HttpConfig::new(
        &cfg.ui.embed_origins,
        &h.trusted_proxies,
        rnr_http::ServerLimits {
            header_read_timeout: Duration::from_secs(h.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(h.idle_timeout_seconds),
            max_connections: h.max_connections,
        },
    )?)
}

/// The checker's settings; a bad `webhook_allow` or `pytest_subnet` entry is refused
/// naming it.
pub fn checker_config(cfg: &Config) -> anyhow::Result<rnr_checker::CheckerConfig> {
    let c = &cfg.checker;
    let webhook_allow = c
        .webhook_allow
        .iter()
        .map(|a| {
            a.parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| {
                    format!("[checker] webhook_allow: {a:?} is not an IP address or CIDR")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let subnet: ipnet::Ipv4Net = c.pytest_subnet.parse().with_context(|| {
        format!(
            "[checker] pytest_subnet: {:?} is not an IPv4 CIDR",
            c.pytest_subnet
        )
    })?;
    anyhow::ensure!(
        (8..=24).contains(&subnet.prefix_len()),
        "[checker] pytest_subnet: {subnet} must be a /8 to a /24 (one address per check running at once)"
    );
    // Below 65536 are the host's own users; u32::MAX is "no change" to setresuid.
    let last = u64::from(c.pytest_uid_base) + (1u64 << (32 - subnet.prefix_len()));
    anyhow::ensure!(
        c.pytest_uid_base >= 65_536 && last < u64::from(u32::MAX),
        "[checker] pytest_uid_base: {} must be at least 65536 and leave room for {} uids below 4294967295",
        c.pytest_uid_base,
        1u64 << (32 - subnet.prefix_len())
    );
    let mut hide = rnr_checker::sandbox::SandboxConfig::default().hide;
    hide.push(cfg.data_dir.clone());
    let sandbox = rnr_checker::sandbox::SandboxConfig {
        enabled: c.pytest_sandbox,
        cgroup_root: cfg.cgroup_root.clone(),
        proc_root: cfg.proc_root.clone(),
        uid_base: c.pytest_uid_base,
        subnet,
        memory_mib: c.pytest_memory_mib,
        pids: c.pytest_pids,
        hide,
    };
    Ok(rnr_checker::CheckerConfig {
        exercises_dir: Some(
            c.exercises_dir
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("exercises")),
        ),
        workers: c.workers,
        webhook_secret: c.webhook_secret.clone(),
        webhook_allow,
        sandbox,
        debounce: Duration::from_millis(c.debounce_ms),
        retention: (c.retention_days > 0).then(|| Duration::from_secs(c.retention_days * 86_400)),
        retention_interval: Duration::from_secs(3600),
        max_attempts: c.max_attempts.max(1),
        retry_delay: Duration::from_millis(c.retry_delay_ms),
    })
}

async fn shutdown_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return token.cancelled().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = token.cancelled() => {}
    }
    tracing::info!("shutting down; machines keep running and are adopted at the next start");
    token.cancel();
}

/// Raises the soft limit on open files to the hard one: every machine (its user namespace
/// on the native driver), exec and open terminal holds descriptors, and the usual soft
/// limit of 1,024 would cap a host far below the machines it can hold.
fn raise_nofile_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let wanted = r.rlim_max;
            r.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::warn!(limit = wanted, "could not raise the open-files limit");
            }
        }
    }
}

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    raise_nofile_limit();
    match rnr_driver::fault::check_env() {
        Ok(None) => {}
        Ok(Some(point)) => {
            eprintln!("rnr: WARNING: fault injection armed: this process kills itself at {point} (RNR_FAULT; tests only)");
        }
        Err(e) => anyhow::bail!("{e}"),
    }
    // Refused before anything starts: a typo in an origin or CIDR names itself.
    let http = http_config(&cfg).context("invalid configuration")?;
    let checker_cfg = checker_config(&cfg).context("invalid configuration")?;
    if !checker_cfg.sandbox.enabled {
        tracing::warn!(
            "[checker] pytest_sandbox = false: pytest checks run unconfined, as rnr's own user \
             with its files and network; only for a trusted development host"
        );
    }
    if cfg.agent().is_none() {
        tracing::warn!(
            "no in-machine agent: set agent_path / RNR_AGENT_PATH (scripts/build-agent.sh) or put \
             rnr-agent beside rnr; terminals and checks need it"
        );
    }
    let store = open_store(&cfg).await?;
    let driver = connect_driver(&cfg, &store).await?;
    let driver_name = driver.name();
    let platform = Platform::new(store.clone(), driver, policy(&cfg));
    // Before reconciling: a delete a crash interrupted, carried out now, ends the
    // machine's terminals and recordings like any other.
    let terminals = rnr_terminal::Gateway::new(
        platform.clone(),
        rnr_terminal::GatewayConfig::new(&cfg.terminal, &cfg.data_dir),
    )
    .await?;
    let report = platform
        .reconcile()
        .await
        .context("reconciliation failed")?;
    tracing::info!(
        adopted = report.adopted.len(),
        vanished = report.vanished.len(),
        orphans_removed = report.orphans_removed.len(),
        half_built_removed = report.half_built_removed.len(),
        deletes_finished = report.deletes_finished.len(),
        "reconciled machines with the driver"
    );
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let reaper = {
        let platform = platform.clone();
        let token = token.clone();
        let interval = Duration::from_secs(cfg.reap_interval_seconds.max(1));
        tokio::spawn(async move { platform.run_reaper(interval, token).await })
    };
    let checker = rnr_checker::Checker::new(platform.clone(), store.check_runs(), checker_cfg);
    let checker_tasks = checker.start(token.clone()).await?;
    tracing::info!(driver = %driver_name, data_dir = %cfg.data_dir.display(), capacity = cfg.capacity, "platform ready");
    // Kept free of fields so scripts can read the address off the end of the line.
    tracing::info!("rnr listening on http://{addr}");
    {
        // Typing in a terminal triggers live checking of that machine.
        let live = checker.clone();
        terminals.on_activity(move |machine| live.notify_activity(machine));
        let gw = terminals.clone();
        platform
            .metrics()
            .terminals_open
            .set_source(move || i64::try_from(gw.open_terminals()).unwrap_or(i64::MAX));
    }
    let ui = rnr_ui::Ui::new(
        platform.clone(),
        checker.clone(),
        terminals.clone(),
        ui_config(&cfg),
    )
    .await?;
    let limits = http.limits();
    let app = rnr_http::app(rnr_http::AppState {
        platform,
        checker,
        terminals,
        ui,
        http,
    });
    let res = rnr_http::run(listener, app, limits, shutdown_signal(token.clone())).await;
    token.cancel();
    let _ = reaper.await;
    for t in checker_tasks {
        let _ = t.await;
    }
    store.close().await;
    res.context("HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(f: impl FnOnce(&mut crate::config::CheckerSection)) -> anyhow::Result<()> {
        let mut cfg = Config::default();
        f(&mut cfg.checker);
        checker_config(&cfg).map(|_| ())
    }

    #[test]
    fn bad_checker_settings_are_refused_naming_them() {
        checker(|_| {}).expect("the defaults");
        let e = checker(|c| c.webhook_allow = vec!["10.0.0.0/8".into(), "lms.local".into()])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("webhook_allow: \"lms.local\""),
            "{e:#}"
        );
        let e = checker(|c| c.pytest_subnet = "198.18.0.0/28".into()).unwrap_err();
        assert!(format!("{e:#}").contains("pytest_subnet"), "{e:#}");
        // uid 0 to 65535 are the host's own users; -1 would leave the check root.
        for base in [0, u32::MAX - 10] {
            let e = checker(|c| c.pytest_uid_base = base).unwrap_err();
            assert!(format!("{e:#}").contains("pytest_uid_base"), "{e:#}");
        }
        let allowed = checker_config(&Config {
            checker: crate::config::CheckerSection {
                webhook_allow: vec!["127.0.0.1".into(), "fd00::/8".into()],
                ..Default::default()
            },
            ..Config::default()
        })
        .unwrap()
        .webhook_allow;
        assert_eq!(
            allowed,
            ["127.0.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()]
        );
    }
}
