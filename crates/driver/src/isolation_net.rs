//! The network attacks of the isolation suite ([`crate::isolation`] runs them with the
//! rest): reaching the host's services over IPv6, advertising a router to the host,
//! forging source addresses, hijacking a neighbour's address with ARP, opening raw
//! sockets; and, with outbound access, reaching a cloud's metadata service, private
//! ranges or SMTP, or opening connections without limit.
//!
//! A learner in a container has no raw sockets (the drivers drop CAP_NET_RAW), so the
//! forged frames are sent from the host, as root, in the machine's network namespace: the
//! worst a learner who broke out of the capability set could do. A VM has no such
//! namespace (its network stack is in its own kernel) and its root has raw sockets: there
//! the frames are forged inside, by the probe ([`Forger`]). Either way what stops them
//! must be outside the machine. Every attack runs while the neighbour's echo watchdog
//! probes.
//!
//! The outbound attacks talk to an "outside host": a network namespace the test creates
//! and routes from the host, holding a public address (TEST-NET-3), the metadata address
//! and private ones, with listeners that count who connected. Nothing leaves the host.

use crate::conformance::{spec, Cleanup, Harness};
use crate::isolation::{attack, connects, host_ipv4_interfaces, setup, setup_spec, text, Watchdog};
use crate::netguard::{NEW_CONNECTIONS_BURST, NEW_CONNECTIONS_PER_SECOND};
use crate::{ExecSpec, AGENT_PATH};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) type Mac = [u8; 6];

pub(crate) const BROADCAST: Mac = [0xff; 6];
/// A MAC address no machine has.
pub(crate) const FORGED_MAC: Mac = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
/// SIOCGIFHWADDR (not in the libc crate for every Linux target).
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;

/// Runs `f` on a thread that joined the network namespace `ns` (the caller's threads never
/// change namespace).
fn in_netns<T: Send>(ns: RawFd, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) of this scoped thread only, on a descriptor the caller
                // holds open until the thread is joined.
                if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// A running machine's network namespace, opened from the host.
#[derive(Clone)]
pub(crate) struct MachineNetns {
    id: String,
    ns: Arc<File>,
}

impl MachineNetns {
    /// Finds the namespace through a process started in the machine: a `sleep` of a
    /// length no other process on the host has.
    async fn of(h: &Harness, id: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let marker = (700_000_000
            + (std::process::id() % 100_000) * 1000
            + SEQ.fetch_add(1, Ordering::Relaxed) % 1000)
            .to_string();
        let handle = h
            .driver
            .exec(id, ExecSpec::new(["sleep", marker.as_str()]))
            .await
            .unwrap_or_else(|e| panic!("machine {id}: starting its marker process: {e}"));
        let want = format!("sleep\0{marker}\0");
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = process_with_cmdline(want.as_bytes()) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "machine {id}: its process `sleep {marker}` never showed in the host's /proc"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let path = format!("/proc/{pid}/ns/net");
        let ns = File::open(&path).unwrap_or_else(|e| panic!("machine {id}: opening {path}: {e}"));
        let _ = handle.process.kill().await;
        let host = std::fs::metadata("/proc/self/ns/net").map(|m| ino(&m));
        let mine = ns.metadata().map(|m| ino(&m));
        assert_ne!(
            host.ok(),
            mine.ok(),
            "machine {id} has a network namespace of its own"
        );
        Self {
            id: id.to_string(),
            ns: Arc::new(ns),
        }
    }

    /// Runs `f` in the namespace, off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> T {
        let ns = self.ns.clone();
        tokio::task::spawn_blocking(move || in_netns(ns.as_raw_fd(), f))
            .await
            .expect("netns task")
            .unwrap_or_else(|e| panic!("machine {}: {what}: {e}", self.id))
    }

    /// eth0's MAC address and the machine's default gateway.
    async fn eth0(&self) -> (Mac, Ipv4Addr) {
        self.run("reading eth0 and the default route", || {
            Ok((mac_of("eth0")?, default_gateway()?))
        })
        .await
    }

    /// Sends each raw Ethernet frame out of the machine's eth0.
    async fn send(&self, frames: Vec<Vec<u8>>) {
        self.run("sending raw frames", move || send_frames(&frames))
            .await
    }
}

/// Who forges a test's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forger {
    /// The host, as root in the machine's network namespace (a container's).
    Host,
    /// The machine's own root, with the probe's packet socket (a VM's).
    MachineRoot,
}

/// A machine's link as a test sees it: its eth0, where forged frames leave from.
#[derive(Clone)]
pub(crate) enum Link {
    Netns(MachineNetns),
    Inside {
        driver: Arc<dyn crate::Driver>,
        id: String,
    },
}

