//! Plan rules: validation of what an admin submits (`input`; each message names the
//! field), which hosts a plan covers, the backup and forget options a plan
//! gives restic, running a plan now, and what a finished plan job means
//! (forget after backup, the `backup_failed` and `repository_check_failed`
//! alerts). Queuing goes through `jobs::enqueue`; timing is the
//! scheduler's.
use agent::wire::ResticOptions;
use chrono_tz::Tz;
use sea_orm::ConnectionTrait;

mod input;

use input::apply;
pub use input::{PlanInput, check_labels, is_absolute};

use super::jobs::{QueueError, Requester, enqueue};
use crate::{
    alerts::{self, Severity},
    state::AppState,
    store::{
        self, StoreError,
        hosts::Host,
        jobs::{ActorKind, Job, JobKind, JobStatus},
        plans::{Plan, PlanRow},
        repositories::Repository,
    },
};

/// The tag every backup of plan `id` carries (and its forget filters by).
pub fn plan_tag(id: i64) -> String {
    format!("rm-plan:{id}")
}

/// `forget --group-by` for plan retention.
pub const GROUP_BY: &str = "host,paths";

/// Longest splay: a week.
pub const MAX_SPLAY_SECS: i64 = 7 * 86_400;

pub const BACKUP_FAILED: &str = "backup_failed";
pub const REPOSITORY_CHECK_FAILED: &str = "repository_check_failed";

pub fn backup_failed_key(host_id: i64, plan_id: i64) -> String {
    format!("{BACKUP_FAILED}:{host_id}:{plan_id}")
}
pub fn check_failed_key(repository_id: i64, host_id: i64) -> String {
    format!("{REPOSITORY_CHECK_FAILED}:{repository_id}:{host_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `invalid_input`; the message starts with the field.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueueError> for PlanError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(m) => PlanError::Invalid(m),
            QueueError::Store(s) => PlanError::Store(s),
        }
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> PlanError {
    PlanError::Invalid(format!("{field}: {why}"))
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    input: PlanInput,
    server_tz: Tz,
    now: i64,
) -> Result<Plan, PlanError> {
    for (field, given) in [
        ("name", input.name.is_some()),
        ("repository_id", input.repository_id.is_some()),
        ("paths", input.paths.is_some()),
        ("schedule", input.schedule.is_some()),
    ] {
        if !given {
            return Err(invalid(field, "is required"));
        }
    }
    let mut row = PlanRow {
        timezone: server_tz.name().to_string(),
        enabled: true,
        ..PlanRow::default()
    };
    apply(db, &mut row, input, server_tz).await?;
    Ok(store::plans::create(db, &row, now).await?)
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    id: i64,
    input: PlanInput,
    server_tz: Tz,
    now: i64,
) -> Result<Plan, PlanError> {
    let plan = store::plans::get(db, id).await?;
    let mut row = PlanRow::from(&plan);
    apply(db, &mut row, input, server_tz).await?;
    Ok(store::plans::update(db, id, &row, now).await?)
}

/// Hosts a plan covers, by name (whether or not the plan is enabled).
pub async fn covered_hosts<C: ConnectionTrait>(
    db: &C,
    plan: &Plan,
) -> Result<Vec<Host>, StoreError> {
    Ok(store::hosts::list_all(db, &Default::default())
        .await?
        .into_iter()
        .filter(|h| plan.covers(h.id, &h.labels))
        .collect())
}

/// The restic options of a plan's backup on a host.
pub fn backup_options(plan: &Plan, host_name: &str) -> ResticOptions {
    let mut tags = vec![plan_tag(plan.id)];
    tags.extend(plan.tags.iter().cloned());
    ResticOptions {
        paths: plan.paths.clone(),
        excludes: plan.excludes.clone(),
        tags,
        host: Some(host_name.to_string()),
        ..Default::default()
    }
}

/// The restic options of a plan's forget: its snapshots only (the tag),
/// grouped by host and paths, its retention; `host` narrows it to one
/// host's snapshots.
pub fn forget_options(plan: &Plan, host_name: Option<&str>) -> ResticOptions {
    ResticOptions {
        tags: vec![plan_tag(plan.id)],
        host: host_name.map(str::to_string),
        retention: Some(plan.retention.clone()),
        group_by: Some(GROUP_BY.into()),
        ..Default::default()
    }
}

/// Plans using a repository that have a retention to apply.
pub async fn retention_plans<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
) -> Result<Vec<Plan>, StoreError> {
    Ok(store::plans::using_repository(db, repository_id)
        .await?
        .into_iter()
        .filter(|p| !p.retention.is_empty())
        .collect())
}

