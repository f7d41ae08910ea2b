//! Webhook notifications, sent off the request path. Raise and resolve write
//! one delivery row per enabled target, then queue its id; a worker sends it
//! with reqwest (10 s timeout), signs the body with the target's secret
//! (`X-RM-Signature: sha256=<hex HMAC-SHA256>`), and retries any failure or
//! non-2xx answer with exponential backoff, up to `MAX_ATTEMPTS`. Each target
//! has one lane that sends its deliveries in order (a receiver never sees an
//! alert resolved before it was raised); targets do not wait on each other.
//! Rows left pending by a previous run are re-queued at start. Secrets and
//! target URLs (which often embed tokens) are never logged.
use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    clock::{self, Clock},
    state::AppState,
    store::{
        self, StoreError,
        alerts::Alert,
        notifications::{Attempt, Delivery, DeliveryEvent, DeliveryStatus, Target},
    },
    version,
};

pub const MAX_ATTEMPTS: i32 = 5;
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Webhooks sent at once across all targets; the rest wait their turn.
const CONCURRENCY: usize = 8;
/// No backoff step waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How much of a failing response's body is kept as the error.
const ERROR_BODY_CHARS: usize = 200;
/// Bytes of a failed delivery's response read to find those characters.
const ERROR_BODY_READ_BYTES: usize = 4096;

pub const SIGNATURE_HEADER: &str = "X-RM-Signature";
pub const EVENT_HEADER: &str = "X-RM-Event";
pub const DELIVERY_HEADER: &str = "X-RM-Delivery";

/// A queued delivery: `(delivery id, target id)`.
pub(super) type Queued = (i64, i64);

/// Queue of deliveries for the worker.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Queued>,
}

struct Worker {
    db: DatabaseConnection,
    clock: Clock,
    client: reqwest::Client,
    retry_base: Duration,
    limit: Semaphore,
}

impl Notifier {
    /// Starts the worker; it first picks up deliveries left pending.
    pub fn spawn(
        db: DatabaseConnection,
        clock: Clock,
        retry_base: Duration,
    ) -> anyhow::Result<Notifier> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(format!("restic-manager/{}", version::VERSION))
            .build()
            .context("building the webhook HTTP client")?;
        let worker = Arc::new(Worker {
            db,
            clock,
            client,
            retry_base,
            limit: Semaphore::new(CONCURRENCY),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(worker, rx));
        Ok(Notifier { tx })
    }

    fn queue(&self, delivery_id: i64, target_id: i64) {
        // A closed queue means shutdown; the row stays pending for next start.
        let _ = self.tx.send((delivery_id, target_id));
    }
}

/// Routes deliveries to one lane per target, in the order queued.
async fn run(worker: Arc<Worker>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut lanes: HashMap<i64, mpsc::UnboundedSender<i64>> = HashMap::new();
    let mut route = |(delivery_id, target_id): Queued| {
        let lane = lanes.entry(target_id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(worker.clone(), target_id, rx));
            tx
        });
        let _ = lane.send(delivery_id);
    };
    match store::notifications::pending(&worker.db).await {
        Ok(rows) => {
            if !rows.is_empty() {
                tracing::info!(count = rows.len(), "resuming pending webhook deliveries");
            }
            rows.into_iter().for_each(&mut route);
        }
        Err(e) => tracing::error!(error = %e, "loading pending webhook deliveries failed"),
    }
    // A delivery both found pending above and queued meanwhile is sent once:
    // the second turn finds it no longer pending.
    while let Some(q) = rx.recv().await {
        route(q);
    }
}

/// Sends one target's deliveries one after another.
async fn lane(worker: Arc<Worker>, target_id: i64, mut rx: mpsc::UnboundedReceiver<i64>) {
    while let Some(id) = rx.recv().await {
        let span = tracing::info_span!("webhook", target_id, delivery_id = id);
        tracing::Instrument::instrument(deliver(&worker, id), span).await;
    }
}