impl Link {
    /// Machine `id`'s link, driven as `forger` says (the probe installed for
    /// [`Forger::MachineRoot`]).
    pub(crate) async fn of(h: &Harness, id: &str, forger: Forger) -> Self {
        match forger {
            Forger::Host => Self::Netns(MachineNetns::of(h, id).await),
            Forger::MachineRoot => {
                crate::isolation::probe::install(h, id).await;
                Self::Inside {
                    driver: h.driver.clone(),
                    id: id.to_string(),
                }
            }
        }
    }

    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Netns(ns) => &ns.id,
            Self::Inside { id, .. } => id,
        }
    }

    async fn sh(&self, argv: Vec<String>) -> String {
        let Self::Inside { driver, id } = self else {
            unreachable!("a machine's own commands run inside it")
        };
        let req = crate::ExecRequest::new(ExecSpec::new(argv.clone()), Duration::from_secs(30));
        let out = crate::collect(driver.as_ref(), id, req)
            .await
            .unwrap_or_else(|e| panic!("machine {id}: {argv:?}: {e}"));
        let said = text(&out.stdout);
        assert_eq!(
            out.exit_code,
            Some(0),
            "machine {id}: {argv:?}: {said} {}",
            text(&out.stderr)
        );
        said
    }

    /// eth0's MAC address and the machine's default gateway.
    pub(crate) async fn eth0(&self) -> (Mac, Ipv4Addr) {
        match self {
            Self::Netns(ns) => ns.eth0().await,
            Self::Inside { id, .. } => {
                let said = self
                    .sh([
                        "/bin/sh",
                        "-c",
                        "cat /sys/class/net/eth0/address /proc/net/route",
                    ]
                    .map(String::from)
                    .to_vec())
                    .await;
                let (mac, routes) = said.split_once('\n').unwrap_or_default();
                let mac = parse_mac(mac).unwrap_or_else(|| panic!("machine {id}: eth0 {said:?}"));
                let gw = gateway_in(routes)
                    .unwrap_or_else(|| panic!("machine {id}: no default route in {routes:?}"));
                (mac, gw)
            }
        }
    }

    /// Sends each raw Ethernet frame out of the machine's eth0.
    pub(crate) async fn send(&self, frames: Vec<Vec<u8>>) {
        match self {
            Self::Netns(ns) => ns.send(frames).await,
            Self::Inside { id, .. } => {
                let n = frames.len();
                let mut argv = vec![crate::isolation::probe::PATH.into(), "frames".into()];
                argv.push("eth0".into());
                argv.extend(frames.iter().map(|f| hex(f)));
                let said = self.sh(argv).await;
                assert_eq!(said.trim(), format!("sent={n}"), "machine {id}: {said}");
            }
        }
    }

    /// A UDP socket on `port` of every address of the machine, receiving.
    async fn udp(&self, port: u16) -> Receiver {
        match self {
            Self::Netns(ns) => Receiver::Socket(
                ns.run("binding a UDP socket", move || {
                    UdpSocket::bind(("0.0.0.0", port))
                })
                .await,
            ),
            Self::Inside { driver, id } => {
                let argv =
                    [crate::isolation::probe::PATH, "udp", &port.to_string()].map(String::from);
                let handle = driver
                    .exec(id, ExecSpec::new(argv))
                    .await
                    .unwrap_or_else(|e| panic!("machine {id}: probe udp {port}: {e}"));
                let mut r = Receiver::Probe {
                    id: id.clone(),
                    handle,
                    said: String::new(),
                };
                let ready = r
                    .read_for(Duration::from_secs(20), |s| s.contains("ready\n"))
                    .await;
                assert!(
                    ready.contains("ready\n"),
                    "machine {id}: probe udp: {ready:?}"
                );
                r
            }
        }
    }
}

/// Lowercase hex, as the probe reads frames.
fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A machine's UDP socket (see [`Link::udp`]).
enum Receiver {
    Socket(UdpSocket),
    /// The probe's, telling what it receives on its output.
    Probe {
        id: String,
        handle: crate::ExecHandle,
        said: String,
    },
}

impl Receiver {
    /// The sources of the datagrams received within `within`.
    async fn received(&mut self, within: Duration) -> Vec<SocketAddr> {
        match self {
            Self::Socket(s) => received(s, within),
            Self::Probe { .. } => {
                let seen = self.read_for(within, |_| false).await;
                seen.lines()
                    .filter_map(|l| l.strip_prefix("got "))
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .collect()
            }
        }
    }

    /// The probe's output of the next `within`, or until `done` holds for it.
    async fn read_for(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        use futures::StreamExt;
        let Self::Probe { id, handle, said } = self else {
            return String::new();
        };
        let _ = tokio::time::timeout(within, async {
            while !done(said) {
                match handle.output.next().await {
                    Some(Ok(crate::OutputChunk::Stdout(b) | crate::OutputChunk::Stderr(b))) => {
                        said.push_str(&text(&b))
                    }
                    other => {
                        panic!("machine {id}: the probe's UDP socket ended: {other:?} {said:?}")
                    }
                }
            }
        })
        .await;
        // Whole lines only; the rest waits for the next read.
        let cut = said.rfind('\n').map_or(0, |i| i + 1);
        let rest = said.split_off(cut);
        std::mem::replace(said, rest)
    }
}

/// The elements of the pin set of bridge-family table `table`, as `nft` lists them (for a
/// driver's own tests: which machines are pinned).
pub fn listed_pins(table: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "set", "bridge", table, crate::netguard::PIN_SET])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft list set bridge {table}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ino(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn process_with_cmdline(want: &[u8]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (cmdline == want).then_some(pid)
    })
}

pub(crate) fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with plain integers; the result is checked, then owned.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The MAC address of interface `name` in the calling thread's namespace (/sys would
/// show the host's interfaces).
fn mac_of(name: &str) -> io::Result<Mac> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // struct ifreq: the name, then the union (a sockaddr for this request).
    let mut req = [0u8; 40];
    req[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: SIOCGIFHWADDR writes at most sizeof(struct ifreq) (40) bytes into `req`.
    if unsafe { libc::ioctl(s.as_raw_fd(), SIOCGIFHWADDR, req.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req[18..24]);
    Ok(mac)
}

/// The default IPv4 gateway of the calling thread's namespace.
fn default_gateway() -> io::Result<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/thread-self/net/route")?;
    gateway_in(&routes).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no default route"))
}

/// The default gateway of a /proc/net/route table.
fn gateway_in(routes: &str) -> Option<Ipv4Addr> {
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // The kernel prints addresses as native-endian hex of network-order words
        // (x86-64, the probe's only target, is little-endian).
        let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        (f.get(1) == Some(&"00000000")).then(|| Ipv4Addr::from(gw.to_le_bytes()))
    })
}

