//! The platform's rules on the fake driver with a real store: capacity under concurrency,
//! request validation, TTL reaping, extension, reconciliation after a restart, failing and
//! slow drivers. No root, Docker or crun (`rnr_core::testing`).

use rnr_core::testing::{policy, sh, TestPlatform};
use rnr_core::{
    CoreError, CreateMachine, LimitsRequest, MachinePolicy, MachineState, ReconcileReport,
};
use rnr_driver::{Driver, DriverError};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn with_ttl(ttl_seconds: u64) -> CreateMachine {
    CreateMachine {
        ttl_seconds: Some(ttl_seconds),
        ..CreateMachine::default()
    }
}

async fn state_of(tp: &TestPlatform, id: &str) -> MachineState {
    tp.platform.get(id).await.expect("the machine's row").state
}

/// Sleeps until machine `id` is past its expiry.
async fn until_expired(tp: &TestPlatform, id: &str) {
    let m = tp.platform.get(id).await.unwrap();
    let left = m.expires_at - rnr_core::now_ms();
    if left >= 0 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 20)).await;
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_holds_under_concurrent_creates() {
    let tp = TestPlatform::start(MachinePolicy {
        capacity: 3,
        ..policy()
    })
    .await;
    let tasks: Vec<_> = (0..7)
        .map(|_| {
            let p = tp.platform.clone();
            tokio::spawn(async move { p.create(CreateMachine::default()).await })
        })
        .collect();
    let (mut created, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(m) => {
                assert_eq!(m.state, MachineState::Running);
                created.push(m.id);
            }
            Err(CoreError::Capacity { capacity, active }) => {
                assert_eq!(capacity, 3);
                assert!(active >= 3, "refused with {active} active");
                refused += 1;
            }
            Err(e) => panic!("neither created nor refused for capacity: {e}"),
        }
    }
    assert_eq!((created.len(), refused), (3, 4));
    let created = sorted(created);
    assert_eq!(
        tp.driver_machines().await,
        created,
        "nothing else in the driver"
    );
    let all = [
        MachineState::Creating,
        MachineState::Running,
        MachineState::Failed,
        MachineState::Deleted,
    ];
    let rows = tp.platform.list(&all).await.unwrap();
    assert_eq!(
        sorted(rows.into_iter().map(|m| m.id).collect()),
        created,
        "refused creates leave no row"
    );
    assert_eq!(tp.platform.active_machines().await.unwrap(), 3);
    let metrics = tp.platform.metrics();
    assert_eq!(metrics.machines_refused_capacity.load(Ordering::Relaxed), 4);
    // A deleted machine frees its place.
    tp.platform.delete(&created[0]).await.unwrap();
    let again = tp.machine().await;
    assert_eq!(state_of(&tp, &again).await, MachineState::Running);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let tp = TestPlatform::start(policy()).await;
    let limits = |memory_mib, cpu_millis, pids| CreateMachine {
        limits: LimitsRequest {
            memory_mib,
            cpu_millis,
            pids,
        },
        ..CreateMachine::default()
    };
    let cases = [
        (with_ttl(0), "ttl_seconds", "must be greater than 0"),
        (
            with_ttl(3601),
            "ttl_seconds",
            "3601 is above the maximum of 3600",
        ),
        (
            limits(Some(0), None, None),
            "limits.memory_mib",
            "greater than 0",
        ),
        (
            limits(Some(5000), None, None),
            "limits.memory_mib",
            "5000 is above the maximum of 4096",
        ),
        (
            limits(None, Some(4001), None),
            "limits.cpu_millis",
            "4001 is above the maximum of 4000",
        ),
        (limits(None, None, Some(0)), "limits.pids", "greater than 0"),
        (
            CreateMachine {
                outbound: Some(true),
                ..CreateMachine::default()
            },
            "outbound",
            "disabled on this platform",
        ),
        (
            CreateMachine {
                image: Some("Debian/12".into()),
                ..CreateMachine::default()
            },
            "image",
            "is not an image name",
        ),
    ];
    for (req, field, says) in cases {
        let e = tp.platform.create(req).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, CoreError::Invalid { field: f, .. } if f == field),
            "{field}: {e:?}"
        );
        assert!(text.contains(field) && text.contains(says), "{text}");
    }
    let mut no_argv = sh("true");
    no_argv.argv.clear();
    let mut no_time = sh("true");
    no_time.timeout = Duration::ZERO;
    for (cmd, field) in [(no_argv, "argv"), (no_time, "timeout_seconds")] {
        let e = tp.platform.exec("m-none", cmd).await.unwrap_err();
        assert!(
            matches!(&e, CoreError::Invalid { field: f, .. } if f == field),
            "{e:?}"
        );
    }
    let e = tp
        .platform
        .extend("m-none", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(&e, CoreError::Invalid { field, .. } if field == "ttl_seconds"));
    // Refused requests create nothing anywhere.
    assert_eq!(tp.platform.active_machines().await.unwrap(), 0);
    assert!(tp.driver_machines().await.is_empty());
    // An image that does not exist is the driver's answer: the row fails, nothing runs.
    let e = tp
        .platform
        .create(CreateMachine {
            image: Some("nope".into()),
            ..CreateMachine::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CoreError::ImageNotFound(i) if i == "nope"),
        "{e:?}"
    );
    let failed = tp.platform.list(&[MachineState::Failed]).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(tp.driver_machines().await.is_empty());
}

