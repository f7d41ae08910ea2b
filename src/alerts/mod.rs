//! The alert engine: raise (deduplicated by key), resolve, the auto-resolve
//! hooks and the `host_offline` sweep. A real change (a new alert, a
//! resolve) queues webhook notifications; a repeat raise does not. Callers
//! never block on a webhook: sending happens in `notify`'s worker.
pub mod health;
pub mod notify;

use std::{collections::HashSet, time::Duration};

use sea_orm::{DatabaseConnection, TransactionTrait};

pub use crate::store::alerts::{Alert, Raised, Severity};
use crate::{
    agents::marks::Mark,
    clock::{self, Clock},
    config::Settings,
    state::AppState,
    store::{
        self,
        alerts::{AlertState, NewAlert},
        notifications::DeliveryEvent,
    },
    text,
};

/// Kinds raised so far; the dedup key is `<kind>:<subject id>`.
pub const HOST_OFFLINE: &str = "host_offline";
pub const UPDATE_FAILED: &str = "update_failed";
pub const FLEET_UPDATE_HALTED: &str = "fleet_update_halted";

pub fn host_offline_key(host_id: i64) -> String {
    format!("{HOST_OFFLINE}:{host_id}")
}
pub fn update_failed_key(host_id: i64) -> String {
    format!("{UPDATE_FAILED}:{host_id}")
}
pub fn fleet_update_halted_key(fleet_update_id: i64) -> String {
    format!("{FLEET_UPDATE_HALTED}:{fleet_update_id}")
}

/// The engine's share of `AppState`: the notification queue and when this
/// server started (offline time before that is our downtime, not the host's).
#[derive(Clone)]
pub struct Alerts {
    notifier: notify::Notifier,
    started_at: i64,
}

impl Alerts {
    /// Starts the notification worker (which first re-queues deliveries left
    /// pending by a previous run).
    pub fn start(
        db: DatabaseConnection,
        clock: Clock,
        settings: &Settings,
    ) -> anyhow::Result<Alerts> {
        let started_at = clock.now_ms();
        let notifier = notify::Notifier::spawn(db, clock, settings.notify_retry_base)?;
        Ok(Alerts {
            notifier,
            started_at,
        })
    }
}

/// Raises an alert, or counts a repeat of the active one with the same key
/// (count, last-seen and message change; no notification). A new alert and
/// its webhook deliveries are written in one transaction: both or neither.
pub async fn raise(
    state: &AppState,
    kind: &str,
    dedup_key: &str,
    host_id: Option<i64>,
    severity: Severity,
    message: &str,
) -> store::Result<Raised> {
    let new = NewAlert {
        kind,
        dedup_key,
        host_id,
        severity,
        message,
    };
    // A host's next hello (or successful backup) must look for an alert it
    // can settle: marked before the write and again after it
    // (`agents::marks`).
    let _marked =
        crate::agents::marks::alert_mark(dedup_key).map(|(mark, id)| state.marks.guard(mark, id));
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    store::alerts::lock_for_write(&txn).await?;
    let raised = store::alerts::raise(&txn, &new, now).await?;
    let queued = match &raised {
        Raised::New(a) => notify::write_deliveries(&txn, DeliveryEvent::Raised, a, now).await?,
        Raised::Repeat(_) => Vec::new(),
    };
    txn.commit().await?;
    if let Raised::New(a) = &raised {
        tracing::warn!(
            alert_id = a.id,
            kind = %text::one_line(kind, 64),
            host_id,
            %severity,
            message = %text::one_line(message, text::AGENT_TEXT_MAX_BYTES),
            "alert raised"
        );
        notify::queue_all(state, &queued);
    }
    Ok(raised)
}

/// Resolves the active alert with this key; `None` if none was active. The
/// resolve and its webhook deliveries are written in one transaction.
pub async fn resolve(state: &AppState, dedup_key: &str) -> store::Result<Option<Alert>> {
    // Read-only first: most calls (every hello) find nothing to resolve and
    // need no write transaction.
    if store::alerts::active(&state.db, dedup_key).await?.is_none() {
        return Ok(None);
    }
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    store::alerts::lock_for_write(&txn).await?;
    let resolved = store::alerts::resolve(&txn, dedup_key, now).await?;
    let queued = match &resolved {
        Some(a) => notify::write_deliveries(&txn, DeliveryEvent::Resolved, a, now).await?,
        None => Vec::new(),
    };
    txn.commit().await?;
    if let Some(a) = &resolved {
        tracing::info!(
            alert_id = a.id,
            kind = %text::one_line(&a.kind, 64),
            host_id = a.host_id,
            "alert resolved"
        );
        notify::queue_all(state, &queued);
    }
    Ok(resolved)
}

/// Resolves an alert by id (an admin closing it by hand).
pub async fn resolve_id(state: &AppState, id: i64) -> store::Result<Option<Alert>> {
    let a = store::alerts::get(&state.db, id).await?;
    if !a.is_active() {
        return Ok(None);
    }
    resolve(state, &a.dedup_key).await
}

fn log_failure<T>(r: store::Result<T>, what: &str) {
    if let Err(e) = r {
        tracing::error!(error = %e, "{what} failed");
    }
}

/// Which of the alerts a hello can settle are open for the host: read once
/// per hello, so a host with none (the usual case) costs one indexed read
/// instead of one per alert kind. A failed read counts them all open (the
/// resolves then look for themselves, as before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOnHello {
    pub host_offline: bool,
    pub update_failed: bool,
    pub restic_missing: bool,
}

impl OpenOnHello {
    pub const ALL: OpenOnHello = OpenOnHello {
        host_offline: true,
        update_failed: true,
        restic_missing: true,
    };
}