fn send_frames(frames: &[Vec<u8>]) -> io::Result<()> {
    let c = std::ffi::CString::new("eth0").map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let s = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    for f in frames {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&f[..6]);
        // SAFETY: sendto with a buffer and an address that outlive the call.
        let n = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Frames built by hand, as a learner's tool would.
pub(crate) mod frame {
    use super::Mac;
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;

    pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The Internet checksum of the concatenated `parts`.
    pub fn checksum(parts: &[&[u8]]) -> u16 {
        let mut sum: u32 = 0;
        let mut odd: Option<u8> = None;
        for b in parts.iter().flat_map(|p| p.iter().copied()) {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
        if let Some(hi) = odd {
            sum += u32::from(hi) << 8;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + data.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    /// An IPv4 packet carrying a UDP datagram (UDP checksum left out, as IPv4 allows).
    pub fn ipv4_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
        let u = udp(sport, dport, data);
        let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&((20 + u.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&u);
        ip
    }

    /// An ARP request (`op` 1) or reply (2).
    pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa.octets());
        a.extend_from_slice(&tha);
        a.extend_from_slice(&tpa.octets());
        a
    }

    /// An IPv6 packet whose upper-layer checksum sits at `csum_at` of `payload`.
    fn ipv6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next: u8,
        hops: u8,
        mut payload: Vec<u8>,
        csum_at: usize,
    ) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let pseudo = [&src.octets()[..], &dst.octets(), &len, &[0, 0, 0, next]].concat();
        let c = checksum(&[&pseudo, &payload]);
        payload[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, hops]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&payload);
        p
    }

    pub fn ipv6_udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, data: &[u8]) -> Vec<u8> {
        ipv6(src, dst, 17, 64, udp(sport, dport, data), 6)
    }

    /// A router advertisement from `src` (link-local, MAC `mac`) to all nodes: no default
    /// route (router lifetime 0), one on-link, autonomous /64 `prefix` valid for two
    /// minutes. A host that takes it makes itself an address in `prefix`.
    pub fn router_advertisement(src: Ipv6Addr, mac: Mac, prefix: Ipv6Addr) -> Vec<u8> {
        let mut ra = vec![134, 0, 0, 0, 64, 0, 0, 0];
        ra.extend_from_slice(&[0; 8]); // reachable time, retransmission timer
        ra.extend_from_slice(&[1, 1]); // source link-layer address
        ra.extend_from_slice(&mac);
        ra.extend_from_slice(&[3, 4, 64, 0xc0]); // prefix information: /64, on-link, autonomous
        ra.extend_from_slice(&120u32.to_be_bytes());
        ra.extend_from_slice(&120u32.to_be_bytes());
        ra.extend_from_slice(&[0; 4]);
        ra.extend_from_slice(&prefix.octets());
        ipv6(src, ALL_NODES, 58, 255, ra, 2)
    }

    pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

    /// The EUI-64 link-local address of `mac`.
    pub fn link_local(mac: Mac) -> Ipv6Addr {
        let b = [
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            mac[0] ^ 2,
            mac[1],
            mac[2],
            0xff,
            0xfe,
            mac[3],
            mac[4],
            mac[5],
        ];
        Ipv6Addr::from(b)
    }

    /// The Ethernet group address of IPv6 multicast address `a`.
    pub fn multicast_mac(a: Ipv6Addr) -> Mac {
        let o = a.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    }
}

pub(crate) fn parse_mac(s: &str) -> Option<Mac> {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

pub(crate) fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC address of the host interface holding `addr` (a machine's gateway).
pub(crate) fn host_mac_of(addr: Ipv4Addr) -> Mac {
    let (name, _) = host_ipv4_interfaces()
        .into_iter()
        .find(|(_, a)| *a == addr)
        .unwrap_or_else(|| panic!("no host interface holds {addr}"));
    let path = format!("/sys/class/net/{name}/address");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| parse_mac(&s))
        .unwrap_or_else(|| panic!("reading {path}"))
}

/// The host's ARP entry for `addr`, if complete.
fn host_arp_entry(addr: Ipv4Addr) -> Option<Mac> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Flags 0x0: incomplete.
        (f.first()?.parse::<Ipv4Addr>().ok()? == addr && *f.get(2)? != "0x0")
            .then(|| parse_mac(f.get(3)?))?
    })
}

/// Every frame crossing any of the host's interfaces (in its network namespace) that
/// carries `needle` and one byte after it: which byte, on which interface, in which
/// direction. Captures from [`Sniffer::start`] until [`Sniffer::finish`].
pub(crate) struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sighting>>,
}

/// One frame a [`Sniffer`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sighting {
    /// The byte after the needle.
    pub tag: u8,
    pub ifname: String,
    /// `sll_pkttype`: PACKET_OUTGOING (4) for a frame the host sent on `ifname`.
    pub pkttype: u8,
}

impl Sniffer {
    pub(crate) fn start(needle: Vec<u8>) -> Self {
        let s = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
        .expect("a packet socket on the host");
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt with a timeval that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: recvfrom into a buffer and an address that outlive the call.
                let n = unsafe {
                    libc::recvfrom(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                let Ok(n) = usize::try_from(n) else { continue };
                let f = &buf[..n];
                let Some(at) = f.windows(needle.len()).position(|w| w == needle) else {
                    continue;
                };
                if let Some(tag) = f.get(at + needle.len()) {
                    seen.push(Sighting {
                        tag: *tag,
                        ifname: ifname_of(from.sll_ifindex),
                        pkttype: from.sll_pkttype,
                    });
                }
            }
            seen
        });
        Self { stop, thread }
    }

    pub(crate) fn finish(self) -> Vec<Sighting> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sniffer thread")
    }
}

fn ifname_of(index: i32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `name`.
    let p = unsafe { libc::if_indextoname(index as libc::c_uint, name.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success `name` holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// One IPv6 address of the host, from /proc/net/if_inet6.
struct HostIpv6 {
    addr: Ipv6Addr,
    ifname: String,
}

fn host_ipv6_addresses() -> Vec<HostIpv6> {
    let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = f.first()?;
            let addr = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            Some(HostIpv6 {
                addr,
                ifname: f.get(5)?.to_string(),
            })
        })
        .collect()
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Datagrams `sock` receives within `within`, with their sources.
fn received(sock: &UdpSocket, within: Duration) -> Vec<SocketAddr> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set_read_timeout");
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => got.push(from),
            Err(_) => break,
        }
    }
    got
}

