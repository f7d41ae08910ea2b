//! The snapshot index per (repository, host): added by backups, trimmed by
//! forgets, replaced wholesale by a `snapshots` job's complete listing.
//! For a shared repository the scope is the repository (`scope_host_id`
//! 0); for a local one each host's copy is its own scope.
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, TransactionTrait, sea_query::OnConflict,
};
use serde::Serialize;

use super::{Page, Result};
use crate::entities::snapshots;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Snapshot {
    pub repository_id: i64,
    pub host_id: Option<i64>,
    pub plan_id: Option<i64>,
    pub snapshot_id: String,
    pub short_id: String,
    /// Unix ms.
    pub time: i64,
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub job_id: Option<i64>,
    pub files_new: Option<i64>,
    pub files_changed: Option<i64>,
    pub data_added: Option<i64>,
    pub total_bytes_processed: Option<i64>,
    pub duration_ms: Option<i64>,
}

impl From<snapshots::Model> for Snapshot {
    fn from(m: snapshots::Model) -> Self {
        Snapshot {
            repository_id: m.repository_id,
            host_id: m.host_id,
            plan_id: m.plan_id,
            snapshot_id: m.snapshot_id,
            short_id: m.short_id,
            time: m.time,
            hostname: m.hostname,
            paths: serde_json::from_str(&m.paths).unwrap_or_default(),
            tags: serde_json::from_str(&m.tags).unwrap_or_default(),
            job_id: m.job_id,
            files_new: m.files_new,
            files_changed: m.files_changed,
            data_added: m.data_added,
            total_bytes_processed: m.total_bytes_processed,
            duration_ms: m.duration_ms,
        }
    }
}

/// One snapshot to record, in the scope `scope_host_id` (0: shared).
#[derive(Clone, Debug)]
pub struct NewSnapshot {
    pub repository_id: i64,
    pub scope_host_id: i64,
    pub snap: Snapshot,
}

fn active(n: &NewSnapshot) -> snapshots::ActiveModel {
    let s = &n.snap;
    snapshots::ActiveModel {
        repository_id: Set(n.repository_id),
        scope_host_id: Set(n.scope_host_id),
        host_id: Set(s.host_id),
        snapshot_id: Set(s.snapshot_id.clone()),
        short_id: Set(s.short_id.clone()),
        time: Set(s.time),
        hostname: Set(s.hostname.clone()),
        paths: Set(serde_json::to_string(&s.paths).unwrap_or_else(|_| "[]".into())),
        tags: Set(serde_json::to_string(&s.tags).unwrap_or_else(|_| "[]".into())),
        plan_id: Set(s.plan_id),
        job_id: Set(s.job_id),
        files_new: Set(s.files_new),
        files_changed: Set(s.files_changed),
        data_added: Set(s.data_added),
        total_bytes_processed: Set(s.total_bytes_processed),
        duration_ms: Set(s.duration_ms),
        ..Default::default()
    }
}

