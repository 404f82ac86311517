//! Webhooks: when a run with a `webhook_url` ends, its result is POSTed to the LMS, signed
//! with HMAC-SHA256 (`X-Rnr-Signature: sha256=<hex>` over the exact body) and retried with
//! exponential backoff. Deliveries are driven from the store, so they survive restarts.
//!
//! A webhook URL is chosen by an API client, so it must not turn the platform into a way
//! into the host's or its network's private services: a URL whose host is or resolves to
//! a loopback, private, shared (CGNAT), link-local (a cloud's metadata service),
//! unique-local, multicast, reserved or unspecified address is refused when the run is
//! queued and again at each delivery (DNS may have changed since), unless the operator's
//! `webhook_allow` admits it. A delivery connects to the very address it checked (no
//! second lookup for a rebinding DNS to answer differently), follows no redirect and uses
//! no proxy. Deliveries run side by side, a few at once, so one slow receiver does not
//! hold back the others.

use crate::Checker;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use rnr_store::checks::{CheckRunRow, WebhookState};
use sha2::Sha256;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i64 = 8;

/// Deliveries in flight at once.
pub const PARALLEL: usize = 8;

/// Longest a receiver may take to accept a connection, and to answer in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why `ip` is no destination for a webhook (`None`: a public address).
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a unique-local address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: the IPv4 address it stands for decides.
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                forbidden_v4(Ipv4Addr::new(a, b, c, d))
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("an unspecified (\"this network\") address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_link_local() {
        Some("a link-local address (a cloud's metadata service lives there)")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() || a >= 240 {
        Some("a reserved address")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("a reserved (IETF protocol) address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a reserved (benchmarking) address")
    } else {
        None
    }
}

/// A webhook URL checked and resolved: where its delivery connects.
#[derive(Debug, Clone)]
pub struct Destination {
    pub url: reqwest::Url,
    /// The host's name when it is one (IP literals are connected to as they are).
    pub domain: Option<String>,
    pub addrs: Vec<SocketAddr>,
}

/// Parses `url`, resolves its host and refuses it unless every address it stands for is
/// public or admitted by `allow`; the message names the URL, the address and why.
pub async fn check_destination(url: &str, allow: &[IpNet]) -> Result<Destination, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url:?} has no port"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let (domain, addrs) = match literal {
        Some(ip) => (None, vec![SocketAddr::new(ip, port)]),
        None => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("{url:?}: cannot resolve {host}: {e}"))?
                .collect();
            if addrs.is_empty() {
                return Err(format!("{url:?}: {host} resolves to no address"));
            }
            (Some(host.to_string()), addrs)
        }
    };
    for a in &addrs {
        let ip = a.ip();
        if allow.iter().any(|net| net.contains(&ip)) {
            continue;
        }
        if let Some(why) = forbidden(ip) {
            return Err(format!(
                "{url:?} goes to {ip}, {why}: webhooks go only to public addresses \
                 unless [checker] webhook_allow admits the destination"
            ));
        }
    }
    Ok(Destination {
        url: parsed,
        domain,
        addrs,
    })
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body sent for a finished run.
pub fn body(run: &CheckRunRow) -> Vec<u8> {
    let report: serde_json::Value = run
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "event": "check_run.finished",
        "id": run.id,
        "machine_id": run.machine_id,
        "exercise": run.exercise,
        "state": run.state,
        "error": run.error,
        "report": report,
    })
    .to_string()
    .into_bytes()
}

/// Backoff after `attempts` failed deliveries: 1 s, 2 s, 4 s … at most 5 minutes.
fn backoff(attempts: i64) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 8) as u32).min(Duration::from_secs(300))
}

