//! What agents report about restic: the restic facts of a hello and the
//! jobs it no longer runs, `job.progress` (kept in memory only, never
//! written per message), `job.snapshots` parts, and what a restic job's end
//! implies for the index (the job lifecycle in `crate::jobs` records the
//! end and calls [`on_finished`]). Every job end wakes the dispatcher.
use agent::wire::{
    self, BackupResult, Envelope, ForgetResult, Hello, JobFinished, JobProgress, JobSnapshots,
    SnapshotInfo,
};

use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};

use super::{Restic, lock, scope_host};
use crate::{
    jobs::LiveEvent,
    state::AppState,
    store::{
        self,
        jobs::{Job, JobKind, JobStatus, Outcome},
        snapshots::{NewSnapshot, Snapshot},
    },
    text,
};

/// The reason for a running job the agent no longer knows after it
/// reconnected.
pub const AGENT_RESTARTED: &str =
    "the agent restarted during the job: run it again (its restic process ended with the agent)";

/// Most snapshots one listing may collect before it is refused.
const MAX_LISTING: usize = 1_000_000;

/// A hello's recent finishes and running jobs (its restic facts were
/// stored with the hello itself). `restic_missing_open`: the host's
/// `restic_missing` alert was open when the hello arrived.
/// `may_have_jobs` false (the host has no live job, `agents::marks`) skips
/// the read of its live restic jobs. Returns false when the host surely has
/// none.
pub async fn on_hello(
    state: &AppState,
    host_id: i64,
    hello: &Hello,
    restic_missing_open: bool,
    may_have_jobs: bool,
) -> bool {
    // restic_missing can only hold for a restic-capable agent without
    // restic; otherwise there is at most an open alert to resolve.
    let may_be_missing = hello.running_jobs.is_some() && hello.restic_version.is_none();
    if may_be_missing || restic_missing_open {
        crate::alerts::health::on_hello(state, host_id).await;
    }
    for f in hello.recent_finished.iter().take(64) {
        crate::jobs::agent_finished(state, host_id, f).await;
    }
    let running = hello.running_jobs.clone().unwrap_or_default();
    // Runs the server already ended (cancelled while the agent was away):
    // the agent stops them now.
    for id in running.iter().take(64) {
        if let Ok(j) = store::jobs::get(&state.db, *id).await
            && j.host_id == host_id
            && j.status.is_terminal()
        {
            let cancel = wire::CommandCancel { job_id: *id };
            let _ = state
                .hub
                .send(host_id, wire::Message::envelope(&cancel).to_text());
        }
    }
    // Wake the dispatcher only when this host has restic work waiting.
    let live = if may_have_jobs {
        store::jobs::live_restic_on_host(&state.db, host_id).await
    } else {
        Ok(Vec::new())
    };
    let mut found = true;
    let wake = match live {
        Ok(jobs) => {
            found = !jobs.is_empty();
            let mut wake = jobs.iter().any(|j| j.status == JobStatus::Queued);
            let orphans = jobs
                .into_iter()
                .filter(|j| j.status == JobStatus::Running && !running.contains(&j.id));
            for job in orphans {
                if job.started_at.is_none() {
                    // Sent but never started: the command was lost with the
                    // old connection. Queue it again.
                    if let Ok(true) = store::jobs::requeue(&state.db, job.id).await {
                        wake = true;
                        tracing::info!(
                            job_id = job.id,
                            host_id,
                            "restic job never started; queued again"
                        );
                    }
                    continue;
                }
                let outcome = Outcome {
                    error: Some(AGENT_RESTARTED),
                    error_kind: Some("agent_restarted"),
                    ..Outcome::default()
                };
                if let Err(e) =
                    crate::jobs::finish_with(state, job.id, JobStatus::Failed, &outcome).await
                {
                    tracing::error!(error = %e, job_id = job.id, "failing an orphaned job failed");
                }
            }
            wake
        }
        Err(e) => {
            tracing::error!(error = %e, host_id, "reading running restic jobs failed");
            true
        }
    };
    if wake {
        state.restic.wake();
    }
    found
}

