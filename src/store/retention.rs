//! The retention purge's queries: each deletes at most one small batch in a
//! short transaction of its own, so writers are never held up for long,
//! and answers how many rows went; the caller (`crate::retention`) repeats
//! until nothing is left. Same SQL on SQLite and Postgres. The values put
//! into the SQL are times and ids this module computed, never input.
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

use super::Result;

/// Rows deleted per statement (jobs per transaction: at most [`WINDOW`]).
pub const BATCH: u64 = 1000;

/// Statuses of a job that will not change again.
const FINISHED: &str = "('succeeded', 'failed', 'cancelled', 'skipped')";

async fn exec<C: ConnectionTrait>(db: &C, sql: &str) -> Result<u64> {
    Ok(db
        .execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .rows_affected())
}

/// Job ids one step of the purge's walk covers. The walk goes through the
/// jobs by id range (`id > after AND id <= after + WINDOW`), never by
/// `ORDER BY id LIMIT n`: with the latter the planner may read every
/// matching row before sorting (SQLite 3.51 turns the `EXISTS` into a
/// semi-join over the `status` index and did: 92 s a batch at 1,000,000
/// jobs, where the range reads about a thousand rows whatever the plan).
pub const WINDOW: i64 = 1000;

/// The lowest and highest job ids now (0, 0 without jobs): the purge walks
/// from one to the other. Jobs created meanwhile are newer than any cutoff.
pub async fn job_id_range<C: ConnectionTrait>(db: &C) -> Result<(i64, i64)> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM jobs",
        ))
        .await?;
    Ok(match row {
        Some(r) => (r.try_get_by_index(0)?, r.try_get_by_index(1)?),
        None => (0, 0),
    })
}

/// Jobs whose log lines are deleted together: their ids go in one statement.
pub const JOBS_PER_LOG_BATCH: usize = 100;

/// Ids in `(after, after + WINDOW]` (ascending) of jobs that finished
/// before `cutoff` and still have log lines.
pub async fn jobs_with_old_logs<C: ConnectionTrait>(
    db: &C,
    cutoff: i64,
    after: i64,
) -> Result<Vec<i64>> {
    let until = after + WINDOW;
    ids(
        db,
        format!(
            "SELECT j.id FROM jobs j \
             WHERE j.id > {after} AND j.id <= {until} AND j.status IN {FINISHED} \
               AND j.finished_at IS NOT NULL \
               AND j.finished_at < {cutoff} AND j.created_at < {cutoff} \
               AND EXISTS (SELECT 1 FROM job_logs l WHERE l.job_id = j.id) \
             ORDER BY j.id"
        ),
    )
    .await
}

async fn ids<C: ConnectionTrait>(db: &C, sql: String) -> Result<Vec<i64>> {
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.try_get_by_index::<i64>(0)?);
    }
    Ok(ids)
}

/// Ids in `(after, after + WINDOW]` (ascending) of jobs that may go: they
/// finished before `cutoff`, and a newer job of the same host, kind, plan,
/// repository and status exists. So each host keeps its latest job of each
/// kind per plan and outcome whatever its age: the host page, the plan
/// page and backup health (recomputed from the newest success and the
/// newest outcome) read the same before and after a purge.
pub async fn purgeable_jobs<C: ConnectionTrait>(
    db: &C,
    cutoff: i64,
    after: i64,
) -> Result<Vec<i64>> {
    let until = after + WINDOW;
    let sql = format!(
        "SELECT j.id FROM jobs j \
         WHERE j.id > {after} AND j.id <= {until} AND j.status IN {FINISHED} \
           AND j.finished_at IS NOT NULL \
           AND j.finished_at < {cutoff} AND j.created_at < {cutoff} \
           AND EXISTS (SELECT 1 FROM jobs n WHERE n.host_id = j.host_id \
             AND n.created_at >= j.created_at AND n.id > j.id \
             AND n.kind = j.kind AND n.status = j.status \
             AND COALESCE(n.plan_id, 0) = COALESCE(j.plan_id, 0) \
             AND COALESCE(n.repository_id, 0) = COALESCE(j.repository_id, 0)) \
         ORDER BY j.id"
    );
    ids(db, sql).await
}

fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// Deletes up to [`BATCH`] log lines of the jobs `ids`.
pub async fn logs_of_batch<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list = id_list(ids);
    exec(
        db,
        &format!(
            "DELETE FROM job_logs WHERE (job_id, pos) IN (\
               SELECT job_id, pos FROM job_logs WHERE job_id IN ({list}) \
               ORDER BY job_id, pos LIMIT {BATCH})"
        ),
    )
    .await
}

