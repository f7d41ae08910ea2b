//! Data retention: a purge shortly after start and then every day
//! (`--retention-days`) removes old job logs, finished jobs, audit rows,
//! resolved alerts with their webhook deliveries and spent enrollment
//! tokens, in small batches (`store::retention`), then lets SQLite shrink
//! its file. Each purge is recorded as a `retention.purge` audit row, which
//! is what the settings page shows as the last purge. Live jobs, open
//! alerts and each host's latest job of each kind and plan are never
//! touched.
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    audit,
    state::AppState,
    store::{self, retention as q},
};

const DAY_MS: i64 = 86_400_000;
/// Used or expired enrollment tokens are kept this long (fixed).
pub const TOKEN_KEEP_MS: i64 = DAY_MS;
/// The audit action a purge is recorded under.
pub const AUDIT_ACTION: &str = "retention.purge";
/// Free pages handed back to the file system per incremental-vacuum step.
const VACUUM_STEP_PAGES: u64 = 1000;

/// Rows one purge removed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub job_logs: u64,
    pub jobs: u64,
    pub audit: u64,
    pub alerts: u64,
    pub deliveries: u64,
    pub enrollment_tokens: u64,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.job_logs
            + self.jobs
            + self.audit
            + self.alerts
            + self.deliveries
            + self.enrollment_tokens
    }
}

/// One finished purge: when it started, what it removed, how long it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub at: i64,
    #[serde(flatten)]
    pub purged: Purged,
    pub duration_ms: u64,
}

/// Runs the purge `first_delay` after start and then every `interval`.
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        tokio::time::sleep(state.settings.retention_first_delay).await;
        loop {
            if let Err(e) = purge_now(&state).await {
                tracing::warn!(error = %e, "the retention purge failed; it runs again at the next interval");
            }
            tokio::time::sleep(state.settings.retention_interval).await;
        }
    });
}

/// The moment before which records of a kind kept `days` go; None keeps
/// them forever.
fn cutoff(now: i64, days: u32) -> Option<i64> {
    (days > 0).then(|| now - i64::from(days) * DAY_MS)
}

/// Repeats a one-batch delete until a batch comes back short.
async fn drain<F, Fut>(mut batch: F) -> store::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = store::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < q::BATCH {
            return Ok(total);
        }
        // Let other writers in between two batches.
        tokio::task::yield_now().await;
    }
}

/// Purges now (the daily worker calls it; tests call it directly) and
/// records the purge. "Now" is the state's clock.
pub async fn purge_now(state: &AppState) -> store::Result<Report> {
    let db = &state.db;
    let r = state.settings.retention;
    let started = Instant::now();
    let now = state.clock.now_ms();
    let mut p = Purged::default();

    let (first, last) = q::job_id_range(db).await?;
    if let Some(cut) = cutoff(now, r.job_logs) {
        let mut after = first - 1;
        while after < last {
            let ids = q::jobs_with_old_logs(db, cut, after).await?;
            after += q::WINDOW;
            for chunk in ids.chunks(q::JOBS_PER_LOG_BATCH) {
                p.job_logs += drain(|| q::logs_of_batch(db, chunk)).await?;
            }
        }
    }
    if let Some(cut) = cutoff(now, r.jobs) {
        let mut after = first - 1;
        while after < last {
            let ids = q::purgeable_jobs(db, cut, after).await?;
            after += q::WINDOW;
            if ids.is_empty() {
                continue;
            }
            for chunk in ids.chunks(q::JOBS_PER_LOG_BATCH) {
                p.job_logs += drain(|| q::logs_of_batch(db, chunk)).await?;
            }
            p.jobs += q::delete_jobs(db, &ids).await?;
            tokio::task::yield_now().await;
        }
    }
    if let Some(cut) = cutoff(now, r.audit) {
        p.audit += drain(|| q::audit_batch(db, cut)).await?;
    }
    if let Some(cut) = cutoff(now, r.alerts) {
        p.deliveries += drain(|| q::deliveries_batch(db, cut)).await?;
        p.alerts += drain(|| q::alerts_batch(db, cut)).await?;
    }
    let token_cut = now - TOKEN_KEEP_MS;
    p.enrollment_tokens += drain(|| q::tokens_batch(db, token_cut)).await?;

    // The rows are gone either way; a file that did not shrink now does
    // at the next purge.
    if state.settings.is_sqlite()
        && let Err(e) = shrink_sqlite(state).await
    {
        tracing::warn!(error = %e, "giving freed SQLite pages back to the file system failed");
    }

    let report = Report {
        at: now,
        purged: p,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    tracing::info!(
        job_logs = p.job_logs,
        jobs = p.jobs,
        audit = p.audit,
        alerts = p.alerts,
        deliveries = p.deliveries,
        enrollment_tokens = p.enrollment_tokens,
        duration_ms = report.duration_ms,
        retention = %r,
        "retention purge done"
    );
    let mut details = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    if let Some(o) = details.as_object_mut() {
        o.insert("retention".into(), json!(r.to_string()));
    }
    audit::record(
        db,
        state.clock.now_ms(),
        &audit::Actor::named("system", ""),
        audit::Entry::new(AUDIT_ACTION, "retention", "", details),
    )
    .await?;
    Ok(report)
}

/// Gives the pages the purge freed back to the file system, a step at a
/// time so no single statement holds the write lock for long.
async fn shrink_sqlite(state: &AppState) -> store::Result<()> {
    let db = &state.db;
    let mut left = i64::MAX;
    // Bounded: a concurrent writer may keep freeing pages.
    for _ in 0..10_000 {
        let now_left = q::sqlite_incremental_vacuum(db, VACUUM_STEP_PAGES).await?;
        if now_left == 0 || now_left >= left {
            break;
        }
        left = now_left;
        tokio::task::yield_now().await;
    }
    q::sqlite_checkpoint(db).await
}

/// The latest purge, from its audit row; None before the first one.
pub async fn last_purge<C: sea_orm::ConnectionTrait>(db: &C) -> store::Result<Option<Report>> {
    let rows = store::audit::list(
        db,
        &store::audit::AuditFilter {
            action: Some(AUDIT_ACTION.into()),
            actor: None,
        },
        store::Page::new(Some(1), None),
    )
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|e| serde_json::from_value(e.details).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_days_keeps_forever() {
        assert_eq!(cutoff(10 * DAY_MS, 0), None);
        assert_eq!(cutoff(10 * DAY_MS, 3), Some(7 * DAY_MS));
    }
}
