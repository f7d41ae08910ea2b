//! Reading jobs: filtered lists, the live job of a kind, deadlines.
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::{Job, JobKind, JobStatus};
use crate::entities::jobs;
use crate::store::{Page, Result};

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub host_id: Option<i64>,
    pub kind: Option<JobKind>,
    pub status: Option<JobStatus>,
    pub plan_id: Option<i64>,
    pub repository_id: Option<i64>,
}

impl JobFilter {
    fn condition(&self) -> Condition {
        let mut c = Condition::all();
        if let Some(h) = self.host_id {
            c = c.add(jobs::Column::HostId.eq(h));
        }
        if let Some(k) = self.kind {
            c = c.add(jobs::Column::Kind.eq(k.as_str()));
        }
        if let Some(s) = self.status {
            c = c.add(jobs::Column::Status.eq(s.as_str()));
        }
        if let Some(p) = self.plan_id {
            c = c.add(jobs::Column::PlanId.eq(p));
        }
        if let Some(r) = self.repository_id {
            c = c.add(jobs::Column::RepositoryId.eq(r));
        }
        c
    }
}

pub async fn list<C: ConnectionTrait>(db: &C, f: &JobFilter, page: Page) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(f.condition())
        .order_by_desc(jobs::Column::Id)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn count<C: ConnectionTrait>(db: &C, f: &JobFilter) -> Result<u64> {
    Ok(jobs::Entity::find().filter(f.condition()).count(db).await?)
}

/// Every host with a live (queued or running) job of any kind: loaded once
/// at server start (`agents::marks`).
pub async fn hosts_with_live_jobs<C: ConnectionTrait>(db: &C) -> Result<Vec<i64>> {
    Ok(jobs::Entity::find()
        .select_only()
        .column(jobs::Column::HostId)
        .distinct()
        .filter(
            jobs::Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
        )
        .into_tuple::<i64>()
        .all(db)
        .await?)
}

/// The live (queued or running) job of `kind` on a host, if any.
pub async fn live_of_kind<C: ConnectionTrait>(
    db: &C,
    host_id: i64,
    kind: JobKind,
) -> Result<Option<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(jobs::Column::Kind.eq(kind.as_str()))
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .order_by_desc(jobs::Column::Id)
        .one(db)
        .await?
        .map(Into::into))
}

/// The earliest deadline among live jobs that have one.
pub async fn next_deadline<C: ConnectionTrait>(db: &C) -> Result<Option<i64>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .filter(jobs::Column::DeadlineAt.is_not_null())
        .order_by_asc(jobs::Column::DeadlineAt)
        .one(db)
        .await?
        .and_then(|m| m.deadline_at))
}

/// Live jobs whose deadline has passed.
pub async fn overdue<C: ConnectionTrait>(db: &C, now: i64) -> Result<Vec<Job>> {
    Ok(jobs::Entity::find()
        .filter(jobs::Column::Status.is_in(JobStatus::LIVE))
        .filter(jobs::Column::DeadlineAt.lte(now))
        .order_by_asc(jobs::Column::DeadlineAt)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}
