//! What the HTTP layer is configured with: the origins allowed to frame the embed pages,
//! the reverse proxies whose `X-Forwarded-For` is believed, and the server's limits
//! (header read and idle timeouts, concurrent connections). Checked once, when built:
//! a bad origin or CIDR is refused naming the setting and the value.

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a setting of the HTTP layer was refused.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error(
        "[ui] embed_origins: {0:?} is not an origin: give scheme://host[:port] (http or https; \
         the host may start with *.), without a path"
    )]
    EmbedOrigin(String),
    #[error("[http] trusted_proxies: {value:?} is not an IP address or CIDR: {message}")]
    TrustedProxy { value: String, message: String },
    #[error("[http] {setting} must be greater than 0")]
    Zero { setting: &'static str },
}

/// The server's limits (see [`crate::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection must send a whole request head within this long of opening, and of
    /// the first byte of each later request; else it is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight and no traffic for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Most connections held at once (WebSockets included); more get a quick 503.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// The HTTP layer's configuration; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    embed_origins: Vec<String>,
    trusted_proxies: Vec<IpNet>,
    limits: ServerLimits,
}

/// `scheme://host[:port]`, http or https, the host possibly `*.`-prefixed: nothing that
/// could carry another CSP directive.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl HttpConfig {
    pub fn new(
        embed_origins: &[String],
        trusted_proxies: &[String],
        limits: ServerLimits,
    ) -> Result<Self, HttpConfigError> {
        let embed_origins = embed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .map(|o| {
                if valid_origin(&o) {
                    Ok(o)
                } else {
                    Err(HttpConfigError::EmbedOrigin(o))
                }
            })
            .collect::<Result<_, _>>()?;
        let trusted_proxies = trusted_proxies
            .iter()
            .map(|p| {
                let p = p.trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| HttpConfigError::TrustedProxy {
                        value: p.to_string(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        if limits.header_read_timeout.is_zero() {
            return Err(HttpConfigError::Zero {
                setting: "header_read_timeout_seconds",
            });
        }
        if limits.idle_timeout.is_zero() {
            return Err(HttpConfigError::Zero {
                setting: "idle_timeout_seconds",
            });
        }
        if limits.max_connections == 0 {
            return Err(HttpConfigError::Zero {
                setting: "max_connections",
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                embed_origins,
                trusted_proxies,
                limits,
            }),
        })
    }

    /// Origins (besides rnr's own) whose pages may frame the embed and terminal pages.
    pub fn embed_origins(&self) -> &[String] {
        &self.inner.embed_origins
    }

    pub fn limits(&self) -> ServerLimits {
        self.inner.limits
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.inner.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the socket's peer, unless that is a trusted proxy; then the
    /// nearest address in `X-Forwarded-For` (read from the right) that is not one. An
    /// unparseable entry stops the walk: what lies left of it is the client's to forge.
    pub fn client_addr(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let mut addr = peer.to_canonical();
        if !self.trusted(addr) {
            return addr;
        }
        let hops = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Some(ip) = parse_hop(hop) else { break };
            addr = ip.to_canonical();
            if !self.trusted(addr) {
                break;
            }
        }
        addr
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(proxies: &[&str]) -> HttpConfig {
        let p: Vec<String> = proxies.iter().map(|s| s.to_string()).collect();
        HttpConfig::new(&[], &p, ServerLimits::default()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = cfg(&[]);
        // No trusted proxy: the header is anyone's to write.
        assert_eq!(
            none.client_addr(ip("10.0.0.9"), &["6.6.6.6"]),
            ip("10.0.0.9")
        );
        let c = cfg(&["10.0.0.0/8", "192.168.1.1"]);
        assert_eq!(c.client_addr(ip("10.0.0.9"), &["6.6.6.6"]), ip("6.6.6.6"));
        // The client forged a first entry; the proxies appended the real ones.
        assert_eq!(
            c.client_addr(ip("10.0.0.9"), &["1.1.1.1, 7.7.7.7", "192.168.1.1"]),
            ip("7.7.7.7")
        );
        // From an untrusted peer, the header counts for nothing.
        assert_eq!(c.client_addr(ip("8.8.8.8"), &["7.7.7.7"]), ip("8.8.8.8"));
        // Garbage stops the walk at the last good hop; ports and brackets are read.
        assert_eq!(
            c.client_addr(ip("10.0.0.9"), &["junk, 10.1.1.1"]),
            ip("10.1.1.1")
        );
        assert_eq!(
            c.client_addr(ip("10.0.0.9"), &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            c.client_addr(ip("::ffff:10.0.0.9"), &["5.5.5.5:80"]),
            ip("5.5.5.5")
        );
        // No header: the proxy itself.
        assert_eq!(c.client_addr(ip("10.0.0.9"), &[]), ip("10.0.0.9"));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |origins: &[&str], proxies: &[&str]| {
            let o: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
            let p: Vec<String> = proxies.iter().map(|s| s.to_string()).collect();
            HttpConfig::new(&o, &p, ServerLimits::default())
                .unwrap_err()
                .to_string()
        };
        for o in [
            "lms.example",
            "ftp://lms.example",
            "https://lms.example/path",
            "https://a.example; script-src *",
            "https://a b",
            "'self'",
        ] {
            let e = bad(&[o], &[]);
            assert!(e.contains("embed_origins"), "{e}");
        }
        let e = bad(&[], &["10.0.0.0/33"]);
        assert!(
            e.contains("trusted_proxies") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let ok = HttpConfig::new(
            &[
                "https://lms.example/".into(),
                "http://*.uni.example:8443".into(),
            ],
            &[],
            ServerLimits::default(),
        )
        .unwrap();
        assert_eq!(
            ok.embed_origins(),
            ["https://lms.example", "http://*.uni.example:8443"]
        );
    }
}