impl OpenOnHello {
    pub const NONE: OpenOnHello = OpenOnHello {
        host_offline: false,
        update_failed: false,
        restic_missing: false,
    };
}

/// Reads only for a host the in-memory record (`agents::marks`) says may
/// have one; a read that finds none clears the host's mark.
pub async fn open_on_hello(state: &AppState, host_id: i64) -> OpenOnHello {
    let seen = state.marks.seen(Mark::Alerts, host_id);
    if !seen.maybe {
        return OpenOnHello::NONE;
    }
    let keys = [
        host_offline_key(host_id),
        update_failed_key(host_id),
        health::restic_missing_key(host_id),
    ];
    match store::alerts::active_among(&state.db, &keys).await {
        Ok(open) => {
            if open.is_empty() {
                state.marks.settled(Mark::Alerts, host_id, seen);
            }
            OpenOnHello {
                host_offline: open.contains(&keys[0]),
                update_failed: open.contains(&keys[1]),
                restic_missing: open.contains(&keys[2]),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, host_id, "reading a host's open alerts failed");
            OpenOnHello::ALL
        }
    }
}

/// Called once a host's hello is recorded: it is back, so `host_offline`
/// resolves. Never fails the hello.
pub async fn on_hello(state: &AppState, host_id: i64) {
    log_failure(
        resolve(state, &host_offline_key(host_id)).await,
        "resolving host_offline on hello",
    );
}

/// An agent update failed (timeout, wrong version, rollback, agent error).
pub async fn raise_update_failed(state: &AppState, host_id: i64, job_id: i64, reason: &str) {
    let name = match store::hosts::get(&state.db, host_id).await {
        Ok(h) => h.name,
        Err(_) => format!("#{host_id}"),
    };
    let message = format!("agent update on {name} failed (job {job_id}): {reason}");
    log_failure(
        raise(
            state,
            UPDATE_FAILED,
            &update_failed_key(host_id),
            Some(host_id),
            Severity::Warning,
            &message,
        )
        .await,
        "raising update_failed",
    );
}

/// A later update of the host succeeded.
pub async fn resolve_update_failed(state: &AppState, host_id: i64) {
    log_failure(
        resolve(state, &update_failed_key(host_id)).await,
        "resolving update_failed",
    );
}

/// A rolling fleet update stopped on a failure.
pub async fn raise_fleet_update_halted(state: &AppState, fleet_update_id: i64, reason: &str) {
    let message = format!("fleet update {fleet_update_id} halted: {reason}");
    log_failure(
        raise(
            state,
            FLEET_UPDATE_HALTED,
            &fleet_update_halted_key(fleet_update_id),
            None,
            Severity::Warning,
            &message,
        )
        .await,
        "raising fleet_update_halted",
    );
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub raised: usize,
    pub resolved: usize,
}

/// One pass of the periodic checks: backup health (`backup_stale`,
/// `restic_missing`, see `health`) and `host_offline`: raises for enrolled
/// hosts offline longer than `offline_alert_after`, and resolves alerts of
/// hosts that are online again (a safety net for a hello that raced this
/// sweep).
pub async fn sweep_once(state: &AppState) -> store::Result<Swept> {
    // Both run even if one fails.
    let offline = offline_sweep(state).await;
    let health = health::sweep(state).await;
    let (offline, health) = (offline?, health?);
    Ok(Swept {
        raised: offline.raised + health.raised,
        resolved: offline.resolved + health.resolved,
    })
}

async fn offline_sweep(state: &AppState) -> store::Result<Swept> {
    let now = state.clock.now_ms();
    let after = i64::try_from(state.settings.offline_alert_after.as_millis()).unwrap_or(i64::MAX);
    let mut swept = Swept::default();
    let active = store::alerts::active_host_ids(&state.db, HOST_OFFLINE).await?;
    for id in store::alerts::online_among(&state.db, &active).await? {
        if resolve(state, &host_offline_key(id)).await?.is_some() {
            swept.resolved += 1;
        }
    }
    // Until this server has been up that long, "offline" would count its
    // own downtime: every host would alert at once after a long restart.
    if now.saturating_sub(state.alerts.started_at) < after {
        return Ok(swept);
    }
    let active: HashSet<i64> = active.into_iter().collect();
    for h in store::alerts::hosts_offline_since(&state.db, now.saturating_sub(after)).await? {
        if active.contains(&h.id) {
            continue;
        }
        let message = format!(
            "host {} has been offline since {}",
            h.name,
            clock::rfc3339(h.last_seen_at)
        );
        let r = raise(
            state,
            HOST_OFFLINE,
            &host_offline_key(h.id),
            Some(h.id),
            Severity::Critical,
            &message,
        )
        .await?;
        if r.is_new() {
            swept.raised += 1;
        }
    }
    Ok(swept)
}

/// Runs `sweep_once` every `alert_sweep_interval`.
pub fn spawn_sweeper(state: AppState) {
    tokio::spawn(async move {
        let every = state
            .settings
            .alert_sweep_interval
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match sweep_once(&state).await {
                Ok(s) if s != Swept::default() => {
                    tracing::debug!(raised = s.raised, resolved = s.resolved, "alert sweep");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "alert sweep failed"),
            }
        }
    });
}

/// Active and resolved counts, for pages.
pub async fn counts(db: &DatabaseConnection) -> store::Result<(u64, u64)> {
    Ok((
        store::alerts::count(db, Some(AlertState::Active)).await?,
        store::alerts::count(db, Some(AlertState::Resolved)).await?,
    ))
}
