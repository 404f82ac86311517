//! The shared driver conformance suite on the vm driver: QEMU microVMs with Debian's
//! kernel, the agent over the multiplexed serial port. Needs root, QEMU, Debian's cloud
//! kernel and a usable /dev/kvm (or `RNR_VM_ACCEL=tcg`, emulated and slow); a host without
//! them fails every test with the reason.

mod common;

rnr_driver::conformance_tests!(common::harness);
