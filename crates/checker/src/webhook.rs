//! Webhooks: when a run with a `webhook_url` ends, its result is POSTed to the LMS, signed
//! with HMAC-SHA256 (`X-Rnr-Signature: sha256=<hex>` over the exact body) and retried with
//! exponential backoff. Deliveries are driven from the store, so they survive restarts.

use crate::Checker;
use hmac::{Hmac, Mac};
use rnr_store::checks::{CheckRunRow, WebhookState};
use sha2::Sha256;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i64 = 8;

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

async fn deliver(client: &reqwest::Client, secret: &str, run: &CheckRunRow) -> Result<(), String> {
    let url = run.webhook_url.as_deref().ok_or("no webhook URL")?;
    let body = body(run);
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-rnr-signature", signature(secret, &body))
        .header("x-rnr-run", &run.id)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("POST {url}: answered {}", resp.status()))
    }
}

pub(crate) async fn run(checker: Checker, shutdown: CancellationToken) {
    let Some(secret) = checker.inner.config.webhook_secret.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: cannot build an HTTP client");
            return;
        }
    };
    let runs = &checker.inner.runs;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let due = match runs.due_webhooks(rnr_core::now_ms(), 16).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list due webhooks");
                continue;
            }
        };
        for run in due {
            let (state, error, next) = match deliver(&client, &secret, &run).await {
                Ok(()) => {
                    // Delivered but not yet recorded: a crash here delivers it again after
                    // the restart (at least once; the LMS tells repeats by X-Rnr-Run).
                    rnr_driver::fault::point("webhook:delivered");
                    (WebhookState::Delivered, None, 0)
                }
                Err(e) if run.webhook_attempts + 1 >= MAX_ATTEMPTS => {
                    (WebhookState::Failed, Some(e), 0)
                }
                Err(e) => {
                    let wait = backoff(run.webhook_attempts);
                    let next = rnr_core::now_ms() + i64::try_from(wait.as_millis()).unwrap_or(0);
                    (WebhookState::Pending, Some(e), next)
                }
            };
            if let Some(e) = &error {
                tracing::warn!(run = %run.id, attempt = run.webhook_attempts + 1, error = %e, "webhook delivery failed");
            }
            if let Err(e) = runs
                .webhook_attempted(&run.id, state, error.as_deref(), next)
                .await
            {
                tracing::warn!(run = %run.id, error = %e, "cannot record a webhook delivery");
            }
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
}
