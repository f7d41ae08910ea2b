//! Job state changes: queued → running → a terminal state, each a
//! conditional update that never touches a terminal job or another host's.
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr};

use super::{Job, JobStatus, get};
use crate::entities::jobs;
use crate::store::Result;

/// Why an agent's job message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown job")]
    UnknownJob,
    #[error("job belongs to another host")]
    OtherHost,
}

/// The job if it exists and (when `host_id` is given) belongs to that host.
async fn owned<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
    host_id: Option<i64>,
) -> Result<std::result::Result<Job, Refusal>> {
    let Some(job) = jobs::Entity::find_by_id(job_id).one(db).await? else {
        return Ok(Err(Refusal::UnknownJob));
    };
    if host_id.is_some_and(|h| h != job.host_id) {
        return Ok(Err(Refusal::OtherHost));
    }
    Ok(Ok(job.into()))
}

/// Outcome of a state change: the job after it, and whether it changed.
#[derive(Debug)]
pub struct Transition {
    pub job: Job,
    pub changed: bool,
}

/// queued → running. Idempotent; never touches a terminal job.
pub async fn start<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
    host_id: Option<i64>,
    now: i64,
) -> Result<std::result::Result<Transition, Refusal>> {
    if let Err(r) = owned(db, job_id, host_id).await? {
        return Ok(Err(r));
    }
    let res = jobs::Entity::update_many()
        .col_expr(
            jobs::Column::Status,
            Expr::value(JobStatus::Running.as_str()),
        )
        .col_expr(jobs::Column::StartedAt, Expr::value(now))
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.eq(JobStatus::Queued.as_str()))
        .exec(db)
        .await?;
    // A dispatched restic job is already running: this is its real start.
    let started = jobs::Entity::update_many()
        .col_expr(jobs::Column::StartedAt, Expr::value(now))
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
        .filter(jobs::Column::StartedAt.is_null())
        .exec(db)
        .await?;
    let res_rows = res.rows_affected + started.rows_affected;
    Ok(Ok(Transition {
        job: get(db, job_id).await?,
        changed: res_rows >= 1,
    }))
}

/// How a job ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome<'a> {
    pub error: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub warning: bool,
    pub error_kind: Option<&'a str>,
    /// JSON, stored as given.
    pub result: Option<&'a str>,
}

/// → a terminal state, exactly once: a job already terminal stays as it is.
pub async fn finish<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
    host_id: Option<i64>,
    status: JobStatus,
    error: Option<&str>,
    exit_code: Option<i32>,
    now: i64,
) -> Result<std::result::Result<Transition, Refusal>> {
    let outcome = Outcome {
        error,
        exit_code,
        ..Outcome::default()
    };
    finish_with(db, job_id, host_id, status, &outcome, now).await
}

/// [`finish`] with everything a restic job reports.
pub async fn finish_with<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
    host_id: Option<i64>,
    status: JobStatus,
    outcome: &Outcome<'_>,
    now: i64,
) -> Result<std::result::Result<Transition, Refusal>> {
    debug_assert!(status.is_terminal());
    if let Err(r) = owned(db, job_id, host_id).await? {
        return Ok(Err(r));
    }
    let error: Option<String> = outcome.error.map(|e| e.chars().take(4000).collect());
    // A job that never reported its start gets one now (portable SQL: no
    // COALESCE with a bound parameter, which Postgres would need typed).
    jobs::Entity::update_many()
        .col_expr(jobs::Column::StartedAt, Expr::value(now))
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::StartedAt.is_null())
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .exec(db)
        .await?;
    let res = jobs::Entity::update_many()
        .col_expr(jobs::Column::Status, Expr::value(status.as_str()))
        .col_expr(jobs::Column::FinishedAt, Expr::value(now))
        .col_expr(jobs::Column::Error, Expr::value(error))
        .col_expr(jobs::Column::ExitCode, Expr::value(outcome.exit_code))
        .col_expr(jobs::Column::Warning, Expr::value(outcome.warning))
        .col_expr(
            jobs::Column::ErrorKind,
            Expr::value(outcome.error_kind.map(str::to_string)),
        )
        .col_expr(
            jobs::Column::Result,
            Expr::value(outcome.result.map(str::to_string)),
        )
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .exec(db)
        .await?;
    Ok(Ok(Transition {
        job: get(db, job_id).await?,
        changed: res.rows_affected == 1,
    }))
}