/// Proves that the frames a test forges leave machine `ns` and reach the host when they
/// carry the machine's own addresses: the host opens a UDP flow to the machine, and a
/// reply built like the forged frames (but true) must arrive.
async fn raw_control(ns: &Link, me: (Mac, Ipv4Addr), gw: (Mac, Ipv4Addr)) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("host UDP socket");
    let port = sock.local_addr().unwrap().port();
    sock.send_to(b"flow", (me.1, 7009))
        .expect("send to machine");
    let reply = frame::ethernet(
        gw.0,
        me.0,
        frame::IPV4,
        &frame::ipv4_udp(me.1, 7009, gw.1, port, b"true reply"),
    );
    ns.send(vec![reply]).await;
    let got = received(&sock, Duration::from_secs(2));
    assert!(
        got.iter().any(|a| a.ip() == IpAddr::V4(me.1)),
        "control: a raw frame with machine {}'s own addresses reaches the host ({got:?})",
        ns.id()
    );
}

pub async fn ipv6_host_listener_unreachable(h: Harness) {
    ipv6_host_unreachable(h, Forger::Host).await
}

/// [`ipv6_host_listener_unreachable`] with the raw frames forged by `forger`.
pub(crate) async fn ipv6_host_unreachable(h: Harness, forger: Forger) {
    let (id, _g, dog) = setup(&h, "ipv6").await;
    // The platform's API or any host service, listening on every IPv6 (and IPv4) address.
    let tcp = TcpListener::bind("[::]:0").expect("host listener on [::]");
    let port = tcp.local_addr().unwrap().port();
    tcp.set_nonblocking(true).unwrap();
    assert!(
        connects(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        "control: the listener answers on ::1"
    );
    while tcp.accept().is_ok() {}
    let udp = UdpSocket::bind("[::]:0").expect("host UDP socket on [::]");
    let uport = udp.local_addr().unwrap().port();
    // A machine's link reaches the link-local addresses of bridges only (a bridge port's
    // own stack never sees its frames); every other address could be routed.
    let host: Vec<HostIpv6> = host_ipv6_addresses()
        .into_iter()
        .filter(|a| !a.addr.is_loopback())
        .filter(|a| {
            !is_link_local(&a.addr)
                || Path::new(&format!("/sys/class/net/{}/bridge", a.ifname)).exists()
        })
        .collect();
    // As the learner: the host's every IPv6 address, link-local ones through eth0.
    let targets: Vec<String> = host
        .iter()
        .map(|a| match is_link_local(&a.addr) {
            true => format!("{}%eth0", a.addr),
            false => a.addr.to_string(),
        })
        .collect();
    // A fresh link-local address is tentative for a second (duplicate address
    // detection) and cannot be a source until then.
    let script = format!(
        "i=0; while ip -6 addr show dev eth0 2>/dev/null | grep -q tentative \
           && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; \
         for a in {}; do timeout 2 nc $a {port} </dev/null >/dev/null 2>&1; done; echo done",
        targets.join(" ")
    );
    let out = attack(&h, &id, &script, Duration::from_secs(120)).await;
    // As a learner with raw sockets: UDP to each address, and to all nodes.
    let ns = Link::of(&h, &id, forger).await;
    let (mac, gw) = ns.eth0().await;
    let gw_mac = host_mac_of(gw);
    let src = frame::link_local(mac);
    let mut frames: Vec<Vec<u8>> = host
        .iter()
        .map(|a| {
            let p = frame::ipv6_udp(src, 7010, a.addr, uport, b"hello over ipv6");
            frame::ethernet(gw_mac, mac, frame::IPV6, &p)
        })
        .collect();
    let p = frame::ipv6_udp(src, 7010, frame::ALL_NODES, uport, b"hello, all nodes");
    let all = frame::multicast_mac(frame::ALL_NODES);
    frames.push(frame::ethernet(all, mac, frame::IPV6, &p));
    ns.send(frames).await;
    let got = received(&udp, Duration::from_secs(1));
    let addr = h.driver.inspect(&id).await.expect("inspect").address;
    let Some(IpAddr::V4(me)) = addr else {
        panic!("machine {id} has an IPv4 address: {addr:?}")
    };
    raw_control(&ns, (mac, me), (gw_mac, gw)).await;
    let probes = dog.finish("reaching the host over IPv6").await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout:?}");
    if let Ok((_, peer)) = tcp.accept() {
        panic!(
            "machine {id} reached a host service listening on [::] (from {peer}); \
             it tried {targets:?}: {stdout:?}"
        );
    }
    assert!(
        got.is_empty(),
        "IPv6 datagrams from machine {id} reached the host's [::]:{uport}: {got:?}"
    );
    probes.assert_prompt();
}

/// Removes what a router advertisement for `prefix` made on the host, should the host
/// have taken it (the test then fails, and must not leave the host changed).
struct UndoAdvertisement {
    prefix: Ipv6Addr,
}

impl UndoAdvertisement {
    /// Host addresses inside the /64, and whether a route to it exists.
    fn effects(&self) -> (Vec<HostIpv6>, bool) {
        let net = u128::from(self.prefix) >> 64;
        let addrs = host_ipv6_addresses()
            .into_iter()
            .filter(|a| u128::from(a.addr) >> 64 == net)
            .collect();
        let routes = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        let hex = format!("{:032x}", u128::from(self.prefix));
        let route = routes.lines().any(|l| l.starts_with(&hex));
        (addrs, route)
    }
}

