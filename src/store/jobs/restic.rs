//! Restic jobs: queued for the dispatcher, handed out, and put back.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr,
};

use super::{ActorKind, Job, JobKind, JobStatus};
use crate::entities::jobs;
use crate::store::Result;

/// A restic job to queue: what the dispatcher needs to send it later,
/// after a restart too.
#[derive(Clone, Debug)]
pub struct NewResticJob {
    pub host_id: i64,
    pub kind: JobKind,
    pub actor_kind: ActorKind,
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub repository_id: i64,
    pub plan_id: Option<i64>,
    /// `wire::ResticOptions` as JSON (no secrets).
    pub options: String,
    pub scope: String,
}

fn active(j: &NewResticJob, now: i64) -> jobs::ActiveModel {
    jobs::ActiveModel {
        host_id: Set(j.host_id),
        kind: Set(j.kind.as_str().into()),
        status: Set(JobStatus::Queued.as_str().into()),
        actor_kind: Set(j.actor_kind.as_str().into()),
        actor_id: Set(j.actor_id),
        actor_name: Set(j.actor_name.clone()),
        created_at: Set(now),
        log_bytes: Set(0),
        log_lines: Set(0),
        log_truncated: Set(false),
        repository_id: Set(Some(j.repository_id)),
        plan_id: Set(j.plan_id),
        warning: Set(false),
        options: Set(Some(j.options.clone())),
        scope: Set(Some(j.scope.clone())),
        ..Default::default()
    }
}

pub async fn create_restic<C: ConnectionTrait>(db: &C, j: &NewResticJob, now: i64) -> Result<Job> {
    Ok(active(j, now).insert(db).await?.into())
}

/// Rows per multi-row INSERT: well under either database's limit on bound
/// values (17 columns a row).
const INSERT_CHUNK: usize = 256;

/// Queues every job of `list` in one INSERT per [`INSERT_CHUNK`] (the
/// scheduler's batches); returns them in the order given.
pub async fn create_restic_many<C: ConnectionTrait>(
    db: &C,
    list: &[NewResticJob],
    now: i64,
) -> Result<Vec<Job>> {
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(INSERT_CHUNK) {
        let mut rows = jobs::Entity::insert_many(chunk.iter().map(|j| active(j, now)))
            .exec_with_returning(db)
            .await?;
        // One statement's ids follow its rows' order; checked, not assumed.
        rows.sort_by_key(|r| r.id);
        let matches = rows.len() == chunk.len()
            && rows
                .iter()
                .zip(chunk)
                .all(|(r, j)| r.host_id == j.host_id && r.plan_id == j.plan_id);
        if !matches {
            return Err(sea_orm::DbErr::Custom(
                "the queued jobs came back in another order than they were written".into(),
            )
            .into());
        }
        out.extend(rows.into_iter().map(Job::from));
    }
    Ok(out)
}

/// Queued restic jobs, oldest first (the dispatcher's work list). A
/// restic job always names its repository; rows without one are not the
/// dispatcher's.
pub async fn queued_restic<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::Status.eq(JobStatus::Queued.as_str()))
        .filter(jobs::Column::Kind.ne(JobKind::Update.as_str()))
        .filter(jobs::Column::RepositoryId.is_not_null())
        .order_by_asc(jobs::Column::Id)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Running restic jobs (all hosts): what the dispatcher weighs a queued
/// job against.
pub async fn running_restic<C: ConnectionTrait>(db: &C) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
        .filter(jobs::Column::Kind.ne(JobKind::Update.as_str()))
        .filter(jobs::Column::RepositoryId.is_not_null())
        .order_by_asc(jobs::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Running restic jobs of one host.
pub async fn running_restic_on_host<C: ConnectionTrait>(db: &C, host_id: i64) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
        .filter(jobs::Column::Kind.ne(JobKind::Update.as_str()))
        .filter(jobs::Column::RepositoryId.is_not_null())
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// A host's queued and running restic jobs (one read over `jobs_host_created`).
pub async fn live_restic_on_host<C: ConnectionTrait>(db: &C, host_id: i64) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .filter(jobs::Column::Kind.ne(JobKind::Update.as_str()))
        .filter(jobs::Column::RepositoryId.is_not_null())
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// queued → running as the command goes out, only if still queued.
/// `started_at` stays empty until the agent says `job.started`: a job
/// whose command was lost on the way can then be told from one that ran.
pub async fn mark_dispatched<C: ConnectionTrait>(db: &C, job_id: i64, _now: i64) -> Result<bool> {
    let res = jobs::Entity::update_many()
        .col_expr(
            jobs::Column::Status,
            Expr::value(JobStatus::Running.as_str()),
        )
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.eq(JobStatus::Queued.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// [`mark_dispatched`] for many jobs in three statements (in `txn`, which
/// should be a transaction): the rows are taken for writing first (see
/// `super::lock_job`), then those still queued are read and marked.
/// Returns the ids this call marked.
pub async fn mark_dispatched_many<C: ConnectionTrait>(
    txn: &C,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    jobs::Entity::update_many()
        .col_expr(jobs::Column::Status, Expr::col(jobs::Column::Status))
        .filter(jobs::Column::Id.is_in(ids.iter().copied()))
        .exec(txn)
        .await?;
    let queued: Vec<i64> = jobs::Entity::find()
        .select_only()
        .column(jobs::Column::Id)
        .filter(jobs::Column::Id.is_in(ids.iter().copied()))
        .filter(jobs::Column::Status.eq(JobStatus::Queued.as_str()))
        .into_tuple::<i64>()
        .all(txn)
        .await?;
    if !queued.is_empty() {
        jobs::Entity::update_many()
            .col_expr(
                jobs::Column::Status,
                Expr::value(JobStatus::Running.as_str()),
            )
            .filter(jobs::Column::Id.is_in(queued.iter().copied()))
            .filter(jobs::Column::Status.eq(JobStatus::Queued.as_str()))
            .exec(txn)
            .await?;
    }
    Ok(queued.into_iter().collect())
}

/// running → queued when the command could not be handed to the agent.
pub async fn requeue<C: ConnectionTrait>(db: &C, job_id: i64) -> Result<bool> {
    let res = jobs::Entity::update_many()
        .col_expr(
            jobs::Column::Status,
            Expr::value(JobStatus::Queued.as_str()),
        )
        .col_expr(jobs::Column::StartedAt, Expr::value(Option::<i64>::None))
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}
