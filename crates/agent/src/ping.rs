//! `rnr-agent ping [-c COUNT] [-W SECONDS] ADDRESS`: ICMP echo over an ICMP datagram
//! socket, which needs no CAP_NET_RAW, only a group inside the machine's
//! `net.ipv4.ping_group_range` (the drivers open it to every group).
//!
//! Machines get no raw sockets, so busybox's ping (raw sockets only) fails in them; this
//! one works on any image, iputils or not. IPv4 only: machines have no IPv6.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: rnr-agent ping [-c COUNT] [-W SECONDS] IPV4-ADDRESS";

struct Args {
    count: u32,
    wait: Duration,
    target: Ipv4Addr,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let (mut count, mut wait, mut target) = (1u32, Duration::from_secs(1), None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "-c" => {
                count = value("-c")?
                    .parse()
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or("-c takes a positive count")?
            }
            "-W" => {
                let s: f64 = value("-W")?
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                    .ok_or("-W takes seconds, at most 3600")?;
                wait = Duration::from_secs_f64(s);
            }
            other if target.is_none() => {
                target = Some(
                    other
                        .parse()
                        .map_err(|_| format!("{other:?} is not an IPv4 address"))?,
                )
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args {
        count,
        wait,
        target: target.ok_or("no address")?,
    })
}

fn icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked, then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_timeout(fd: &OwnedFd, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros().max(1) as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends echo request `seq` and waits up to `wait` for its reply (the kernel fills in the
/// identifier and checksum of a datagram socket's echo requests).
fn echo(fd: &OwnedFd, target: Ipv4Addr, seq: u16, wait: Duration) -> io::Result<Option<Duration>> {
    let mut req = [0u8; 24];
    req[0] = 8;
    req[6..8].copy_from_slice(&seq.to_be_bytes());
    req[8..].copy_from_slice(b"rnr-agent ping\0\0");
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(target).to_be(),
        },
        sin_zero: [0; 8],
    };
    let started = Instant::now();
    // SAFETY: sendto with a buffer and an address that outlive the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    while started.elapsed() < wait {
        set_timeout(fd, wait - started.elapsed())?;
        // SAFETY: recv into a buffer that outlives the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        // Only echo replies reach a datagram socket bound to its identifier.
        if n >= 8 && buf[0] == 0 && buf[6..8] == seq.to_be_bytes() {
            return Ok(Some(started.elapsed()));
        }
    }
    Ok(None)
}

pub fn main(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rnr-agent ping: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fd = match icmp_socket() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!(
                "rnr-agent ping: cannot open an ICMP datagram socket ({e}); \
                 is the caller's group outside net.ipv4.ping_group_range?"
            );
            return ExitCode::from(2);
        }
    };
    let mut received = 0;
    for i in 0..args.count {
        let seq = (i % 65536) as u16;
        match echo(&fd, args.target, seq, args.wait) {
            Ok(Some(t)) => {
                received += 1;
                println!(
                    "reply from {}: seq={seq} time={:.2} ms",
                    args.target,
                    t.as_secs_f64() * 1000.0
                );
            }
            Ok(None) => println!("no reply from {}: seq={seq}", args.target),
            Err(e) => {
                eprintln!("rnr-agent ping: {}: {e}", args.target);
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "{} echo requests to {}, {received} replies",
        args.count, args.target
    );
    if received > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_its_arguments() {
        let a = parse(&strings(&["-c", "3", "-W", "0.5", "10.0.0.1"])).unwrap();
        assert_eq!((a.count, a.wait), (3, Duration::from_millis(500)));
        assert_eq!(a.target, Ipv4Addr::new(10, 0, 0, 1));
        assert!(parse(&strings(&["-c", "0", "10.0.0.1"])).is_err());
        assert!(parse(&strings(&["example.com"])).is_err());
        assert!(parse(&strings(&["10.0.0.1", "10.0.0.2"])).is_err());
        assert!(parse(&strings(&[])).is_err());
    }
}