impl Drop for UndoAdvertisement {
    fn drop(&mut self) {
        let (addrs, _) = self.effects();
        for a in addrs {
            let _ = Command::new("ip")
                .args(["-6", "addr", "del", &format!("{}/64", a.addr)])
                .args(["dev", &a.ifname])
                .status();
        }
        for _ in 0..8 {
            let del = Command::new("ip")
                .args(["-6", "route", "del", &format!("{}/64", self.prefix)])
                .output();
            if !matches!(del, Ok(o) if o.status.success()) {
                break;
            }
        }
    }
}

pub async fn router_advertisement_ignored(h: Harness) {
    router_advertisement(h, Forger::Host).await
}

/// [`router_advertisement_ignored`] with the advertisement forged by `forger`.
pub(crate) async fn router_advertisement(h: Harness, forger: Forger) {
    let (id, _g, dog) = setup(&h, "routeradv").await;
    let ns = Link::of(&h, &id, forger).await;
    let (mac, _) = ns.eth0().await;
    // A documentation prefix of this process's own.
    let pid = std::process::id();
    let prefix = Ipv6Addr::new(0x2001, 0xdb8, (pid >> 16) as u16, pid as u16, 0, 0, 0, 0);
    let undo = UndoAdvertisement { prefix };
    assert_eq!(
        undo.effects().0.len(),
        0,
        "the host has no address in {prefix}/64 yet"
    );
    let ra = frame::router_advertisement(frame::link_local(mac), mac, prefix);
    let f = frame::ethernet(
        frame::multicast_mac(frame::ALL_NODES),
        mac,
        frame::IPV6,
        &ra,
    );
    for _ in 0..3 {
        ns.send(vec![f.clone()]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Addresses from an advertisement appear at once (tentative until DAD ends).
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut effects = undo.effects();
    while effects.0.is_empty() && !effects.1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        effects = undo.effects();
    }
    let probes = dog.finish("advertising a router to the host").await;
    let names: Vec<String> = effects
        .0
        .iter()
        .map(|a| format!("{} on {}", a.addr, a.ifname))
        .collect();
    assert!(
        names.is_empty() && !effects.1,
        "the host took machine {id}'s router advertisement for {prefix}/64: \
         addresses {names:?}, route {}",
        effects.1
    );
    drop(undo);
    probes.assert_prompt();
}

/// Capability bit of CAP_NET_RAW.
const CAP_NET_RAW: u32 = 13;

pub async fn raw_sockets_refused(h: Harness) {
    let (id, _g, dog) = setup(&h, "rawsock").await;
    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); echo gw=$gw; \
         awk '/^Cap(Bnd|Eff|Prm)/ {{print $1 $2}}' /proc/self/status; \
         arping -c 1 -w 2 -I eth0 $gw >/dev/null 2>&1; echo arping=$?; \
         ping -c 1 -W 2 $gw >/dev/null 2>&1; echo rawping=$?; \
         {AGENT_PATH} ping -c 2 -W 2 $gw; echo agentping=$?"
    );
    let out = attack(&h, &id, &script, Duration::from_secs(30)).await;
    let stdout = text(&out.stdout);
    let gw = stdout
        .lines()
        .find_map(|l| l.strip_prefix("gw="))
        .unwrap_or_default()
        .to_string();
    // ping_group_range must cover the learner's other users too.
    let mut nobody = ExecSpec::new([AGENT_PATH, "ping", "-c", "1", "-W", "2", gw.as_str()]);
    nobody.user = Some("65534".into());
    let as_nobody = crate::collect(
        h.driver.as_ref(),
        &id,
        crate::ExecRequest::new(nobody, Duration::from_secs(10)),
    )
    .await
    .expect("ping as nobody");
    let probes = dog.finish("opening raw sockets").await;
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout:?}"))
            .trim()
            .to_string()
    };
    for set in ["CapBnd:", "CapEff:", "CapPrm:"] {
        let caps = u64::from_str_radix(&value(set), 16).expect("capability mask");
        assert_eq!(
            caps & 1 << CAP_NET_RAW,
            0,
            "machine {id} holds CAP_NET_RAW ({set} {caps:#x})"
        );
    }
    assert_ne!(
        value("arping="),
        "0",
        "machine {id} opened a packet socket (arping {gw}): {stdout:?}"
    );
    assert_ne!(
        value("rawping="),
        "0",
        "machine {id} opened a raw ICMP socket (busybox ping {gw}): {stdout:?}"
    );
    assert_eq!(
        value("agentping="),
        "0",
        "ping over an ICMP datagram socket ({AGENT_PATH} ping: the harness needs the agent) \
         reaches the gateway {gw}: {stdout:?}"
    );
    assert_eq!(
        as_nobody.exit_code,
        Some(0),
        "nobody pings the gateway too: {} {}",
        text(&as_nobody.stdout),
        text(&as_nobody.stderr)
    );
    probes.assert_prompt();
}

/// Creates a second machine (the victim) with the attacker's own watchdog running.
async fn victim(h: &Harness, tag: &str) -> (String, Ipv4Addr, Cleanup) {
    let s = spec(h, tag);
    let guard = Cleanup::new(h, &s.id);
    let info = h.driver.create(&s).await.expect("create the victim");
    match info.address {
        Some(IpAddr::V4(a)) => (s.id, a, guard),
        other => panic!("victim {} has an IPv4 address: {other:?}", s.id),
    }
}

pub async fn spoofed_sources_dropped(h: Harness) {
    spoofed_sources(h, Forger::Host).await
}

