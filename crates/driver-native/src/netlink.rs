//! Just enough netlink to wire a machine in-process: a veth pair with one end moved into
//! the machine's network namespace (with the machine's MAC), the host end on the bridge,
//! in the platform's interface group and up without an IPv6 address; inside, loopback and eth0 up, the address and
//! the default route; deleting a link; and adding or deleting the machine's element of
//! the nftables set that pins its port (nfnetlink, one transaction each).
//!
//! Two `ip -b` processes per machine cost a few milliseconds of the create path and of
//! the host's CPU, which is what limits machines started per second, and an `nft`
//! process as much again; these are a handful of system calls instead.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_HDRLEN: usize = 16;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
// linux/if_link.h: IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE.
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
// nf_tables attributes (linux/netfilter/nf_tables.h); not in the libc crate.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// One netlink request under construction: header, fixed payload, attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        Self::unacked(ty, flags | libc::NLM_F_ACK as u16)
    }

    /// A request the kernel acknowledges only if it fails.
    fn unacked(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        let flags = flags | libc::NLM_F_REQUEST as u16;
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// `struct nfgenmsg`.
    fn nfgen(&mut self, family: u8, res_id: u16) -> &mut Self {
        let mut b = [0u8; 4];
        b[0] = family;
        b[1] = libc::NFNETLINK_V0 as u8;
        b[2..4].copy_from_slice(&res_id.to_be_bytes());
        self.bytes(&b)
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.align();
        self
    }

    /// `struct ifinfomsg`.
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) -> &mut Self {
        let mut b = [0u8; 16];
        b[0] = libc::AF_UNSPEC as u8;
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&flags.to_ne_bytes());
        b[12..16].copy_from_slice(&change.to_ne_bytes());
        self.bytes(&b)
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.bytes(data)
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d)
    }

    fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// A netlink socket, bound to the network namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// Opens a NETLINK_NETFILTER socket (nf_tables) in the calling thread's namespace.
    pub fn open_netfilter() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    fn open_protocol(protocol: i32) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `msg` and waits for its acknowledgement.
    fn request(&mut self, msg: &mut Msg, what: &str) -> io::Result<()> {
        self.transact(std::slice::from_mut(msg), what)
    }

    /// Sends `msgs` in one datagram (an nfnetlink batch, say) and waits until the last
    /// acknowledged one is acknowledged, or any of them fails.
    fn transact(&mut self, msgs: &mut [Msg], what: &str) -> io::Result<()> {
        let first = self.seq + 1;
        let mut data = Vec::new();
        let mut acked = None;
        for m in msgs.iter_mut() {
            self.seq += 1;
            if u16::from_ne_bytes([m.buf[6], m.buf[7]]) & libc::NLM_F_ACK as u16 != 0 {
                acked = Some(self.seq);
            }
            data.extend_from_slice(m.finish(self.seq));
        }
        let (last, acked) = (self.seq, acked.unwrap_or(self.seq));
        // SAFETY: sending a buffer that lives across the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: receiving into a buffer that lives across the call.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut off = 0;
            let n = n as usize;
            while off + NLMSG_HDRLEN <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4]));
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
                if (len as usize) < NLMSG_HDRLEN || off + len as usize > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink reply",
                    ));
                }
                if ty == libc::NLMSG_ERROR as u16 && (first..=last).contains(&mseq) {
                    let code = i32::from_ne_bytes(
                        buf[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                            .try_into()
                            .unwrap_or([0; 4]),
                    );
                    if code != 0 {
                        let e = io::Error::from_raw_os_error(-code);
                        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
                    }
                    if mseq == acked {
                        return Ok(());
                    }
                }
                off += (len as usize).div_ceil(4) * 4;
            }
        }
    }

    /// Adds (`add`) or deletes element `key` of set `set` of the bridge-family table
    /// `table`, in one nf_tables transaction (a socket from [`Socket::open_netfilter`]).
    /// Adding an element that is there already is not an error; deleting a missing one
    /// fails with `NotFound`.
    pub fn set_element(&mut self, table: &str, set: &str, key: &[u8], add: bool) -> io::Result<()> {
        let subsys = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
        let batch = |ty: i32| {
            let mut m = Msg::unacked(ty as u16, 0);
            m.nfgen(libc::AF_UNSPEC as u8, libc::NFNL_SUBSYS_NFTABLES as u16);
            m
        };
        let (op, flags) = match add {
            true => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE as u16),
            false => (libc::NFT_MSG_DELSETELEM, 0),
        };
        let mut elem = Msg::new(subsys | op as u16, flags);
        elem.nfgen(libc::NFPROTO_BRIDGE as u8, 0)
            .attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
            .attr_str(NFTA_SET_ELEM_LIST_SET, set)
            .begin(NFTA_SET_ELEM_LIST_ELEMENTS)
            .begin(NFTA_LIST_ELEM)
            .begin(NFTA_SET_ELEM_KEY)
            .attr(NFTA_DATA_VALUE, key)
            .end()
            .end()
            .end();
        let mut msgs = [
            batch(libc::NFNL_MSG_BATCH_BEGIN),
            elem,
            batch(libc::NFNL_MSG_BATCH_END),
        ];
        let verb = if add { "adding to" } else { "deleting from" };
        self.transact(&mut msgs, &format!("{verb} nftables set {table} {set}"))
    }

    /// Creates the veth pair `host` ⇄ `eth0`, `eth0` with MAC address `mac` in the network
    /// namespace of process `pid`, `host` in interface group `group`, enslaved to the
    /// bridge of index `master` and up.
    pub fn add_veth(
        &mut self,
        host: &str,
        pid: i32,
        master: i32,
        group: u32,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let mut m = Msg::new(libc::RTM_NEWLINK, flags as u16);
        // Down: IPv6 can only be configured once the link exists (see below).
        m.ifinfo(0, 0, 0)
            .attr_str(libc::IFLA_IFNAME, host)
            .attr_u32(libc::IFLA_MASTER, master as u32)
            .attr_u32(libc::IFLA_GROUP, group)
            .begin(libc::IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .ifinfo(0, 0, 0)
            .attr_str(libc::IFLA_IFNAME, "eth0")
            .attr(libc::IFLA_ADDRESS, &mac)
            .attr_u32(libc::IFLA_NET_NS_PID, pid as u32)
            .end()
            .end()
            .end();
        self.request(&mut m, &format!("creating veth {host}"))?;
        // Up without an IPv6 link-local address: the host end is a bridge port, whose own
        // stack never sees the machine's frames; it only needs no address nor chatter.
        // (A disable_ipv6 write costs some 150 µs; this attribute rides on the link-up.)
        let mut up = Msg::new(libc::RTM_NEWLINK, 0);
        up.ifinfo(index_of(host)?, libc::IFF_UP as u32, libc::IFF_UP as u32)
            .begin(libc::IFLA_AF_SPEC)
            .begin(libc::AF_INET6 as u16)
            .attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE])
            .end()
            .end();
        self.request(&mut up, &format!("setting veth {host} up without IPv6"))
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: i32) -> io::Result<()> {
        let mut m = Msg::new(libc::RTM_NEWLINK, 0);
        m.ifinfo(index, libc::IFF_UP as u32, libc::IFF_UP as u32);
        self.request(&mut m, &format!("setting link {index} up"))
    }

    /// Deletes the link named `name`.
    pub fn del_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(libc::RTM_DELLINK, 0);
        m.ifinfo(0, 0, 0).attr_str(libc::IFLA_IFNAME, name);
        self.request(&mut m, &format!("deleting link {name}"))
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn add_addr(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let mut m = Msg::new(libc::RTM_NEWADDR, flags as u16);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut ifa = [0u8; 8];
        ifa[0] = libc::AF_INET as u8;
        ifa[1] = prefix;
        ifa[3] = libc::RT_SCOPE_UNIVERSE;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&ifa)
            .attr(libc::IFA_LOCAL, &addr.octets())
            .attr(libc::IFA_ADDRESS, &addr.octets());
        self.request(&mut m, &format!("adding address {addr}/{prefix}"))
    }

    /// Adds the default route via `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let mut m = Msg::new(libc::RTM_NEWROUTE, flags as u16);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut rt = [0u8; 12];
        rt[0] = libc::AF_INET as u8;
        rt[4] = libc::RT_TABLE_MAIN;
        rt[5] = libc::RTPROT_BOOT;
        rt[6] = libc::RT_SCOPE_UNIVERSE;
        rt[7] = libc::RTN_UNICAST;
        m.bytes(&rt).attr(libc::RTA_GATEWAY, &gateway.octets());
        self.request(&mut m, &format!("adding the default route via {gateway}"))
    }
}

/// Index of link `name` in the calling thread's network namespace.
pub fn index_of(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "link name contains NUL"))?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no link named {name}"),
        ))
    } else {
        Ok(i as i32)
    }
}

/// Runs `f` on a short-lived thread that has joined the network namespace `netns`, so the
/// caller's threads never change namespace.
pub fn in_netns<T: Send + 'static>(
    netns: RawFd,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("rnr-netns".into())
        .stack_size(64 << 10)
        .spawn(move || {
            // SAFETY: setns(2) of this thread only, on a namespace fd the caller keeps open
            // until the thread is joined below.
            if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Inside a machine (run through [`in_netns`]): loopback and eth0 up, `addr/prefix` on
/// eth0, default route via `gateway`.
pub fn configure_inside(addr: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> io::Result<()> {
    let mut s = Socket::open()?;
    s.link_up(index_of("lo")?)?;
    let eth0 = index_of("eth0")?;
    s.add_addr(eth0, addr, prefix)?;
    s.link_up(eth0)?;
    s.add_default_route(gateway)
}