/// Deletes the finished jobs `ids` in one transaction. What still names
/// them loses the reference instead of pointing nowhere: a snapshot keeps
/// its row without its job, a fleet run's host row shows no log link.
/// Their log lines should be gone already ([`logs_of_batch`]); any left
/// go with them.
pub async fn delete_jobs(db: &DatabaseConnection, ids: &[i64]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list = id_list(ids);
    let txn = db.begin().await?;
    exec(
        &txn,
        &format!("UPDATE snapshots SET job_id = NULL WHERE job_id IN ({list})"),
    )
    .await?;
    exec(
        &txn,
        &format!("UPDATE fleet_update_hosts SET job_id = NULL WHERE job_id IN ({list})"),
    )
    .await?;
    let n = exec(
        &txn,
        &format!(
            "DELETE FROM jobs WHERE id IN ({list}) AND status IN {FINISHED} \
             AND finished_at IS NOT NULL"
        ),
    )
    .await?;
    txn.commit().await?;
    Ok(n)
}

/// Deletes up to [`BATCH`] audit rows written before `cutoff`.
pub async fn audit_batch<C: ConnectionTrait>(db: &C, cutoff: i64) -> Result<u64> {
    exec(
        db,
        &format!(
            "DELETE FROM audit_log WHERE id IN (\
               SELECT id FROM audit_log WHERE at < {cutoff} ORDER BY id LIMIT {BATCH})"
        ),
    )
    .await
}

/// Deletes up to [`BATCH`] finished webhook deliveries made before
/// `cutoff` whose alert was resolved before `cutoff` (or is gone, or never
/// was: a test send). Pending ones stay for the notifier; those of an
/// open alert stay with it.
pub async fn deliveries_batch<C: ConnectionTrait>(db: &C, cutoff: i64) -> Result<u64> {
    exec(
        db,
        &format!(
            "DELETE FROM notification_deliveries WHERE id IN (\
               SELECT d.id FROM notification_deliveries d \
               LEFT JOIN alerts a ON a.id = d.alert_id \
               WHERE d.status <> 'pending' AND d.created_at < {cutoff} \
                 AND (a.id IS NULL OR (a.resolved_at IS NOT NULL AND a.resolved_at < {cutoff})) \
               ORDER BY d.id LIMIT {BATCH})"
        ),
    )
    .await
}

/// Deletes up to [`BATCH`] alerts resolved before `cutoff`. Open alerts
/// are never touched.
pub async fn alerts_batch<C: ConnectionTrait>(db: &C, cutoff: i64) -> Result<u64> {
    exec(
        db,
        &format!(
            "DELETE FROM alerts WHERE id IN (\
               SELECT id FROM alerts WHERE resolved_at IS NOT NULL AND resolved_at < {cutoff} \
               ORDER BY id LIMIT {BATCH})"
        ),
    )
    .await
}

/// Deletes up to [`BATCH`] enrollment tokens used or expired before
/// `cutoff`: they can never enroll anything again.
pub async fn tokens_batch<C: ConnectionTrait>(db: &C, cutoff: i64) -> Result<u64> {
    exec(
        db,
        &format!(
            "DELETE FROM enrollment_tokens WHERE id IN (\
               SELECT id FROM enrollment_tokens \
               WHERE (used_at IS NOT NULL AND used_at < {cutoff}) OR expires_at < {cutoff} \
               ORDER BY id LIMIT {BATCH})"
        ),
    )
    .await
}

/// SQLite only: gives up to `pages` free pages back to the file system
/// (the database is in incremental auto-vacuum mode, `db.rs`), then moves
/// the write-ahead log into the file and truncates it, so the file on disk
/// shrinks. Answers the free pages left.
pub async fn sqlite_incremental_vacuum(db: &DatabaseConnection, pages: u64) -> Result<i64> {
    // The pragma frees pages one step of its statement at a time; reading
    // its (empty) result to the end runs it through.
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!("PRAGMA incremental_vacuum({pages})"),
    ))
    .await?;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA freelist_count",
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get_by_index::<i64>(0)?,
        None => 0,
    })
}

/// SQLite only: copies the write-ahead log into the database file and
/// empties it (a no-op for pages a reader still needs; tried again at the
/// next purge).
pub async fn sqlite_checkpoint(db: &DatabaseConnection) -> Result<()> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "PRAGMA wal_checkpoint(TRUNCATE)",
    ))
    .await?;
    Ok(())
}