/// Base × 2^(n−1) after the n-th failed attempt, capped.
pub fn backoff(base: Duration, failed_attempts: i32) -> Duration {
    let exp = u32::try_from(failed_attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// Sends one delivery until it is delivered or has failed for good.
async fn deliver(w: &Worker, id: i64) {
    loop {
        let d = match store::notifications::get_delivery(&w.db, id).await {
            Ok(d) => d,
            // Its target was removed (the rows went with it).
            Err(StoreError::NotFound(_)) => return,
            Err(e) => {
                tracing::error!(error = %e, "loading a webhook delivery failed; retried at next start");
                return;
            }
        };
        if d.status != DeliveryStatus::Pending {
            return;
        }
        let target = match store::notifications::get_target(&w.db, d.target_id).await {
            Ok(t) => t,
            Err(StoreError::NotFound(_)) => return,
            Err(e) => {
                tracing::error!(error = %e, "loading a webhook target failed; retried at next start");
                return;
            }
        };
        let wait = d.next_attempt_at - w.clock.now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
        }
        let attempt = d.attempts + 1;
        let result = if target.enabled {
            let _permit = w.limit.acquire().await;
            send(w, &target, &d).await
        } else {
            Err("target disabled".to_string())
        };
        let now = w.clock.now_ms();
        let outcome = match result {
            Ok(()) => Attempt::Delivered,
            Err(error) if attempt >= MAX_ATTEMPTS || !target.enabled => Attempt::Failed { error },
            Err(error) => {
                let wait = backoff(w.retry_base, attempt);
                Attempt::Retry {
                    error,
                    next_at: now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                }
            }
        };
        match &outcome {
            Attempt::Delivered => {
                tracing::info!(target_id = target.id, event = %d.event, attempt, "webhook delivered")
            }
            Attempt::Retry { error, .. } => {
                tracing::warn!(target_id = target.id, event = %d.event, attempt, %error, "webhook failed; will retry")
            }
            Attempt::Failed { error } => {
                tracing::error!(target_id = target.id, event = %d.event, attempt, %error, "webhook failed; giving up")
            }
        }
        if let Err(e) =
            store::notifications::record_attempt(&w.db, id, attempt, &outcome, now).await
        {
            tracing::error!(error = %e, "recording a webhook attempt failed; retried at next start");
            return;
        }
        if !matches!(outcome, Attempt::Retry { .. }) {
            return;
        }
    }
}

/// `hex(HMAC-SHA256(secret, body))`.
pub fn sign(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// The stored event object plus `sent_at`, serialised once: the signature
/// covers exactly these bytes.
fn body(d: &Delivery, now: i64) -> Result<String, String> {
    let mut v: Value =
        serde_json::from_str(&d.payload).map_err(|e| format!("stored payload is not JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("stored payload is not a JSON object".into());
    };
    obj.insert("sent_at".into(), Value::String(clock::rfc3339(now)));
    Ok(v.to_string())
}

/// The error with its causes, without the URL (it may hold a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

async fn send(w: &Worker, target: &Target, d: &Delivery) -> Result<(), String> {
    let body = body(d, w.clock.now_ms())?;
    let mut req = w
        .client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, d.event.wire_name())
        .header(DELIVERY_HEADER, d.id.to_string());
    if let Some(secret) = target.secret.as_deref().filter(|s| !s.is_empty()) {
        let sig = sign(secret.as_bytes(), body.as_bytes())
            .ok_or_else(|| "could not key the signature".to_string())?;
        req = req.header(SIGNATURE_HEADER, format!("sha256={sig}"));
    }
    let resp = req.body(body).send().await.map_err(describe)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // Only the start is shown: read no more than that (a hostile or broken
    // endpoint may answer with an endless body).
    let mut resp = resp;
    let mut head = Vec::new();
    while head.len() < ERROR_BODY_READ_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => head.extend_from_slice(&c),
            _ => break,
        }
    }
    head.truncate(ERROR_BODY_READ_BYTES);
    let text = String::from_utf8_lossy(&head);
    let snippet: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_BODY_CHARS)
        .collect();
    Err(if snippet.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", snippet.trim())
    })
}

fn alert_object(a: &Alert, host_name: Option<&str>) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "message": a.message,
        "host_id": a.host_id,
        "host_name": host_name,
        "raised_at": clock::rfc3339(a.raised_at),
        "resolved_at": a.resolved_at.map(clock::rfc3339),
        "count": a.count,
    })
}

/// Writes one delivery of this change per enabled target, in the
/// transaction that records the change itself: an alert is never left
/// without its notifications (nor they without it). Returns what to queue
/// once that transaction has committed ([`queue_all`]).
pub(super) async fn write_deliveries<C: sea_orm::ConnectionTrait>(
    txn: &C,
    event: DeliveryEvent,
    alert: &Alert,
    now: i64,
) -> store::Result<Vec<Queued>> {
    let targets = store::notifications::enabled_targets(txn).await?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let host_name = match alert.host_id {
        Some(h) => store::hosts::names(txn, &[h]).await?.remove(&h),
        None => None,
    };
    let payload = json!({
        "event": event.wire_name(),
        "alert": alert_object(alert, host_name.as_deref()),
    })
    .to_string();
    let mut queued = Vec::with_capacity(targets.len());
    for t in &targets {
        let d =
            store::notifications::create_delivery(txn, t.id, Some(alert.id), event, &payload, now)
                .await?;
        queued.push((d.id, d.target_id));
    }
    Ok(queued)
}

/// Hands committed deliveries to the worker.
pub(super) fn queue_all(state: &AppState, queued: &[Queued]) {
    for &(delivery_id, target_id) in queued {
        state.alerts.notifier.queue(delivery_id, target_id);
    }
}

/// Queues a `test` event to one target (the settings page's button).
pub async fn send_test(state: &AppState, target_id: i64) -> store::Result<Delivery> {
    let t = store::notifications::get_target(&state.db, target_id).await?;
    let now = state.clock.now_ms();
    let payload = json!({
        "event": DeliveryEvent::Test.wire_name(),
        "alert": {
            "id": 0,
            "kind": "test",
            "severity": "info",
            "message": format!("test notification to {} from restic-manager", t.name),
            "host_id": null,
            "host_name": null,
            "raised_at": clock::rfc3339(now),
            "resolved_at": null,
            "count": 1,
        },
    })
    .to_string();
    let d = store::notifications::create_delivery(
        &state.db,
        t.id,
        None,
        DeliveryEvent::Test,
        &payload,
        now,
    )
    .await?;
    state.alerts.notifier.queue(d.id, d.target_id);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_secs(2);
        assert_eq!(backoff(b, 1), Duration::from_secs(2));
        assert_eq!(backoff(b, 2), Duration::from_secs(4));
        assert_eq!(backoff(b, 4), Duration::from_secs(16));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
    }

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231, test case 2: key "Jefe".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?").unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
