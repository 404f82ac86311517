//! `rnr-agent`: runs inside every machine, mounted read-only at `/.rnr/rnr-agent`.
//!
//! Built statically (`scripts/build-agent.sh`) so it runs on any image, even one without a
//! libc. PID 1 of every machine is `rnr-agent init` (in a VM, `rnr-agent vm-init` starts
//! it in the learner's namespaces: `vm`); the other subcommands are what it
//! (or a driver) starts. The protocol is `rnr_agent_proto`'s.

mod accounts;
mod check;
mod init;
mod ping;
mod relay;
mod screen;
mod serve;
mod session;
mod spawn;
mod vm;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: rnr-agent <version|init|vm-init|serve|check|session-daemon|ping> [args…]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") => {
            println!("rnr-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") => check::main(),
        Some("init") => init::main(&args[1..]),
        Some("serve") => serve::main(),
        Some("ping") => ping::main(&args[1..]),
        Some("session-daemon") => session::main(&args[1..]),
        Some("vm-init") => vm::init_main(),
        _ => usage(),
    }
}