/// [`spoofed_sources_dropped`] with the frames forged by `forger`.
pub(crate) async fn spoofed_sources(h: Harness, forger: Forger) {
    let (id, _g, dog) = setup(&h, "spoofer").await;
    let (vid, vaddr, _gv) = victim(&h, "spoofed").await;
    let me = match h.driver.inspect(&id).await.expect("inspect").address {
        Some(IpAddr::V4(a)) => a,
        other => panic!("machine {id} has an IPv4 address: {other:?}"),
    };
    let ns = Link::of(&h, &id, forger).await;
    let vns = Link::of(&h, &vid, forger).await;
    let (mac, gw) = ns.eth0().await;
    let (vmac, _) = vns.eth0().await;
    let gw_mac = host_mac_of(gw);
    // A socket in the victim, and a flow the host opened to the victim (like the
    // checker's): replies to it pass the host's filters, so a forged one would too.
    let mut in_victim = vns.udp(7002).await;
    let host = UdpSocket::bind("0.0.0.0:0").expect("host UDP socket");
    let hport = host.local_addr().unwrap().port();
    host.send_to(b"control", (vaddr, 7002))
        .expect("send to victim");
    let control = in_victim.received(Duration::from_secs(2)).await;
    assert_eq!(control.len(), 1, "control: the victim's socket receives");
    let udp = |src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, dport: u16| {
        let p = frame::ipv4_udp(src, 7002, dst, dport, b"forged");
        frame::ethernet(dst_mac, src_mac, frame::IPV4, &p)
    };
    let unused = Ipv4Addr::new(198, 51, 100, 7);
    let frames = vec![
        // To the host, as the victim: a reply on the host's flow.
        udp(mac, gw_mac, vaddr, gw, hport),
        udp(vmac, gw_mac, vaddr, gw, hport),
        udp(FORGED_MAC, gw_mac, vaddr, gw, hport),
        // To the victim, as the gateway, as the victim itself and as a stranger.
        udp(mac, vmac, gw, vaddr, 7002),
        udp(gw_mac, vmac, gw, vaddr, 7002),
        udp(vmac, vmac, vaddr, vaddr, 7002),
        udp(FORGED_MAC, vmac, unused, vaddr, 7002),
        udp(mac, BROADCAST, unused, vaddr, 7002),
    ];
    ns.send(frames).await;
    let at_host = received(&host, Duration::from_secs(1));
    let at_victim = in_victim.received(Duration::from_millis(200)).await;
    raw_control(&ns, (mac, me), (gw_mac, gw)).await;
    let probes = dog.finish("forging source addresses").await;
    assert!(
        at_host.is_empty(),
        "forged datagrams from machine {id} reached the host's flow to {vaddr}: {at_host:?}"
    );
    assert!(
        at_victim.is_empty(),
        "forged datagrams from machine {id} reached machine {vid}: {at_victim:?}"
    );
    probes.assert_prompt();
}

/// What the host reads from `addr`:7777 (the victim's `hi`), or why not.
fn fetch(addr: Ipv4Addr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&(addr, 7777).into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

pub async fn arp_spoofing_without_effect(h: Harness) {
    arp_spoofing(h, Forger::Host).await
}

/// [`arp_spoofing_without_effect`] with the ARP messages forged by `forger`.
pub(crate) async fn arp_spoofing(h: Harness, forger: Forger) {
    let (id, _g, dog) = setup(&h, "arpspoof").await;
    let (vid, vaddr, _gv) = victim(&h, "arpvictim").await;
    let _listener = h
        .driver
        .exec(
            &vid,
            ExecSpec::new(["nc", "-ll", "-p", "7777", "-e", "/bin/echo", "hi"]),
        )
        .await
        .expect("the victim's listener");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fetch(vaddr).map(|s| s.trim().to_string()) != Ok("hi".into()) {
        assert!(
            Instant::now() < deadline,
            "control: host reaches {vaddr}:7777"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ns = Link::of(&h, &id, forger).await;
    let (mac, gw) = ns.eth0().await;
    let (vmac, _) = Link::of(&h, &vid, forger).await.eth0().await;
    let gw_mac = host_mac_of(gw);
    assert_eq!(
        host_arp_entry(vaddr),
        Some(vmac),
        "control: the host knows {vaddr} at {}",
        fmt_mac(&vmac)
    );
    // Past the neighbour table's locktime (1 s), when a new answer would replace it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let zero = [0u8; 6];
    let arp = |eth_src: Mac, eth_dst: Mac, op: u16, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr| {
        frame::ethernet(
            eth_dst,
            eth_src,
            frame::ARP,
            &frame::arp(op, mac, spa, tha, tpa),
        )
    };
    let frames = vec![
        // "The victim is at my MAC": a reply to the host, and gratuitous to all.
        arp(mac, gw_mac, 2, vaddr, gw_mac, gw),
        arp(mac, BROADCAST, 1, vaddr, zero, vaddr),
        arp(mac, BROADCAST, 2, vaddr, BROADCAST, vaddr),
        // The same with the victim's MAC as the frame's source.
        arp(vmac, gw_mac, 2, vaddr, gw_mac, gw),
        // "The gateway is at my MAC", for the victim.
        arp(mac, BROADCAST, 1, gw, zero, gw),
        arp(mac, vmac, 2, gw, vmac, vaddr),
    ];
    let mut seen = Vec::new();
    for _ in 0..5 {
        ns.send(frames.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.push(host_arp_entry(vaddr));
    }
    let fetched: Vec<Result<String, String>> = (0..3).map(|_| fetch(vaddr)).collect();
    let victim_arp = attack(&h, &vid, "cat /proc/net/arp", Duration::from_secs(10)).await;
    let probes = dog.finish("ARP spoofing a neighbour").await;
    assert!(
        seen.iter().all(|m| *m == Some(vmac)),
        "machine {id} changed the host's ARP entry for {vaddr} ({}): {:?}",
        fmt_mac(&vmac),
        seen.iter()
            .map(|m| m.as_ref().map(fmt_mac))
            .collect::<Vec<_>>()
    );
    assert!(
        fetched
            .iter()
            .all(|r| r.as_deref().map(str::trim) == Ok("hi")),
        "the host's connections to machine {vid} still reach it: {fetched:?}"
    );
    let table = text(&victim_arp.stdout);
    for l in table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&gw.to_string().as_str()) {
            assert_eq!(
                f.get(3).and_then(|m| parse_mac(m)),
                Some(gw_mac),
                "machine {id} changed machine {vid}'s ARP entry for the gateway: {table}"
            );
        }
    }
    probes.assert_prompt();
}

/// Addresses of the outside host.
const OUTSIDE_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const OUTSIDE_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// One address in each private range a machine must not reach.
const OUTSIDE_PRIVATE: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 168, 254, 2),
    Ipv4Addr::new(10, 254, 254, 2),
    Ipv4Addr::new(100, 64, 254, 2),
];
const OUTSIDE_PORTS: [u16; 3] = [80, 25, 8080];

