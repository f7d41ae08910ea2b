//! The backup scheduler: keeps the stored next run of every (plan, host) a
//! plan covers and of every repository's maintenance, sleeps until the
//! earliest one (woken early when plans, labels, hosts or repositories
//! change), and turns what is due into queued jobs. Runs on its own actix
//! arbiter like the fleet worker; its effects go through [`SchedulerOps`].
//!
//! Rules (RESTIC.md "Scheduling"):
//! - each host's run is offset by a stable splay in `[0, splay_secs)`
//!   derived from (plan id, host id);
//! - a due run queues a `backup` (`actor_kind: schedule`); an offline host's
//!   job waits `queued` and runs when it connects;
//! - if the plan's previous backup on that host is still queued at the next
//!   due time it becomes `skipped` ("superseded by the next run") and the new
//!   one queues; if it is running, the new one is `skipped` ("previous run
//!   still running");
//! - a run is moved to its next time strictly after *now* as it fires, so a
//!   server that was down across several due times runs each (plan, host)
//!   once, not once per missed time;
//! - maintenance: per plan with a retention a `forget` (`--tag rm-plan:<id>
//!   --group-by host,paths`), then `prune` if enabled, then `check` when due,
//!   each its own job, on the repository's maintenance host (shared) or every
//!   host using it (local), in the server's time zone.
use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use chrono_tz::Tz;
use sea_orm::{DatabaseConnection, TransactionTrait};

use super::{
    Restic,
    jobs::{default_hosts_in, repository_options},
    plans::{backup_options, check_due, forget_options, retention_plans},
    schedule::{self, Schedule},
    scope,
};
use crate::{
    agents::marks::{HostMarks, Mark},
    state::AppState,
    store::{
        self, Page,
        gate::WriteGate,
        jobs::{ActorKind, Job, JobKind, JobStatus, NewResticJob, Outcome},
        plans::{NewSchedule, Plan, ScheduleRow},
        repositories::Repository,
    },
};

pub const SUPERSEDED: &str = "superseded by the next run";
pub const PREVIOUS_RUNNING: &str = "previous run still running";

/// Longest sleep: a safety net for a lost wake-up or a clock jump, not a poll.
const MAX_SLEEP_MS: i64 = 60_000;

/// What the scheduler needs from the rest of the server; faked in tests.
pub trait SchedulerOps: Send + Sync + 'static {
    fn db(&self) -> &DatabaseConnection;
    fn now_ms(&self) -> i64;
    /// The server's time zone (`--timezone`).
    fn timezone(&self) -> Tz;
    /// Jobs were queued: the dispatcher should look at them.
    fn queued(&self, jobs: &[Job]) -> impl Future<Output = ()> + Send;
    /// The record of hosts with live jobs (held across each job's write).
    fn marks(&self) -> &Arc<HostMarks>;
    /// Turns at SQLite's write lock (`store::gate`); none in tests.
    fn write_gate(&self) -> Option<&WriteGate> {
        None
    }
}

pub struct StateOps(pub AppState);

impl SchedulerOps for StateOps {
    fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }
    fn now_ms(&self) -> i64 {
        self.0.clock.now_ms()
    }
    fn timezone(&self) -> Tz {
        self.0.settings.timezone
    }
    fn marks(&self) -> &Arc<HostMarks> {
        &self.0.marks
    }
    fn write_gate(&self) -> Option<&WriteGate> {
        Some(&self.0.write_gate)
    }
    async fn queued(&self, jobs: &[Job]) {
        for j in jobs {
            tracing::info!(job_id = j.id, host_id = j.host_id, kind = %j.kind, plan_id = j.plan_id, "scheduled job queued");
        }
        if !jobs.is_empty() {
            self.0.restic.wake();
        }
    }
}

