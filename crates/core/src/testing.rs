//! Test support (feature `testing`): a [`Platform`] on the fake driver with a real SQLite
//! store, both in a temporary directory of the test's own, for fast tests of the core and of
//! the crates above it (checker, terminal) without root, Docker or crun.
//!
//! Machines run the busybox image `tiny` (built from the host's `/bin/busybox`, Debian's
//! busybox-static) with the real agent (`RNR_AGENT_PATH`, else built by
//! scripts/build-agent.sh), in a user namespace of their own also when root runs the
//! tests, so that they behave alike for everyone (only root exists in them). Dropping a
//! [`TestPlatform`] deletes every machine its driver has, whatever the test did, and then
//! the directory.

use crate::{ExecCommand, MachinePolicy, Platform};
use rnr_driver::{Driver, MachineSpec};
use rnr_driver_fake::{FakeConfig, FakeDriver};
use rnr_store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The image every test machine runs.
pub const IMAGE: &str = "tiny";

/// A policy for tests: the `tiny` image, a few machines, short lifetimes allowed.
pub fn policy() -> MachinePolicy {
    MachinePolicy {
        capacity: 8,
        default_image: IMAGE.into(),
        default_ttl: Duration::from_secs(600),
        max_ttl: Duration::from_secs(3600),
        ..MachinePolicy::default()
    }
}

/// `/bin/sh -c script`, as root, within 10 s.
pub fn sh(script: &str) -> ExecCommand {
    ExecCommand {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: None,
        env: Vec::new(),
        user: None,
        workdir: None,
        timeout: Duration::from_secs(10),
    }
}

/// A platform on the fake driver, with its store and driver state in one temp dir.
pub struct TestPlatform {
    pub platform: Platform,
    /// The same driver the platform holds, for its fault knobs and its own view.
    pub driver: FakeDriver,
    pub store: Store,
    policy: MachinePolicy,
    // Last: removed after the machines are gone (see Drop).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestPlatform({})", self.dir.path().display())
    }
}

const OWNER: &str = "rnr-test";

async fn open(dir: &Path, policy: &MachinePolicy) -> (Platform, FakeDriver, Store) {
    let store = Store::open(&dir.join("rnr.db"))
        .await
        .expect("open the test store");
    let driver = FakeDriver::open(FakeConfig {
        // Whoever runs the tests: machines as an unprivileged user gets them.
        user_namespace: true,
        ..FakeConfig::new(
            dir.join("driver"),
            OWNER,
            rnr_driver::conformance::agent_path(),
        )
    })
    .expect("open the fake driver");
    let platform = Platform::new(store.clone(), Arc::new(driver.clone()), policy.clone());
    (platform, driver, store)
}

impl TestPlatform {
    /// A fresh platform under `policy`, with the `tiny` image imported.
    pub async fn start(policy: MachinePolicy) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rnr-test-")
            .tempdir()
            .expect("a temp dir for the test");
        let tar = dir.path().join("tiny.tar");
        let (work, out) = (dir.path().to_path_buf(), tar.clone());
        tokio::task::spawn_blocking(move || {
            rnr_images::build_tiny(
                Path::new("/bin/busybox"),
                &work,
                &out,
                &rnr_images::NoProgress,
            )
        })
        .await
        .expect("the image build ran")
        .expect("the tiny image builds from /bin/busybox (apt-get install busybox-static)");
        let (platform, driver, store) = open(dir.path(), &policy).await;
        driver
            .images()
            .import(IMAGE, &tar)
            .await
            .expect("import the tiny image");
        std::fs::remove_file(&tar).expect("remove the image tarball");
        Self {
            platform,
            driver,
            store,
            policy,
            dir,
        }
    }

    /// As after a restart of `rnr serve`: a new store handle, driver and platform on the same
    /// database and driver state dir (the machines keep running). Nothing is reconciled
    /// yet; call [`Platform::reconcile`] as `rnr serve` does.
    pub async fn restart(&mut self) {
        let (platform, driver, store) = open(self.dir.path(), &self.policy).await;
        self.platform = platform;
        self.driver = driver;
        self.store = store;
    }

    /// The test's own directory (for exercises, recordings and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A spec for a machine made behind the platform's back, straight in the driver.
    pub fn spec(&self, id: &str) -> MachineSpec {
        MachineSpec {
            kind: Default::default(),
            id: id.to_string(),
            image: IMAGE.into(),
            hostname: id.to_string(),
            limits: self.policy.default_limits,
            network: Default::default(),
            labels: Default::default(),
        }
    }

    /// A running machine with the policy's defaults; its id.
    pub async fn machine(&self) -> String {
        self.platform
            .create(crate::CreateMachine::default())
            .await
            .expect("a machine")
            .id
    }

    /// Runs `script` in machine `id` and returns its output; panics unless it exits 0.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let out = self
            .platform
            .exec(id, sh(script))
            .await
            .unwrap_or_else(|e| panic!("{script:?} in {id}: {e}"));
        assert_eq!(out.exit_code, Some(0), "{script:?} in {id}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where machine `id`'s root filesystem is on the host (the fake driver's layout): to
    /// look into a machine without an exec, as often as a test likes.
    pub fn root_of(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("driver/machines")
            .join(id)
            .join("root")
    }

    /// Ids of the machines the driver has, running or not.
    pub async fn driver_machines(&self) -> Vec<String> {
        self.driver
            .list()
            .await
            .expect("the fake driver lists its machines")
            .into_iter()
            .map(|m| m.id)
            .collect()
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        let driver = self.driver.clone();
        let state: PathBuf = self.dir.path().join("driver");
        // Drop cannot be async and may run inside a runtime: a fresh thread with its own
        // runtime deletes what is left (a test that failed half-way included).
        let _ = std::thread::spawn(move || {
            driver.delay_deletes(Duration::ZERO);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test's teardown");
            rt.block_on(async {
                for m in driver.list().await.unwrap_or_default() {
                    if let Err(e) = driver.delete(&m.id).await {
                        eprintln!(
                            "test teardown: deleting {} in {}: {e}",
                            m.id,
                            state.display()
                        );
                    }
                }
            });
        })
        .join();
    }
}
