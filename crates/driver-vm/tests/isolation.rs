//! The isolation suite on the vm driver: the shared attacks, and those a VM's root may
//! carry out in its own kernel held to staying there (`rnr_driver::own_kernel`). Needs
//! what the conformance suite needs.

mod common;

rnr_driver::own_kernel_isolation_tests!(common::harness);
