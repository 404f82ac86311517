//! The shared driver conformance suite, run against the native (crun) driver with its agent
//! as PID 1 (execs through the agent).
//! Needs root, crun, iproute2, iptables and /bin/busybox (busybox-static).

mod common;

rnr_driver::conformance_tests!(common::harness);