/// `job.progress` and `job.snapshots`.
pub async fn agent_message(state: &AppState, host_id: i64, env: &Envelope) {
    match env.kind.as_str() {
        wire::JOB_PROGRESS => {
            let Ok(p) = env.payload::<JobProgress>() else {
                return;
            };
            // Ownership from the database would cost a read per message;
            // the progress is only kept for a job this host runs.
            if !owns_running(state, host_id, p.job_id).await {
                return;
            }
            state.restic.set_progress(p.clone());
            state.live.publish(p.job_id, LiveEvent::Progress(p));
        }
        wire::JOB_SNAPSHOTS => {
            let Ok(part) = env.payload::<JobSnapshots>() else {
                return;
            };
            if !owns_running(state, host_id, part.job_id).await {
                return;
            }
            let mut parts = lock(&state.restic.parts);
            let list = parts.entry(part.job_id).or_default();
            if list.len() + part.snapshots.len() <= MAX_LISTING {
                list.extend(part.snapshots);
            }
        }
        _ => {}
    }
}

/// Whether `job_id` is a running restic job of `host_id`. Answered from
/// memory after the first time, so progress (once a second per job) costs
/// no database read.
async fn owns_running(state: &AppState, host_id: i64, job_id: i64) -> bool {
    if let Some(owner) = lock(&state.restic.owners).get(&job_id) {
        return *owner == host_id;
    }
    let running = matches!(store::jobs::get(&state.db, job_id).await,
        Ok(j) if j.host_id == host_id && j.status == JobStatus::Running && j.kind.is_restic());
    if running {
        lock(&state.restic.owners).insert(job_id, host_id);
    }
    running
}

/// A restic job ended (the job lifecycle calls this once per job, however
/// it ended, after the end and [`record_end`]'s writes are committed and
/// before the end is published): the in-memory progress goes, the
/// dispatcher wakes and the plans learn of it (`health_recorded`: its
/// health row was refreshed by [`record_end`]).
pub async fn on_finished(state: &AppState, job: &Job, health_recorded: bool) {
    state.restic.clear(job.id);
    state.restic.wake();
    super::plans::on_job_end(state, job, health_recorded).await;
}

/// What a restic job's successful end writes beyond its row, in `txn` (the
/// transaction that records the end): a backup's snapshot goes into the
/// index, a forget's removals out of it, a listing replaces it, a check
/// dates the repository. Written under a savepoint: if it fails, the end is
/// still recorded (the index is re-synced by the next `snapshots` job) and
/// the failure logged.
///
/// A plan's backup (succeeded or failed) also refreshes its fleet health
/// row here, under a savepoint of its own, rather than in a transaction of
/// its own after the end ([`on_finished`]): in a wave each end would
/// otherwise cost a second write. Returns whether it did; if it failed,
/// [`on_finished`] tries again.
pub async fn record_end(
    txn: &DatabaseTransaction,
    state: &AppState,
    job: &Job,
    m: &JobFinished,
) -> bool {
    if job.status == JobStatus::Succeeded {
        let res = async {
            let sp = txn.begin().await?;
            apply(&sp, state, job, m).await?;
            sp.commit().await?;
            store::Result::Ok(())
        }
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, job_id = job.id, "updating the snapshot index failed");
        }
    }
    let (JobKind::Backup, Some(plan_id)) = (job.kind, job.plan_id) else {
        return false;
    };
    let res = async {
        let sp = txn.begin().await?;
        store::health::refresh(&sp, plan_id, job.host_id).await?;
        sp.commit().await?;
        store::Result::Ok(())
    }
    .await;
    match res {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, job_id = job.id, "refreshing the plan's health with the end failed; refreshing after it");
            false
        }
    }
}

