//! `rnr-agent session-daemon` run on the host, outside any machine: what init and the
//! gateway rely on when a session ends.

use rnr_agent_proto::frame;
use rnr_agent_proto::session::{FromDaemon, ToDaemon, MAX_FROM_DAEMON};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn connect(name: &str) -> std::io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
}

/// Reads frames from `s` until `want` says one was the one, or panics after 10 s.
fn read_until(s: &mut UnixStream, buf: &mut Vec<u8>, mut want: impl FnMut(FromDaemon<'_>) -> bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        while let Some((tag, payload, rest)) = frame::split(buf, MAX_FROM_DAEMON).unwrap() {
            let done = want(FromDaemon::parse(tag, payload).expect("a session frame"));
            let used = buf.len() - rest.len();
            buf.drain(..used);
            if done {
                return;
            }
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).expect("the daemon answers within 10 s");
        assert!(n > 0, "the daemon closed the connection first");
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Once the daemon has said its shell exited, it no longer answers on its socket: an
/// attach right after (a terminal reopened under the same id) must reach a new daemon,
/// which init starts only when nothing answers, not this dying one.
#[test]
fn a_daemon_stops_listening_before_it_reports_the_exit() {
    let name = format!("rnr-test-session-{}", std::process::id());
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_rnr-agent"))
        .args(["session-daemon", "t-exit", "24", "80", &name])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match connect(&name) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the daemon never listened on {name}: {e}"),
        }
    };
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, |f| matches!(f, FromDaemon::Hello(_)));
    s.write_all(&ToDaemon::Kill.encode()).unwrap();
    read_until(&mut s, &mut buf, |f| matches!(f, FromDaemon::Exit { .. }));
    let again = connect(&name);
    assert!(
        again.is_err(),
        "a daemon that reported its exit still accepts attaches"
    );
    let status = daemon.wait().unwrap();
    assert!(status.success(), "the daemon ends cleanly: {status}");
}
