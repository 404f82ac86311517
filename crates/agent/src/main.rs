//! `rnr-agent`: runs inside every machine, mounted read-only at `/.rnr/rnr-agent`.
//!
//! Built statically (`scripts/build-agent.sh`) so it runs on any image, even one without a
//! libc. Each subcommand lives in its own module: `version` here, more as the checker and
//! the terminal gateway need them.

mod check;
mod check_wire;
mod exec_wire;
mod init;
mod screen;
mod session;
mod session_wire;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: rnr-agent <version|init|check|session> [args…]");
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
        Some("init") => init::main(),
        Some("session") => session::main(&args[1..]),
        _ => usage(),
    }
}