/// One delivery: checked again, pinned to the checked address, no redirects.
async fn deliver(secret: &str, allow: &[IpNet], run: &CheckRunRow) -> Result<(), String> {
    let url = run.webhook_url.as_deref().ok_or("no webhook URL")?;
    let dest = check_destination(url, allow).await?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(domain) = &dest.domain {
        builder = builder.resolve_to_addrs(domain, &dest.addrs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let body = body(run);
    let resp = client
        .post(dest.url)
        .header("content-type", "application/json")
        .header("x-rnr-signature", signature(secret, &body))
        .header("x-rnr-run", &run.id)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(format!(
            "POST {url}: answered {status}; webhooks follow no redirect (Location: {})",
            resp.headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
        ))
    } else {
        Err(format!("POST {url}: answered {status}"))
    }
}

/// Delivers `run` once and records the outcome.
async fn attempt(checker: &Checker, secret: &str, run: &CheckRunRow) {
    let allow = &checker.inner.config.webhook_allow;
    let (state, error, next) = match deliver(secret, allow, run).await {
        Ok(()) => {
            // Delivered but not yet recorded: a crash here delivers it again after the
            // restart (at least once; the LMS tells repeats by X-Rnr-Run).
            rnr_driver::fault::point("webhook:delivered");
            (WebhookState::Delivered, None, 0)
        }
        Err(e) if run.webhook_attempts + 1 >= MAX_ATTEMPTS => (WebhookState::Failed, Some(e), 0),
        Err(e) => {
            let wait = backoff(run.webhook_attempts);
            let next = rnr_core::now_ms() + i64::try_from(wait.as_millis()).unwrap_or(0);
            (WebhookState::Pending, Some(e), next)
        }
    };
    if let Some(e) = &error {
        tracing::warn!(run = %run.id, attempt = run.webhook_attempts + 1, error = %e, "webhook delivery failed");
    }
    if let Err(e) = checker
        .inner
        .runs
        .webhook_attempted(&run.id, state, error.as_deref(), next)
        .await
    {
        tracing::warn!(run = %run.id, error = %e, "cannot record a webhook delivery");
    }
}

pub(crate) async fn run(checker: Checker, shutdown: CancellationToken) {
    let Some(secret) = checker.inner.config.webhook_secret.clone() else {
        return;
    };
    let secret: Arc<str> = secret.into();
    // Runs being delivered: still due in the store until their attempt is recorded.
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // An attempt cut short is not recorded: it is made again at the next start.
                tasks.abort_all();
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        while tasks.try_join_next().is_some() {}
        let in_flight = busy.lock().unwrap_or_else(|p| p.into_inner()).len();
        if in_flight >= PARALLEL {
            continue;
        }
        let limit = i64::try_from(PARALLEL + in_flight).unwrap_or(i64::MAX);
        let due = match checker
            .inner
            .runs
            .due_webhooks(rnr_core::now_ms(), limit)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list due webhooks");
                continue;
            }
        };
        for run in due {
            {
                let mut b = busy.lock().unwrap_or_else(|p| p.into_inner());
                if b.len() >= PARALLEL || !b.insert(run.id.clone()) {
                    continue;
                }
            }
            let (checker, secret, busy) = (checker.clone(), secret.clone(), busy.clone());
            tasks.spawn(async move {
                attempt(&checker, &secret, &run).await;
                busy.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&run.id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_rfc4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(super::backoff(0).as_secs(), 1);
        assert_eq!(super::backoff(3).as_secs(), 8);
        assert_eq!(super::backoff(20).as_secs(), 256);
    }

    #[test]
    fn private_destinations_are_named() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.20.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade"),
            ("169.254.169.254", "metadata"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            let got = super::forbidden(ip.parse().unwrap());
            assert!(got.is_some_and(|g| g.contains(why)), "{ip}: {got:?}");
        }
        for ip in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
        ] {
            assert_eq!(super::forbidden(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn destinations_are_checked_unless_allowed() {
        let e = super::check_destination("http://127.0.0.1:9/hook", &[])
            .await
            .unwrap_err();
        assert!(
            e.contains("http://127.0.0.1:9/hook") && e.contains("loopback"),
            "{e}"
        );
        // A name is judged by what it resolves to.
        let e = super::check_destination("http://localhost:9/hook", &[])
            .await
            .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = super::check_destination("http://[::ffff:a9fe:a9fe]/", &[])
            .await
            .unwrap_err();
        assert!(e.contains("metadata"), "{e}");
        let allow = ["127.0.0.0/8".parse().unwrap()];
        let d = super::check_destination("http://127.0.0.1:9/hook", &allow)
            .await
            .unwrap();
        assert_eq!(d.addrs, ["127.0.0.1:9".parse().unwrap()]);
        assert!(super::check_destination("ftp://example.com/", &allow)
            .await
            .is_err());
    }
}
