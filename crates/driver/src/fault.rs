//! Fault injection for the crash-consistency tests: with `RNR_FAULT=<point>[#<n>]` in its
//! environment, the process kills itself with SIGKILL the n-th time (the first, without
//! `#n`) it reaches the named point, exactly as a crash or `kill -9` there would: no
//! destructor, no cleanup, no last write. The tests kill `rnr serve` at each step of a
//! creation, a deletion and a webhook delivery this way and assert what a restart makes
//! of it. Unset (as it always is in production), a point costs one look at a `OnceLock`.
//!
//! The variable is read once, at the first point reached; `rnr serve` refuses to start
//! with one that names no point in [`POINTS`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The variable that arms a fault.
pub const ENV: &str = "RNR_FAULT";

/// Every point a fault can be armed at, in the order a machine's life reaches them.
pub const POINTS: &[&str] = &[
    // The platform creating a machine: its row reserved in the store (nothing in the
    // driver yet), the driver asked to create it, the driver done (not yet recorded),
    // recorded running with its exercise setup still to run.
    "create:reserved",
    "create:driver_creating",
    "create:driver_created",
    "create:setup",
    // The native driver within its create: the machine's directory made (no record in it
    // yet), its record written, its writable layer made, its runtime started (network not
    // yet wired), network wired.
    "native:create:dir",
    "native:create:recorded",
    "native:create:disk",
    "native:create:runtime_started",
    "native:create:network",
    // The platform deleting a machine: the delete recorded, the driver done (not yet
    // recorded as deleted).
    "delete:requested",
    "delete:driver_deleted",
    // The native driver within its delete: the runtime's container gone, its network,
    // disk and record not yet.
    "native:delete:runtime",
    // The checker: a check run claimed (running), a webhook delivered (not yet recorded).
    "check:claimed",
    "webhook:delivered",
];

struct Armed {
    point: String,
    nth: u32,
    hits: AtomicU32,
}

/// The armed fault, if `RNR_FAULT` names one; `Err` says what is wrong with it.
fn parse(value: &str) -> Result<(String, u32), String> {
    let (point, nth) = match value.split_once('#') {
        Some((p, n)) => {
            let n: u32 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("{ENV}={value:?}: the count after # must be a number from 1")
            })?;
            (p, n)
        }
        None => (value, 1),
    };
    if !POINTS.contains(&point) {
        return Err(format!(
            "{ENV}={value:?} names no fault point; the points are: {}",
            POINTS.join(", ")
        ));
    }
    Ok((point.to_string(), nth))
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
            let (point, nth) = parse(&value).ok()?;
            Some(Armed {
                point,
                nth,
                hits: AtomicU32::new(0),
            })
        })
        .as_ref()
}

/// Checks the environment's `RNR_FAULT`, if any: `Ok(Some(point))` when one is armed
/// (callers say so loudly), an error naming the points when it names none of them.
pub fn check_env() -> Result<Option<String>, String> {
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => parse(&v).map(|(p, n)| Some(format!("{p}#{n}"))),
        _ => Ok(None),
    }
}

/// Fault point `name`: kills the process here if `RNR_FAULT` armed it (and this is its
/// n-th hit).
pub fn point(name: &str) {
    debug_assert!(
        POINTS.contains(&name),
        "fault point {name} is not in POINTS"
    );
    let Some(a) = armed() else { return };
    if a.point != name || a.hits.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    // Straight to stderr, unbuffered: the test reads it to know the point was reached.
    eprintln!("rnr: fault injection: killed at {name} (hit {})", a.nth);
    // SAFETY: kill(2) on our own pid with a constant signal; SIGKILL cannot be caught, so
    // nothing after this runs.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL is delivered before kill(2) returns to a single-threaded caller, and to the
    // whole process at once otherwise; should it not be, stop anyway.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_checked() {
        assert_eq!(
            super::parse("create:reserved").unwrap(),
            ("create:reserved".into(), 1)
        );
        assert_eq!(
            super::parse("delete:requested#3").unwrap(),
            ("delete:requested".into(), 3)
        );
        let e = super::parse("create:nowhere").unwrap_err();
        assert!(
            e.contains("create:nowhere") && e.contains("create:reserved"),
            "{e}"
        );
        assert!(super::parse("create:reserved#0").is_err());
        assert!(super::parse("create:reserved#x").is_err());
    }
}
