//! Descriptor passing on unix sockets (SCM_RIGHTS) and peer credentials: the parts of the
//! protocol that only exist where a connection is a unix socket (the native driver, and
//! inside every machine between the agent's own processes).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Most descriptors one message may carry; a message with more is refused (and the excess,
/// which the kernel truncated, is never ours).
pub const MAX_FDS: usize = 16;

/// Sends `data` with `fds` attached, then whatever of `data` the first send left. On a
/// non-blocking socket a `WouldBlock` error means nothing was sent.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below points at live buffers sized
    // as declared, and the cmsg is written inside `cbuf` with the libc CMSG macros.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut rest = &data[sent as usize..];
    while !rest.is_empty() {
        // SAFETY: sending from a live buffer on a descriptor borrowed for this call.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // The descriptors went with the first part: wait for room rather than
                // report a half-sent message as unsent.
                io::ErrorKind::WouldBlock => {
                    wait_writable(sock)?;
                    continue;
                }
                _ => return Err(e),
            }
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

fn wait_writable(sock: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: sock,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives across the call; 2 s at most.
    match unsafe { libc::poll(&mut p, 1, 2000) } {
        n if n > 0 => Ok(()),
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took nothing for 2 s",
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Receives into `data`, with any descriptors that came along (close-on-exec, owned).
/// More than [`MAX_FDS`] in one message is an error; those received are closed.
pub fn recv_with_fds(sock: RawFd, data: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one cmsg carrying MAX_FDS descriptors, 8-byte aligned.
    let mut cbuf = [0u64; 2 + MAX_FDS / 2];
    // SAFETY: msghdr is plain old data; zeroed is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points at buffers that live across the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc CMSG macros;
    // every descriptor in an SCM_RIGHTS message is new in this process and ours to own.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let base = libc::CMSG_DATA(c).cast::<libc::c_int>();
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(base.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_FDS} file descriptors in one message"),
        ));
    }
    Ok((n as usize, fds))
}

/// The pid (in the caller's pid namespace) of the process at the other end of a connected
/// unix socket, as the kernel recorded it when that end connected or listened.
pub fn peer_pid(sock: RawFd) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the size passed; both outlive the call.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_their_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = UnixStream::pair().unwrap();
        send_with_fds(a.as_raw_fd(), b"hi", &[r.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"hi"[..], 1));
        assert_eq!(peer_pid(b.as_raw_fd()).unwrap(), std::process::id() as i32);
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let many: Vec<_> = (0..MAX_FDS + 4)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<RawFd> = many.iter().map(|(x, _)| x.as_raw_fd()).collect();
        send_with_fds(a.as_raw_fd(), b"x", &raw).unwrap();
        let mut buf = [0u8; 4];
        assert!(recv_with_fds(b.as_raw_fd(), &mut buf).is_err());
    }
}
