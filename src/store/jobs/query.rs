//! Reading jobs: filtered lists, the live job of a kind, deadlines.
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
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
    Ok(live_of_kind_query(host_id, kind)
        .one(db)
        .await?
        .map(Into::into))
}

/// Kind and statuses are our own constants, written into the SQL rather than
/// bound: then both databases can prove that the partial unique index
/// `jobs_one_live_update_per_host` applies and read at most one row, where
/// with bound values they walk every job of the host (a host page on a
/// server with a long history).
fn live_of_kind_query(host_id: i64, kind: JobKind) -> sea_orm::Select<jobs::Entity> {
    let live = JobStatus::LIVE
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    jobs::Entity::find()
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(Expr::cust(format!(
            "jobs.kind = '{}' AND jobs.status IN ({live})",
            kind.as_str()
        )))
        .order_by_desc(jobs::Column::Id)
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

#[cfg(test)]
mod tests {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};

    use super::*;

    /// SQLite's plan for the host page's "live update" question: the partial
    /// unique index, not a walk of the host's jobs.
    #[tokio::test]
    async fn the_live_update_of_a_host_is_read_through_the_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = crate::db::connect(&url).await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        let q = live_of_kind_query(7, JobKind::Update)
            .limit(1)
            .build(DbBackend::Sqlite);
        let explain = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", q.sql),
            q.values.map(|v| v.0).unwrap_or_default(),
        );
        let plan: Vec<String> = db
            .query_all_raw(explain)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_by_index::<String>(3).unwrap())
            .collect();
        assert_eq!(
            plan,
            ["SEARCH jobs USING INDEX jobs_one_live_update_per_host (host_id=?)"],
            "{}",
            q.sql
        );
        assert!(
            live_of_kind(&db, 7, JobKind::Update)
                .await
                .unwrap()
                .is_none()
        );
    }
}