/// `POST /api/plans/{id}/run`: one backup per covered host, or on the one
/// given (which the plan must cover).
pub async fn run_now(
    state: &AppState,
    who: &Requester,
    plan: &Plan,
    host_id: Option<i64>,
) -> Result<Vec<Job>, RunError> {
    let covered = covered_hosts(&state.db, plan).await?;
    let hosts: Vec<&Host> = match host_id {
        Some(h) => match covered.iter().find(|c| c.id == h) {
            Some(c) => vec![c],
            None => return Err(RunError::NotCovered(h)),
        },
        None => covered.iter().collect(),
    };
    if hosts.is_empty() {
        return Err(RunError::NotCovered(0));
    }
    let repo = store::repositories::get(&state.db, plan.repository_id).await?;
    let mut jobs = Vec::with_capacity(hosts.len());
    for h in hosts {
        let options = backup_options(plan, &h.name);
        jobs.push(
            enqueue(
                state,
                who,
                &repo,
                h.id,
                JobKind::Backup,
                Some(plan.id),
                &options,
            )
            .await?,
        );
    }
    Ok(jobs)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// 0: the plan covers no host at all.
    #[error("not covered")]
    NotCovered(i64),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A successful backup resolves its plan's failed and stale alerts on the
/// host; a host with none open (`agents::marks`, nearly every one) reads
/// nothing.
async fn resolve_backup_alerts(
    state: &AppState,
    host_id: i64,
    plan_id: i64,
) -> Result<(), StoreError> {
    use crate::agents::marks::{BACKUP_ALERT_KINDS, Mark};
    let seen = state.marks.seen(Mark::BackupAlerts, host_id);
    if !seen.maybe {
        return Ok(());
    }
    alerts::resolve(state, &backup_failed_key(host_id, plan_id)).await?;
    alerts::resolve(state, &alerts::health::backup_stale_key(host_id, plan_id)).await?;
    if !store::alerts::host_has_active(&state.db, host_id, &BACKUP_ALERT_KINDS).await? {
        state.marks.settled(Mark::BackupAlerts, host_id, seen);
    }
    Ok(())
}

/// What a restic job's end means beyond the job itself: alerts, and the
/// forget a plan runs after each backup. Never fails the caller.
pub async fn on_job_end(state: &AppState, job: &Job, health_recorded: bool) {
    if let Err(e) = job_end(state, job, health_recorded).await {
        tracing::error!(error = %e, job_id = job.id, "acting on a restic job's end failed");
    }
}

async fn job_end(state: &AppState, job: &Job, health_recorded: bool) -> Result<(), PlanError> {
    if let (JobKind::Backup, Some(plan_id), false) = (job.kind, job.plan_id, health_recorded) {
        // Fleet health: the (plan, host) row's last run and last success.
        store::health::refresh(&state.db, plan_id, job.host_id).await?;
    }
    match (job.kind, job.status, job.plan_id) {
        (JobKind::Backup, JobStatus::Succeeded, Some(plan_id)) => {
            // A failed alert lookup must not cost the plan its forget.
            if let Err(e) = resolve_backup_alerts(state, job.host_id, plan_id).await {
                tracing::error!(error = %e, job_id = job.id, "settling the host's backup alerts failed");
            }
            let Ok(plan) = store::plans::get(&state.db, plan_id).await else {
                return Ok(());
            };
            if plan.forget_after_backup && !plan.retention.is_empty() {
                let repo = store::repositories::get(&state.db, plan.repository_id).await?;
                let host = store::hosts::get(&state.db, job.host_id).await?;
                let who = Requester {
                    kind: ActorKind::System,
                    id: None,
                    name: format!("forget after backup (job {})", job.id),
                };
                enqueue(
                    state,
                    &who,
                    &repo,
                    host.id,
                    JobKind::Forget,
                    Some(plan.id),
                    &forget_options(&plan, Some(&host.name)),
                )
                .await?;
            }
        }
        (JobKind::Backup, JobStatus::Failed, Some(plan_id)) => {
            let plan = store::plans::get(&state.db, plan_id)
                .await
                .map(|p| p.name)
                .unwrap_or_else(|_| format!("#{plan_id}"));
            let host = store::hosts::get(&state.db, job.host_id)
                .await
                .map(|h| h.name)
                .unwrap_or_else(|_| format!("#{}", job.host_id));
            let kind = job.error_kind.as_deref().unwrap_or("restic_failed");
            let message = format!(
                "backup of plan {plan} on {host} failed (job {}, {kind}): {}",
                job.id,
                job.error.as_deref().unwrap_or("no reason given")
            );
            alerts::raise(
                state,
                BACKUP_FAILED,
                &backup_failed_key(job.host_id, plan_id),
                Some(job.host_id),
                Severity::Warning,
                &message,
            )
            .await?;
        }
        (JobKind::Check, status, _) if job.repository_id.is_some() => {
            let repository_id = job.repository_id.unwrap_or_default();
            let key = check_failed_key(repository_id, job.host_id);
            match status {
                JobStatus::Succeeded => {
                    alerts::resolve(state, &key).await?;
                }
                JobStatus::Failed => {
                    let name = store::repositories::get(&state.db, repository_id)
                        .await
                        .map(|r| r.name)
                        .unwrap_or_else(|_| format!("#{repository_id}"));
                    let message = format!(
                        "check of repository {name} failed (job {}): {}",
                        job.id,
                        job.error.as_deref().unwrap_or("no reason given")
                    );
                    alerts::raise(
                        state,
                        REPOSITORY_CHECK_FAILED,
                        &key,
                        Some(job.host_id),
                        Severity::Critical,
                        &message,
                    )
                    .await?;
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether a repository's check is due at `now`.
pub fn check_due(repo: &Repository, now: i64) -> bool {
    if repo.check_every_days <= 0 {
        return false;
    }
    // An hour's slack: a check made just after 03:00 is due again at 03:00.
    let every = i64::from(repo.check_every_days) * 86_400_000 - 3_600_000;
    repo.last_check_at.is_none_or(|t| now - t >= every)
}