/// Starts the scheduler on its own arbiter (a plain task without an actix
/// System), with its own database pool on its own runtime.
pub fn spawn(state: AppState) {
    let restic = state.restic.clone();
    let fut = async move {
        let db = loop {
            match crate::db::connect(&state.settings.database_url).await {
                Ok(db) => break db,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "scheduler cannot reach the database; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        let state = AppState { db, ..state };
        worker(Arc::new(StateOps(state)), restic).await
    };
    if actix_rt::System::try_current().is_some() {
        actix_rt::Arbiter::new().spawn(fut);
    } else {
        tokio::spawn(fut);
    }
}

/// Runs a pass, then sleeps until the earliest stored run or a wake-up.
pub async fn worker<O: SchedulerOps>(ops: Arc<O>, restic: Arc<Restic>) {
    loop {
        let wait = match pass(&*ops).await {
            Ok(Some(t)) => (t - ops.now_ms()).clamp(0, MAX_SLEEP_MS),
            Ok(None) => MAX_SLEEP_MS,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass failed; retrying");
                5_000
            }
        };
        tokio::select! {
            () = restic.scheduler.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
        }
    }
}

/// One pass: reconcile the stored runs with plans and hosts, queue what is
/// due. Returns the earliest stored run left. Public for tests.
pub async fn pass<O: SchedulerOps>(ops: &O) -> store::Result<Option<i64>> {
    sync(ops).await?;
    fire_due(ops).await?;
    maintain_due(ops).await?;
    store::plans::earliest(ops.db()).await
}

/// A stable offset in `[0, splay_secs)` seconds for (plan, host), in ms.
pub fn splay_ms(plan_id: i64, host_id: i64, splay_secs: i32) -> i64 {
    if splay_secs <= 1 {
        return 0;
    }
    // splitmix64: the same offset on every server and every day.
    let mut x = (plan_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (host_id as u64);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % splay_secs as u64) as i64 * 1000
}

/// The first run strictly after `now`, splay included.
pub fn next_run(s: &Schedule, tz: Tz, splay: i64, now: i64) -> Option<i64> {
    s.next_after(now - splay, tz).map(|t| t + splay)
}

fn parsed(plan: &Plan, server_tz: Tz) -> Option<(Schedule, Tz)> {
    let s = schedule::parse(&plan.schedule).ok()?;
    let tz = schedule::parse_tz(&plan.timezone).unwrap_or(server_tz);
    Some((s, tz))
}

fn maintenance_basis(repo: &Repository, tz: Tz) -> String {
    format!("{}|{}", repo.maintenance_schedule, tz.name())
}

async fn all_repositories(db: &DatabaseConnection) -> store::Result<Vec<Repository>> {
    let mut out = Vec::new();
    loop {
        let page =
            store::repositories::list(db, Page::new(Some(Page::MAX), Some(out.len() as u64)))
                .await?;
        let n = page.len();
        out.extend(page);
        if n < Page::MAX as usize {
            return Ok(out);
        }
    }
}

/// Brings the stored runs in line with plans, coverage and repositories:
/// new (plan, host) pairs get their next run, pairs no longer covered (or
/// of a disabled plan) are dropped, a changed schedule, zone or splay
/// recomputes the next run.
pub async fn sync<O: SchedulerOps>(ops: &O) -> store::Result<()> {
    let db = ops.db();
    let now = ops.now_ms();
    let plans = store::plans::list_all(db).await?;
    let hosts = store::hosts::list_all(db, &Default::default()).await?;
    let mut existing: HashMap<(i64, i64), ScheduleRow> = store::plans::schedules(db)
        .await?
        .into_iter()
        .map(|r| ((r.plan_id, r.host_id), r))
        .collect();
    // New pairs are stored in batches after the walk (a plan over 10,000
    // hosts is 20 transactions, not 10,000 commits).
    let mut new_rows = Vec::new();
    for plan in plans.iter().filter(|p| p.enabled) {
        let Some((s, tz)) = parsed(plan, ops.timezone()) else {
            tracing::warn!(
                plan_id = plan.id,
                "plan schedule does not parse; not scheduled"
            );
            continue;
        };
        let basis = plan.basis();
        for h in hosts.iter().filter(|h| plan.covers(h.id, &h.labels)) {
            let next = next_run(&s, tz, splay_ms(plan.id, h.id, plan.splay_secs), now);
            match (existing.remove(&(plan.id, h.id)), next) {
                (None, Some(n)) => new_rows.push(NewSchedule {
                    plan_id: plan.id,
                    host_id: h.id,
                    next_run_at: n,
                    basis: basis.clone(),
                }),
                (Some(r), Some(n)) if r.basis != basis => {
                    store::plans::move_schedule(db, r.id, r.next_run_at, n, &basis).await?;
                }
                (Some(r), None) => store::plans::delete_schedules(db, &[r.id]).await?,
                _ => {}
            }
        }
    }
    store::plans::insert_schedules(db, &new_rows, now).await?;
    let gone: Vec<i64> = existing.values().map(|r| r.id).collect();
    store::plans::delete_schedules(db, &gone).await?;

    let tz = ops.timezone();
    let stored: HashMap<i64, String> = store::plans::maintenance(db)
        .await?
        .into_iter()
        .map(|m| (m.repository_id, m.basis))
        .collect();
    for repo in all_repositories(db).await? {
        let basis = maintenance_basis(&repo, tz);
        if stored.get(&repo.id) == Some(&basis) {
            continue;
        }
        let Ok(s) = schedule::parse(&repo.maintenance_schedule) else {
            continue;
        };
        if let Some(n) = s.next_after(now, tz) {
            store::plans::set_maintenance(db, repo.id, n, &basis).await?;
        }
    }
    Ok(())
}

fn new_job(
    repo: &Repository,
    host_id: i64,
    kind: JobKind,
    plan_id: Option<i64>,
    options: &agent::wire::ResticOptions,
    actor: &str,
) -> NewResticJob {
    NewResticJob {
        host_id,
        kind,
        actor_kind: ActorKind::Schedule,
        actor_id: None,
        actor_name: actor.to_string(),
        repository_id: repo.id,
        plan_id,
        options: serde_json::to_string(options).unwrap_or_else(|_| "{}".into()),
        scope: scope(repo.id, repo.local, host_id),
    }
}

/// Queues a backup for every due (plan, host) under the overlap rules and
/// moves each to its next run after now. Returns the jobs queued.
pub async fn fire_due<O: SchedulerOps>(ops: &O) -> store::Result<Vec<Job>> {
    let db = ops.db();
    let now = ops.now_ms();
    let due = store::plans::due_schedules(db, now).await?;
    if due.is_empty() {
        return Ok(vec![]);
    }
    let plans: HashMap<i64, Plan> = store::plans::list_all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    // The hosts of every due row in a few reads, not one per row.
    let mut host_ids: Vec<i64> = due.iter().map(|r| r.host_id).collect();
    host_ids.sort_unstable();
    host_ids.dedup();
    let hosts = store::hosts::get_many(db, &host_ids).await?;
    let mut repos: HashMap<i64, Option<Repository>> = HashMap::new();
    // Each plan's schedule parsed once, and its next run worked out once per
    // splay (with splay 0, once for every host it covers).
    let mut schedules: HashMap<i64, Option<(Schedule, Tz)>> = HashMap::new();
    let mut nexts: HashMap<(i64, i64), Option<i64>> = HashMap::new();
    let mut gone = Vec::new();
    let mut ready = Vec::with_capacity(due.len());
    for row in due {
        let Some(plan) = plans.get(&row.plan_id).filter(|p| p.enabled) else {
            gone.push(row.id);
            continue;
        };
        let host = hosts.get(&row.host_id);
        let repo = match repos.get(&plan.repository_id) {
            Some(r) => r.clone(),
            None => {
                let r = store::repositories::get(db, plan.repository_id).await.ok();
                repos.insert(plan.repository_id, r.clone());
                r
            }
        };
        let schedule = schedules
            .entry(plan.id)
            .or_insert_with(|| parsed(plan, ops.timezone()));
        let (Some(host), Some(repo), Some((s, tz))) = (host, repo, schedule.as_ref()) else {
            gone.push(row.id);
            continue;
        };
        let splay = splay_ms(plan.id, host.id, plan.splay_secs);
        let next = *nexts
            .entry((plan.id, splay))
            .or_insert_with(|| next_run(s, *tz, splay, now));
        let Some(next) = next else {
            gone.push(row.id);
            continue;
        };
        ready.push((row, plan, host, repo, next));
    }
    store::plans::delete_schedules(db, &gone).await?;
    let mut queued = Vec::new();
    // A few hundred rows a transaction of a few statements, and the
    // dispatcher woken after each: in a wave it starts on the first jobs
    // while later ones are still being written, and ten thousand due rows
    // cost a few dozen writes instead of ten thousand (BENCHMARKS.md,
    // scheduling wave).
    for chunk in ready.chunks(FIRE_BATCH) {
        // Each host's next hello looks for its job (`agents::marks`).
        let _marked: Vec<_> = chunk
            .iter()
            .map(|(_, _, host, _, _)| ops.marks().guard(Mark::Jobs, host.id))
            .collect();
        let mut fired = Vec::with_capacity(chunk.len());
        // Ahead of the job writer's groups on SQLite (`store::gate`).
        let _turn = match ops.write_gate() {
            Some(g) => Some(g.urgent().await),
            None => None,
        };
        // One transaction that writes first (SQLite hands the write lock to
        // the first writer): the rows' moves, then their jobs. A row another
        // pass already moved is left alone.
        let txn = db.begin().await?;
        let moves: Vec<store::plans::Move> = chunk
            .iter()
            .map(|(row, plan, _, _, next)| (row.id, row.next_run_at, *next, plan.basis()))
            .collect();
        let moved = store::plans::move_schedules(&txn, &moves).await?;
        let chunk: Vec<_> = chunk
            .iter()
            .filter(|(row, ..)| moved.contains(&row.id))
            .collect();
        let pairs: Vec<(i64, i64)> = chunk.iter().map(|(_, p, h, ..)| (p.id, h.id)).collect();
        let mut live = store::plans::live_backups_many(&txn, &pairs).await?;
        let new_jobs: Vec<NewResticJob> = chunk
            .iter()
            .map(|(_, plan, host, repo, _)| {
                let options = backup_options(plan, &host.name);
                new_job(
                    repo,
                    host.id,
                    JobKind::Backup,
                    Some(plan.id),
                    &options,
                    "schedule",
                )
            })
            .collect();
        let jobs = store::jobs::create_restic_many(&txn, &new_jobs, now).await?;
        for ((_, plan, host, ..), job) in chunk.iter().zip(jobs) {
            let before = live.remove(&(plan.id, host.id)).unwrap_or_default();
            let before = settled(&txn, before).await?;
            if before.iter().any(|j| j.status == JobStatus::Running) {
                skip(&txn, job.id, PREVIOUS_RUNNING, now).await?;
                tracing::info!(
                    job_id = job.id,
                    plan_id = plan.id,
                    host_id = host.id,
                    "scheduled backup skipped: previous run still running"
                );
            } else {
                for old in &before {
                    skip(&txn, old.id, SUPERSEDED, now).await?;
                    tracing::info!(
                        job_id = old.id,
                        plan_id = plan.id,
                        host_id = host.id,
                        "queued backup superseded by the next run"
                    );
                }
                fired.push(job);
            }
        }
        txn.commit().await?;
        drop(_turn);
        drop(_marked);
        ops.queued(&fired).await;
        queued.extend(fired);
    }
    Ok(queued)
}

/// Due (plan, host) rows fired per transaction.
const FIRE_BATCH: usize = 256;

/// The live backups as they are once each queued one is taken for writing:
/// one the dispatcher is marking running at this moment (Postgres) is read
/// again after its commit, so it counts as running and is never superseded
/// while its agent runs it. Those that ended meanwhile drop out.
async fn settled<C: sea_orm::ConnectionTrait>(txn: &C, live: Vec<Job>) -> store::Result<Vec<Job>> {
    let mut out = Vec::with_capacity(live.len());
    for job in live {
        if job.status != JobStatus::Queued {
            out.push(job);
            continue;
        }
        store::jobs::lock_job(txn, job.id).await?;
        let again = store::jobs::get(txn, job.id).await?;
        if !again.status.is_terminal() {
            out.push(again);
        }
    }
    Ok(out)
}

async fn skip<C: sea_orm::ConnectionTrait>(
    db: &C,
    job_id: i64,
    why: &str,
    now: i64,
) -> store::Result<()> {
    let outcome = Outcome {
        error: Some(why),
        ..Outcome::default()
    };
    store::jobs::finish_with(db, job_id, None, JobStatus::Skipped, &outcome, now)
        .await
        .map(|_| ())
}

/// Queues the maintenance of every repository whose time has come and
/// moves it to its next time. Returns the jobs queued, in order.
pub async fn maintain_due<O: SchedulerOps>(ops: &O) -> store::Result<Vec<Job>> {
    let db = ops.db();
    let now = ops.now_ms();
    let tz = ops.timezone();
    let mut queued = Vec::new();
    for row in store::plans::maintenance(db).await? {
        if row.next_run_at > now {
            continue;
        }
        let Ok(repo) = store::repositories::get(db, row.repository_id).await else {
            continue;
        };
        let next = schedule::parse(&repo.maintenance_schedule)
            .ok()
            .and_then(|s| s.next_after(now, tz))
            .unwrap_or(now + 86_400_000);
        let hosts = default_hosts_in(db, &repo).await.unwrap_or_default();
        let plans = retention_plans(db, repo.id).await?;
        // Each host's next hello looks for its jobs (`agents::marks`).
        let _marked: Vec<_> = hosts
            .iter()
            .map(|h| ops.marks().guard(Mark::Jobs, *h))
            .collect();
        let txn = db.begin().await?;
        if !store::plans::move_maintenance(
            &txn,
            repo.id,
            row.next_run_at,
            next,
            &maintenance_basis(&repo, tz),
        )
        .await?
        {
            txn.rollback().await?;
            continue;
        }
        let mut made = Vec::new();
        for host in hosts {
            let sc = scope(repo.id, repo.local, host);
            if store::plans::live_maintenance(&txn, &sc).await? > 0 {
                tracing::info!(
                    repository_id = repo.id,
                    host_id = host,
                    "maintenance still running from last time; not queued again"
                );
                continue;
            }
            for plan in &plans {
                let o = forget_options(plan, None);
                made.push(
                    store::jobs::create_restic(
                        &txn,
                        &new_job(
                            &repo,
                            host,
                            JobKind::Forget,
                            Some(plan.id),
                            &o,
                            "maintenance",
                        ),
                        now,
                    )
                    .await?,
                );
            }
            if repo.prune {
                let o = repository_options(JobKind::Prune, &repo, false);
                made.push(
                    store::jobs::create_restic(
                        &txn,
                        &new_job(&repo, host, JobKind::Prune, None, &o, "maintenance"),
                        now,
                    )
                    .await?,
                );
            }
            if check_due(&repo, now) {
                let o = repository_options(JobKind::Check, &repo, false);
                made.push(
                    store::jobs::create_restic(
                        &txn,
                        &new_job(&repo, host, JobKind::Check, None, &o, "maintenance"),
                        now,
                    )
                    .await?,
                );
            }
        }
        txn.commit().await?;
        queued.extend(made);
    }
    ops.queued(&queued).await;
    Ok(queued)
}

#[cfg(test)]
mod tests;