#[tokio::test]
async fn reaping_deletes_expired_machines_only() {
    let tp = TestPlatform::start(policy()).await;
    let long = tp.platform.create(with_ttl(600)).await.unwrap().id;
    let short = tp.platform.create(with_ttl(1)).await.unwrap().id;
    until_expired(&tp, &short).await;
    assert_eq!(tp.platform.reap_once().await.unwrap(), 1);
    let gone = tp.platform.get(&short).await.unwrap();
    assert_eq!(gone.state, MachineState::Deleted);
    assert!(gone.deleted_at.is_some());
    assert_eq!(tp.driver_machines().await, vec![long.clone()]);
    assert_eq!(state_of(&tp, &long).await, MachineState::Running);
    let e = tp.platform.exec(&short, sh("true")).await.unwrap_err();
    assert!(
        matches!(&e, CoreError::NotRunning { state, .. } if state == "deleted"),
        "{e:?}"
    );
    assert_eq!(tp.platform.reap_once().await.unwrap(), 0, "reaped once");
    let metrics = tp.platform.metrics();
    assert_eq!(metrics.machines_reaped.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_reaper_runs_until_shut_down() {
    let tp = TestPlatform::start(policy()).await;
    let id = tp.platform.create(with_ttl(1)).await.unwrap().id;
    let stop = tokio_util::sync::CancellationToken::new();
    let reaper = {
        let (p, stop) = (tp.platform.clone(), stop.clone());
        tokio::spawn(async move { p.run_reaper(Duration::from_millis(100), stop).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&tp, &id).await != MachineState::Deleted {
        assert!(Instant::now() < deadline, "the reaper did not delete {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tp.driver_machines().await.is_empty());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), reaper)
        .await
        .expect("the reaper ends when shut down")
        .unwrap();
}

#[tokio::test]
async fn extend_stays_within_the_maximum_lifetime() {
    let tp = TestPlatform::start(MachinePolicy {
        max_ttl: Duration::from_secs(100),
        ..policy()
    })
    .await;
    let m = tp.platform.create(with_ttl(10)).await.unwrap();
    assert_eq!(m.expires_at - m.created_at, 10_000);
    let m2 = tp
        .platform
        .extend(&m.id, Duration::from_secs(50))
        .await
        .unwrap();
    assert_eq!(
        m2.expires_at,
        m.expires_at + 50_000,
        "from the current expiry"
    );
    assert_eq!(tp.platform.extension_room(&m2), Duration::from_secs(40));
    let e = tp
        .platform
        .extend(&m.id, Duration::from_secs(41))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, CoreError::Invalid { field, .. } if field == "ttl_seconds"),
        "{e:?}"
    );
    assert!(text.contains("(40 s)") && text.contains("100 s"), "{text}");
    let m3 = tp
        .platform
        .extend(&m.id, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(m3.expires_at, m.created_at + 100_000, "up to the ceiling");
    assert!(tp
        .platform
        .extend(&m.id, Duration::from_secs(1))
        .await
        .is_err());
    // Only running machines are extended.
    tp.platform.delete(&m.id).await.unwrap();
    let e = tp
        .platform
        .extend(&m.id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(&e, CoreError::NotRunning { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_after_a_restart() {
    let mut tp = TestPlatform::start(policy()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(tp.platform.create(CreateMachine::default()).await.unwrap());
    }
    let (alive, crashed, vanished) = (ids[0].clone(), ids[1].id.clone(), ids[2].id.clone());
    // Whole in the driver, but its creation had not been recorded complete (its setup was
    // still running): half-built, never adopted.
    let unfinished = ids[3].id.clone();
    tp.store
        .set_creation_step(&unfinished, rnr_store::CreationStep::DriverCreated)
        .await
        .unwrap();
    // A delete was asked for and the crash came before the driver was done.
    let deleting = ids[4].id.clone();
    tp.store.request_delete(&deleting, 1).await.unwrap();
    tp.sh(&alive.id, "echo kept > /root/state").await;
    // A machine whose create the crash interrupted: a row, nothing in the driver.
    let interrupted = rnr_core::Machine {
        id: "m-interrupted".into(),
        state: MachineState::Creating,
        address: None,
        error: None,
        ..alive.clone()
    };
    assert!(tp
        .store
        .insert_if_capacity(&interrupted, 100)
        .await
        .unwrap());
    // One the driver has that the store does not know (an earlier life's leftover).
    tp.driver.create(&tp.spec("m-orphan")).await.unwrap();
    tp.driver.crash(&crashed);
    tp.driver.vanish(&vanished);

    tp.restart().await;
    let report = tp.platform.reconcile().await.unwrap();
    assert_eq!(report.adopted, vec![alive.id.clone()]);
    assert_eq!(
        report.vanished,
        sorted(vec![crashed.clone(), vanished.clone()])
    );
    assert_eq!(
        report.half_built_removed,
        sorted(vec![unfinished.clone(), "m-interrupted".into()])
    );
    assert_eq!(report.deletes_finished, vec![deleting.clone()]);
    assert_eq!(
        tp.platform.get(&deleting).await.unwrap().state,
        MachineState::Deleted
    );
    assert!(
        report.orphans_removed.contains(&"m-orphan".to_string()),
        "{report:?}"
    );
    assert_eq!(
        tp.driver_machines().await,
        vec![alive.id.clone()],
        "only the adopted"
    );
    for (id, why) in [
        (&crashed, "machine stopped while the platform was down"),
        (&vanished, "machine vanished while the platform was down"),
        (
            &"m-interrupted".to_string(),
            "creation interrupted by a restart of rnr serve (at step reserved); its parts were removed",
        ),
        (
            &unfinished,
            "creation interrupted by a restart of rnr serve (at step driver_created); its parts were removed",
        ),
    ] {
        let m = tp.platform.get(id).await.unwrap();
        assert_eq!(
            (m.state, m.error.as_deref()),
            (MachineState::Failed, Some(why))
        );
    }
    // The adopted machine is the same machine, reached through the new platform.
    let m = tp.platform.get(&alive.id).await.unwrap();
    assert_eq!(
        (m.state, &m.address),
        (MachineState::Running, &alive.address)
    );
    assert_eq!(tp.sh(&alive.id, "cat /root/state").await, "kept\n");
    // Reconciling again finds everything in order.
    assert_eq!(
        tp.platform.reconcile().await.unwrap(),
        ReconcileReport {
            adopted: vec![alive.id.clone()],
            ..ReconcileReport::default()
        }
    );
}

#[tokio::test]
async fn a_failing_create_leaves_a_failed_row_and_nothing_running() {
    let tp = TestPlatform::start(policy()).await;
    tp.driver.fail_next_create("the disk is on fire");
    let e = tp
        .platform
        .create(CreateMachine::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            CoreError::Driver {
                source: DriverError::Backend { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("the disk is on fire"), "{e}");
    let failed = tp.platform.list(&[MachineState::Failed]).await.unwrap();
    assert_eq!(failed.len(), 1);
    let why = failed[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("the disk is on fire"), "{why}");
    assert!(tp.driver_machines().await.is_empty());
    assert_eq!(
        tp.platform.active_machines().await.unwrap(),
        0,
        "no capacity held"
    );
    let metrics = tp.platform.metrics();
    assert_eq!(metrics.machine_create_failures.load(Ordering::Relaxed), 1);
    // The fault was the driver's, once: the next create works.
    let m = tp.machine().await;
    assert_eq!(tp.driver_machines().await, [m]);
}

/// A driver whose deletes hang holds neither the reaper (deletes run a few at a time, each
/// given up after the delete timeout) nor a delete request; what was not deleted is
/// deleted by a later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_deletes_hold_neither_the_reaper_nor_a_request() {
    let tp = TestPlatform::start(MachinePolicy {
        capacity: 9,
        delete_timeout: Duration::from_millis(500),
        parallel_deletes: 2,
        ..policy()
    })
    .await;
    let mut expiring = Vec::new();
    for _ in 0..8 {
        expiring.push(tp.platform.create(with_ttl(1)).await.unwrap().id);
    }
    let kept = tp.platform.create(with_ttl(600)).await.unwrap().id;
    for id in &expiring {
        until_expired(&tp, id).await;
    }
    tp.driver.delay_deletes(Duration::from_secs(4));

    let started = Instant::now();
    assert_eq!(tp.platform.reap_once().await.unwrap(), 0);
    let took = started.elapsed();
    // Four rounds of two deletes, each given up after 0.5 s: not 8 × 4 s one by one, not
    // eight given up one by one (4 s), not all at once (0.5 s).
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "a reaper pass took {took:?}"
    );
    for id in &expiring {
        assert_eq!(
            state_of(&tp, id).await,
            MachineState::Running,
            "{id} kept for later"
        );
    }
    // A delete request waits no longer than the timeout either, and says why it failed.
    let started = Instant::now();
    let e = tp.platform.delete(&kept).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        e.to_string().contains("did not delete it within 0.5 s"),
        "{e}"
    );
    assert_eq!(state_of(&tp, &kept).await, MachineState::Running);
    // While a delete is still under way in the driver, no second one is started.
    let e = tp.platform.delete(&expiring[0]).await.unwrap_err();
    assert!(e.to_string().contains("still running in the driver"), "{e}");

    // The backend recovers; later passes delete everything that expired.
    tp.driver.delay_deletes(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reaped = 0;
    while reaped < expiring.len() {
        assert!(Instant::now() < deadline, "only {reaped} reaped");
        reaped += tp.platform.reap_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &expiring {
        assert_eq!(state_of(&tp, id).await, MachineState::Deleted);
    }
    // A request after the hung delete ended deletes the machine.
    while let Err(e) = tp.platform.delete(&kept).await {
        assert!(Instant::now() < deadline, "{kept} not deleted: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state_of(&tp, &kept).await, MachineState::Deleted);
    assert!(tp.driver_machines().await.is_empty());
}
