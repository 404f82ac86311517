//! `rnr-agent serve`: the agent protocol on stdin/stdout, for drivers that reach a machine
//! through a runtime's exec (Docker): it connects to `rnr-agent init` on its abstract socket
//! and copies bytes both ways. Its peer must be PID 1 — the init the runtime started, which
//! a learner cannot replace — so a learner's own listener on that name reaches nobody.

use rnr_agent_proto::control::INIT_ABSTRACT_NAME;
use rnr_agent_proto::fdpass;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

pub fn main() -> ExitCode {
    let conn = match crate::session::socket_addr(INIT_ABSTRACT_NAME)
        .and_then(|a| UnixStream::connect_addr(&a))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "rnr-agent serve: cannot reach rnr-agent init on @{INIT_ABSTRACT_NAME} (is it \
                 PID 1 of this machine?): {e}"
            );
            return ExitCode::from(3);
        }
    };
    match fdpass::peer_pid(conn.as_raw_fd()) {
        Ok(1) => {}
        Ok(pid) => {
            eprintln!(
                "rnr-agent serve: @{INIT_ABSTRACT_NAME} is answered by pid {pid}, not by init \
                 (pid 1); refusing it"
            );
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("rnr-agent serve: cannot tell who answers @{INIT_ABSTRACT_NAME}: {e}");
            return ExitCode::from(3);
        }
    }
    let Ok(mut up) = conn.try_clone() else {
        return ExitCode::FAILURE;
    };
    std::thread::spawn(move || {
        crate::relay::pipe(&mut std::io::stdin().lock(), &mut up);
        // The host hung up: init ends the exchange from its side.
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = conn;
    crate::relay::pipe(&mut down, &mut std::io::stdout().lock());
    ExitCode::SUCCESS
}