/// The outside host (see the module's documentation). One at a time per host: its
/// addresses are fixed, so test processes take turns through a lock file.
struct Outside {
    name: String,
    _lock: File,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Outside {
    fn create() -> Self {
        let lock = File::create("/run/lock/rnr-isolation-outside.lock").expect("lock file");
        // SAFETY: flock(2) on a descriptor we own; released when the file closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // Left behind by a test process killed outright (no destructor ran).
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("rnro") {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        let routes = || {
            let out = Command::new("ip").args(["-4", "route", "show"]).output();
            String::from_utf8_lossy(&out.expect("ip route").stdout).into_owned()
        };
        // The previous holder's namespace may still be going away (see the destructor).
        let deadline = Instant::now() + Duration::from_secs(10);
        while routes().contains(" dev rnroh") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let routes = routes();
        for a in [OUTSIDE_PUBLIC, METADATA].iter().chain(&OUTSIDE_PRIVATE) {
            assert!(
                !routes.lines().any(|l| covers(l, *a)),
                "the host routes {a} already ({routes}): the outside-host tests need it free"
            );
        }
        let pid = std::process::id();
        let mut me = Self {
            name: format!("rnro{pid}"),
            _lock: lock,
            stop: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(Mutex::new(HashMap::new())),
            thread: None,
        };
        let (ns, host) = (me.name.clone(), format!("rnroh{pid}"));
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_HOST_SIDE}/24"),
            "dev",
            &host,
        ]);
        ip(&["link", "set", &host, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        for a in [OUTSIDE_PUBLIC, METADATA].iter().chain(&OUTSIDE_PRIVATE) {
            let plen = if *a == OUTSIDE_PUBLIC { 24 } else { 32 };
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{a}/{plen}"),
                "dev",
                "eth0",
            ]);
            if *a != OUTSIDE_PUBLIC {
                let via = OUTSIDE_PUBLIC.to_string();
                ip(&[
                    "route",
                    "add",
                    &format!("{a}/32"),
                    "via",
                    &via,
                    "dev",
                    &host,
                ]);
            }
        }
        let gw = OUTSIDE_HOST_SIDE.to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gw]);
        let nsfile = File::open(format!("/run/netns/{ns}")).expect("the outside netns");
        let listeners = in_netns(nsfile.as_raw_fd(), || {
            OUTSIDE_PORTS
                .iter()
                .map(|p| {
                    let l = TcpListener::bind(("0.0.0.0", *p))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect::<io::Result<Vec<_>>>()
        })
        .expect("listeners in the outside netns");
        let (stop, accepted) = (me.stop.clone(), me.accepted.clone());
        me.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        idle = false;
                        if let Ok(to) = s.local_addr() {
                            *accepted.lock().unwrap().entry(to).or_default() += 1;
                        }
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }));
        me
    }

    /// Connections accepted on `addr:port`.
    fn accepted(&self, addr: Ipv4Addr, port: u16) -> usize {
        let to = SocketAddr::from((addr, port));
        self.accepted.lock().unwrap().get(&to).copied().unwrap_or(0)
    }
}

