//! The shared driver conformance suite, run against the native driver without an agent:
//! PID 1 is a shell loop and every exec goes through `crun exec` (the fallback path).
//! Needs root, crun, iproute2, iptables and /bin/busybox (busybox-static).

mod common;

rnr_driver::conformance_tests!(common::runtime_harness, no_agent);
