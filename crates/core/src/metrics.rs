//! Platform metrics in the Prometheus text format: counters and a latency histogram kept in
//! atomics (no lock on the hot path), plus gauges read from the store at scrape time so
//! they can never drift from the truth.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the machine-creation latency histogram.
const CREATE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; CREATE_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in CREATE_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in CREATE_BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// A gauge read from its owner at scrape time (e.g. the gateway's open terminals), so the
/// core need not know the part that owns the number.
#[derive(Default)]
pub struct SampledGauge(std::sync::OnceLock<Box<dyn Fn() -> i64 + Send + Sync>>);

impl SampledGauge {
    /// Sets where the value comes from; only the first call counts.
    pub fn set_source(&self, f: impl Fn() -> i64 + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(f));
    }

    fn get(&self) -> i64 {
        self.0.get().map_or(0, |f| f())
    }
}

impl std::fmt::Debug for SampledGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SampledGauge({})", self.get())
    }
}

/// Every metric the platform exports. Parts of the platform (API, gateway, checker) update
/// the fields that concern them.
#[derive(Debug, Default)]
pub struct Metrics {
    pub machines_created: AtomicU64,
    pub machine_create_failures: AtomicU64,
    pub machines_refused_capacity: AtomicU64,
    pub machines_refused_quota: AtomicU64,
    pub machines_reaped: AtomicU64,
    pub driver_errors: AtomicU64,
    pub create_latency: Histogram,
    pub terminals_open: SampledGauge,
    pub checks_run: AtomicU64,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    pub check_queue_depth: AtomicI64,
    /// Check runs deleted by the retention task.
    pub check_runs_deleted: AtomicU64,
    pub check_runs_stored: AtomicI64,
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

impl Metrics {
    /// Renders all metrics; `by_state` are the store's machine counts per state.
    pub fn render(&self, by_state: &[(&str, u64)], capacity: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rnr_machines Machines by lifecycle state.\n# TYPE rnr_machines gauge"
        );
        for (state, n) in by_state {
            let _ = writeln!(out, "rnr_machines{{state=\"{state}\"}} {n}");
        }
        gauge(
            &mut out,
            "rnr_capacity",
            "Most machines creating or running at once.",
            i64::try_from(capacity).unwrap_or(i64::MAX),
        );
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "rnr_machines_created_total",
            "Machines created.",
            load(&self.machines_created),
        );
        counter(
            &mut out,
            "rnr_machine_create_failures_total",
            "Machine creations that failed in the driver.",
            load(&self.machine_create_failures),
        );
        counter(
            &mut out,
            "rnr_machines_refused_capacity_total",
            "Creations refused because the platform was full.",
            load(&self.machines_refused_capacity),
        );
        counter(
            &mut out,
            "rnr_machines_refused_quota_total",
            "Creations refused by a quota (an API key's, anonymous learners').",
            load(&self.machines_refused_quota),
        );
        counter(
            &mut out,
            "rnr_machines_reaped_total",
            "Machines deleted when their TTL ran out.",
            load(&self.machines_reaped),
        );
        counter(
            &mut out,
            "rnr_driver_errors_total",
            "Errors reported by the driver.",
            load(&self.driver_errors),
        );
        self.create_latency.render(
            &mut out,
            "rnr_machine_create_seconds",
            "Time to create a machine, request to running.",
        );
        gauge(
            &mut out,
            "rnr_terminals_open",
            "Open terminal sessions.",
            self.terminals_open.get(),
        );
        counter(
            &mut out,
            "rnr_checks_run_total",
            "Check runs finished.",
            load(&self.checks_run),
        );
        counter(
            &mut out,
            "rnr_checks_passed_total",
            "Checks that passed.",
            load(&self.checks_passed),
        );
        counter(
            &mut out,
            "rnr_checks_failed_total",
            "Checks that failed.",
            load(&self.checks_failed),
        );
        gauge(
            &mut out,
            "rnr_check_queue_depth",
            "Check runs waiting in the queue.",
            self.check_queue_depth.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rnr_check_runs_deleted_total",
            "Check runs deleted by the retention task ([checker] retention_days).",
            load(&self.check_runs_deleted),
        );
        gauge(
            &mut out,
            "rnr_check_runs_stored",
            "Check runs kept in the store, any state.",
            self.check_runs_stored.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.create_latency.observe(Duration::from_millis(30));
        m.create_latency.observe(Duration::from_millis(400));
        m.machines_created.fetch_add(2, Ordering::Relaxed);
        let text = m.render(&[("running", 2), ("deleted", 5)], 10);
        assert!(text.contains("rnr_machine_create_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("rnr_machine_create_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("rnr_machine_create_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("rnr_machine_create_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("rnr_machine_create_seconds_count 2"));
        assert!(text.contains("rnr_machines{state=\"running\"} 2"));
        assert!(text.contains("rnr_machines_created_total 2"));
        // Every sample line is "name{labels} value" with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
