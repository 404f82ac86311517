//! The shared driver conformance suite, run against a real Docker Engine.
//!
//! Needs dockerd on /var/run/docker.sock (`.ci/run` starts it) and busybox-static for the
//! tiny test image, which is built and imported once per run.

mod common;

async fn setup() -> rnr_driver::conformance::Harness {
    common::harness("conformance", "conformance-tiny").await
}

rnr_driver::conformance_tests!(setup);