/// Adds a snapshot a backup made (or updates it if already indexed).
pub async fn upsert<C: ConnectionTrait>(db: &C, n: &NewSnapshot) -> Result<()> {
    snapshots::Entity::insert(active(n))
        .on_conflict(
            OnConflict::columns([
                snapshots::Column::RepositoryId,
                snapshots::Column::ScopeHostId,
                snapshots::Column::SnapshotId,
            ])
            .update_columns([
                snapshots::Column::FilesNew,
                snapshots::Column::FilesChanged,
                snapshots::Column::DataAdded,
                snapshots::Column::TotalBytesProcessed,
                snapshots::Column::DurationMs,
                snapshots::Column::JobId,
            ])
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Removes what a forget removed. `ids` may be short or full ids.
pub async fn remove<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
    scope_host_id: i64,
    ids: &[String],
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let res = snapshots::Entity::delete_many()
        .filter(snapshots::Column::RepositoryId.eq(repository_id))
        .filter(snapshots::Column::ScopeHostId.eq(scope_host_id))
        .filter(
            Condition::any()
                .add(snapshots::Column::SnapshotId.is_in(ids.iter().cloned()))
                .add(snapshots::Column::ShortId.is_in(ids.iter().cloned())),
        )
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Replaces the scope's index with a complete listing, keeping the backup
/// summaries of snapshots that are still there. When `hostname` is given,
/// only that restic host's snapshots are replaced (a listing filtered by
/// `--host`).
pub async fn replace(
    db: &sea_orm::DatabaseTransaction,
    repository_id: i64,
    scope_host_id: i64,
    hostname: Option<&str>,
    listing: &[NewSnapshot],
) -> Result<()> {
    let txn = db.begin().await?;
    let keep: Vec<String> = listing.iter().map(|n| n.snap.snapshot_id.clone()).collect();
    let mut gone = snapshots::Entity::delete_many()
        .filter(snapshots::Column::RepositoryId.eq(repository_id))
        .filter(snapshots::Column::ScopeHostId.eq(scope_host_id));
    if let Some(h) = hostname {
        gone = gone.filter(snapshots::Column::Hostname.eq(h));
    }
    // Chunks keep the NOT IN list inside both databases' parameter limits.
    if keep.len() <= 10_000 {
        gone = gone.filter(snapshots::Column::SnapshotId.is_not_in(keep.iter().cloned()));
        gone.exec(&txn).await?;
    } else {
        let existing: Vec<String> = snapshots::Entity::find()
            .select_only()
            .column(snapshots::Column::SnapshotId)
            .filter(snapshots::Column::RepositoryId.eq(repository_id))
            .filter(snapshots::Column::ScopeHostId.eq(scope_host_id))
            .into_tuple()
            .all(&txn)
            .await?;
        let keep_set: std::collections::HashSet<&String> = keep.iter().collect();
        let stale: Vec<String> = existing
            .into_iter()
            .filter(|id| !keep_set.contains(id))
            .collect();
        for chunk in stale.chunks(500) {
            remove(&txn, repository_id, scope_host_id, chunk).await?;
        }
    }
    for n in listing {
        snapshots::Entity::insert(active(n))
            .on_conflict(
                OnConflict::columns([
                    snapshots::Column::RepositoryId,
                    snapshots::Column::ScopeHostId,
                    snapshots::Column::SnapshotId,
                ])
                .update_columns([
                    snapshots::Column::Paths,
                    snapshots::Column::Tags,
                    snapshots::Column::Hostname,
                    snapshots::Column::HostId,
                ])
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    pub host_id: Option<i64>,
    pub repository_id: Option<i64>,
    pub plan_id: Option<i64>,
}

/// Newest first.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    f: &SnapshotFilter,
    page: Page,
) -> Result<Vec<Snapshot>> {
    let mut q = snapshots::Entity::find();
    if let Some(h) = f.host_id {
        q = q.filter(snapshots::Column::HostId.eq(h));
    }
    if let Some(r) = f.repository_id {
        q = q.filter(snapshots::Column::RepositoryId.eq(r));
    }
    if let Some(p) = f.plan_id {
        q = q.filter(snapshots::Column::PlanId.eq(p));
    }
    Ok(q.order_by_desc(snapshots::Column::Time)
        .order_by_desc(snapshots::Column::Id)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// One indexed snapshot of a repository by full or short id.
pub async fn find<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
    snapshot_id: &str,
) -> Result<Option<Snapshot>> {
    Ok(snapshots::Entity::find()
        .filter(snapshots::Column::RepositoryId.eq(repository_id))
        .filter(
            Condition::any()
                .add(snapshots::Column::SnapshotId.eq(snapshot_id))
                .add(snapshots::Column::ShortId.eq(snapshot_id)),
        )
        .one(db)
        .await?
        .map(Into::into))
}