async fn apply(
    db: &DatabaseTransaction,
    state: &AppState,
    job: &Job,
    m: &JobFinished,
) -> store::Result<()> {
    let Some(repository_id) = job.repository_id else {
        return Ok(());
    };
    let repo = store::repositories::get(db, repository_id).await?;
    let scope_host_id = scope_host(repo.local, job.host_id);
    match job.kind {
        JobKind::Backup => {
            let Some(r) = m
                .result
                .clone()
                .and_then(|v| serde_json::from_value::<BackupResult>(v).ok())
            else {
                return Ok(());
            };
            if r.snapshot_id.is_empty() {
                return Ok(());
            }
            let info = r.snapshot.clone().unwrap_or_else(|| SnapshotInfo {
                id: r.snapshot_id.clone(),
                short_id: r.snapshot_id.chars().take(8).collect(),
                time: crate::clock::rfc3339(state.clock.now_ms()),
                hostname: String::new(),
                paths: vec![],
                tags: vec![],
            });
            let mut snap = snapshot(db, &info, Some(job.host_id)).await;
            snap.job_id = Some(job.id);
            snap.plan_id = job.plan_id.or(snap.plan_id);
            snap.files_new = Some(r.files_new as i64);
            snap.files_changed = Some(r.files_changed as i64);
            snap.data_added = Some(r.data_added as i64);
            snap.total_bytes_processed = Some(r.total_bytes_processed as i64);
            snap.duration_ms = Some((r.duration_secs * 1000.0) as i64);
            store::snapshots::upsert(
                db,
                &NewSnapshot {
                    repository_id,
                    scope_host_id,
                    snap,
                },
            )
            .await
        }
        JobKind::Forget => {
            let Some(r) = m
                .result
                .clone()
                .and_then(|v| serde_json::from_value::<ForgetResult>(v).ok())
            else {
                return Ok(());
            };
            store::snapshots::remove(db, repository_id, scope_host_id, &r.removed)
                .await
                .map(|_| ())
        }
        JobKind::Snapshots => {
            // Read, not taken: a group that fails is recorded again, and
            // the parts go when the job's end is run (`Restic::clear`).
            let listing = lock(&state.restic.parts)
                .get(&job.id)
                .cloned()
                .unwrap_or_default();
            let mut rows = Vec::with_capacity(listing.len());
            for info in &listing {
                let host = if repo.local { Some(job.host_id) } else { None };
                rows.push(NewSnapshot {
                    repository_id,
                    scope_host_id,
                    snap: snapshot(db, info, host).await,
                });
            }
            store::snapshots::replace(db, repository_id, scope_host_id, None, &rows).await
        }
        JobKind::Check => {
            store::repositories::set_last_check(db, repository_id, state.clock.now_ms()).await
        }
        _ => Ok(()),
    }
}

/// An index row from restic's listing. The host is the given one, else the
/// host whose restic-manager name is the snapshot's hostname (backups run
/// with `--host <name>`).
async fn snapshot<C: ConnectionTrait>(db: &C, info: &SnapshotInfo, host: Option<i64>) -> Snapshot {
    let host_id = match host {
        Some(h) => Some(h),
        None => store::hosts::id_by_name(db, &info.hostname)
            .await
            .ok()
            .flatten(),
    };
    let plan_id = info
        .tags
        .iter()
        .find_map(|t| t.strip_prefix("rm-plan:").and_then(|p| p.parse().ok()));
    let time = chrono::DateTime::parse_from_rfc3339(&info.time)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    Snapshot {
        repository_id: 0,
        host_id,
        plan_id,
        snapshot_id: text::one_line(&info.id, 128),
        short_id: text::one_line(
            if info.short_id.is_empty() {
                &info.id[..info.id.len().min(8)]
            } else {
                &info.short_id
            },
            32,
        ),
        time,
        hostname: text::one_line(&info.hostname, 253),
        paths: info
            .paths
            .iter()
            .take(1000)
            .map(|p| text::agent_text(p, 4096))
            .collect(),
        tags: info
            .tags
            .iter()
            .take(100)
            .map(|t| text::one_line(t, 256))
            .collect(),
        job_id: None,
        files_new: None,
        files_changed: None,
        data_added: None,
        total_bytes_processed: None,
        duration_ms: None,
    }
}

impl Restic {
    /// The progress of every job in `ids` that has one (for job lists).
    pub fn progress_of(&self, ids: &[i64]) -> Vec<(i64, JobProgress)> {
        let map = lock(&self.progress);
        ids.iter()
            .filter_map(|id| map.get(id).map(|p| (*id, p.clone())))
            .collect()
    }
}