/// Whether route line `l` of `ip -4 route` covers `a` (the default route aside).
fn covers(l: &str, a: Ipv4Addr) -> bool {
    let Some(dst) = l.split_whitespace().next() else {
        return false;
    };
    let (net, plen) = dst.split_once('/').unwrap_or((dst, "32"));
    match (net.parse::<Ipv4Addr>(), plen.parse::<u32>()) {
        (Ok(n), Ok(p)) if p > 0 && p <= 32 => {
            let mask = u32::MAX << (32 - p);
            u32::from(n) & mask == u32::from(a) & mask
        }
        _ => false,
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Deleting the host end takes the pair, its addresses and routes at once; the
        // namespace alone would take them later, in the kernel's own time (after the lock
        // is free, under load).
        let host = format!("rnroh{}", self.name.trim_start_matches("rnro"));
        let _ = Command::new("ip").args(["link", "del", &host]).status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A machine with outbound access, its watchdog, and the outside host.
async fn outbound_setup(
    h: &Harness,
    tag: &str,
    pids: u64,
    memory_mib: u64,
) -> (String, Cleanup, Watchdog, Outside) {
    let outside = tokio::task::spawn_blocking(Outside::create)
        .await
        .expect("outside host");
    let mut s = spec(h, tag);
    s.network.outbound = true;
    s.limits.pids = pids;
    s.limits.memory_mib = memory_mib;
    let (id, g, dog) = setup_spec(h, s).await;
    (id, g, dog, outside)
}

/// A script connecting to each `addr:port` in turn, printing `<addr>:<port>=<exit code>`.
fn connect_script(targets: &[(Ipv4Addr, u16)]) -> String {
    targets
        .iter()
        .map(|(a, p)| format!("nc -w 2 {a} {p} </dev/null >/dev/null 2>&1; echo {a}:{p}=$?; "))
        .collect()
}

pub async fn metadata_unreachable(h: Harness) {
    let (id, _g, dog, outside) = outbound_setup(&h, "metadata", 64, 64).await;
    let script = connect_script(&[(OUTSIDE_PUBLIC, 8080), (METADATA, 80), (METADATA, 8080)]);
    let out = attack(&h, &id, &script, Duration::from_secs(30)).await;
    let probes = dog.finish("reaching the cloud's metadata service").await;
    let stdout = text(&out.stdout);
    assert!(
        outside.accepted(OUTSIDE_PUBLIC, 8080) > 0,
        "control: machine {id}, with outbound access, reaches {OUTSIDE_PUBLIC}:8080: {stdout:?}"
    );
    for port in [80, 8080] {
        assert_eq!(
            outside.accepted(METADATA, port),
            0,
            "machine {id} reached the metadata service {METADATA}:{port}: {stdout:?}"
        );
    }
    probes.assert_prompt();
}

pub async fn private_ranges_and_smtp_unreachable(h: Harness) {
    let (id, _g, dog, outside) = outbound_setup(&h, "private", 64, 64).await;
    let mut targets = vec![(OUTSIDE_PUBLIC, 8080), (OUTSIDE_PUBLIC, 25)];
    targets.extend(OUTSIDE_PRIVATE.iter().map(|a| (*a, 8080)));
    let out = attack(&h, &id, &connect_script(&targets), Duration::from_secs(60)).await;
    let probes = dog.finish("reaching private ranges and SMTP").await;
    let stdout = text(&out.stdout);
    assert!(
        outside.accepted(OUTSIDE_PUBLIC, 8080) > 0,
        "control: machine {id} reaches {OUTSIDE_PUBLIC}:8080: {stdout:?}"
    );
    assert_eq!(
        outside.accepted(OUTSIDE_PUBLIC, 25),
        0,
        "machine {id} reached SMTP at {OUTSIDE_PUBLIC}:25: {stdout:?}"
    );
    for a in OUTSIDE_PRIVATE {
        assert_eq!(
            outside.accepted(a, 8080),
            0,
            "machine {id} reached the private address {a}: {stdout:?}"
        );
    }
    probes.assert_prompt();
}

pub async fn outbound_rate_limited(h: Harness) {
    outbound_rate(h, false).await
}

/// [`outbound_rate_limited`], the burst opened by the shell's `nc`s or, `with_probe`, by
/// the probe from one process (a machine whose CPU is emulated forks them slower than
/// the limit).
pub(crate) async fn outbound_rate(h: Harness, with_probe: bool) {
    // Room for the burst's processes.
    let (id, _g, dog, outside) = outbound_setup(&h, "ratelimit", 512, 256).await;
    const ATTEMPTS: u32 = 150;
    let script = if with_probe {
        crate::isolation::probe::install(&h, &id).await;
        let probe = crate::isolation::probe::PATH;
        format!("{probe} connect {OUTSIDE_PUBLIC} 8080 {ATTEMPTS} 900 && echo done")
    } else {
        format!(
            "i=0; while [ $i -lt {ATTEMPTS} ]; do \
               nc -w 1 {OUTSIDE_PUBLIC} 8080 </dev/null >/dev/null 2>&1 & i=$((i+1)); \
             done; wait; echo done"
        )
    };
    let started = Instant::now();
    let out = attack(&h, &id, &script, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let burst = outside.accepted(OUTSIDE_PUBLIC, 8080);
    // The limit refills: a connection a few seconds later passes again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = attack(
        &h,
        &id,
        &connect_script(&[(OUTSIDE_PUBLIC, 8080)]),
        Duration::from_secs(10),
    )
    .await;
    let probes = dog.finish("opening connections without limit").await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout:?}");
    eprintln!("rate limit: {burst} of {ATTEMPTS} connections passed in {elapsed:?}");
    let ceiling = NEW_CONNECTIONS_BURST
        + (elapsed.as_secs_f64() * f64::from(NEW_CONNECTIONS_PER_SECOND)).ceil() as u32
        + 10;
    assert!(
        burst as u32 <= ceiling.min(ATTEMPTS - 1),
        "machine {id} opened {burst} of {ATTEMPTS} connections in {elapsed:?} \
         (limit {NEW_CONNECTIONS_PER_SECOND}/s, burst {NEW_CONNECTIONS_BURST})"
    );
    assert!(
        burst as u32 >= NEW_CONNECTIONS_BURST / 2,
        "the limit lets a burst through: {burst} of {ATTEMPTS} in {elapsed:?}"
    );
    assert!(
        outside.accepted(OUTSIDE_PUBLIC, 8080) > burst,
        "connections pass again once the limit refilled: {}",
        text(&again.stdout)
    );
    probes.assert_prompt();
}

#[cfg(test)]
mod tests {
    use super::frame;
    use std::net::Ipv6Addr;

    #[test]
    fn checksums_verify() {
        let p = frame::ipv4_udp(
            "10.0.0.2".parse().unwrap(),
            1,
            "10.0.0.1".parse().unwrap(),
            2,
            b"x",
        );
        assert_eq!(frame::checksum(&[&p[..20]]), 0, "IPv4 header");
        let ll = frame::link_local([0x02, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(ll, "fe80::42:acff:fe11:2".parse::<Ipv6Addr>().unwrap());
        let ra = frame::router_advertisement(ll, [2, 0x42, 0xac, 0x11, 0, 2], Ipv6Addr::LOCALHOST);
        // Sum over the pseudo-header and the message, checksum included, is zero.
        let len = ((ra.len() - 40) as u32).to_be_bytes();
        let pseudo = [&ra[8..40], &len[..], &[0, 0, 0, 58]].concat();
        assert_eq!(frame::checksum(&[&pseudo, &ra[40..]]), 0, "ICMPv6");
        assert_eq!(
            frame::multicast_mac(frame::ALL_NODES),
            [0x33, 0x33, 0, 0, 0, 1]
        );
    }

    #[test]
    fn route_lines_cover_addresses() {
        let a = "10.254.254.2".parse().unwrap();
        assert!(super::covers("10.0.0.0/8 dev x", a));
        assert!(!super::covers("10.1.0.0/16 dev x", a));
        assert!(!super::covers("default via 10.0.0.1 dev eth0", a));
        assert!(super::covers("10.254.254.2 via 1.2.3.4 dev x", a));
    }
}
