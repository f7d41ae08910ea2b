//! Alerts: at most one active row per dedup key (a partial unique index
//! enforces it), repeats bump count and last-seen, resolving stamps
//! `resolved_at` once. Knows nothing of notifications; `crate::alerts` does.
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};

use super::{Page, Result, StoreError, is_unique_violation};
use crate::entities::{alerts, hosts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub id: i64,
    pub kind: String,
    pub dedup_key: String,
    pub host_id: Option<i64>,
    pub severity: Severity,
    pub message: String,
    pub count: i64,
    pub raised_at: i64,
    pub last_seen_at: i64,
    pub resolved_at: Option<i64>,
}

impl Alert {
    pub fn is_active(&self) -> bool {
        self.resolved_at.is_none()
    }
}

impl From<alerts::Model> for Alert {
    fn from(m: alerts::Model) -> Self {
        Alert {
            id: m.id,
            kind: m.kind,
            dedup_key: m.dedup_key,
            host_id: m.host_id,
            severity: Severity::parse(&m.severity).unwrap_or(Severity::Warning),
            message: m.message,
            count: m.count,
            raised_at: m.raised_at,
            last_seen_at: m.last_seen_at,
            resolved_at: m.resolved_at,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewAlert<'a> {
    pub kind: &'a str,
    pub dedup_key: &'a str,
    pub host_id: Option<i64>,
    pub severity: Severity,
    pub message: &'a str,
}

/// What a raise did: opened a new alert, or counted a repeat of an active one.
#[derive(Clone, Debug, PartialEq)]
pub enum Raised {
    New(Alert),
    Repeat(Alert),
}

impl Raised {
    pub fn alert(&self) -> &Alert {
        match self {
            Raised::New(a) | Raised::Repeat(a) => a,
        }
    }
    pub fn is_new(&self) -> bool {
        matches!(self, Raised::New(_))
    }
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Alert> {
    alerts::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("alert"))
}

/// The active alert with this key, if any.
pub async fn active<C: ConnectionTrait>(db: &C, dedup_key: &str) -> Result<Option<Alert>> {
    Ok(alerts::Entity::find()
        .filter(alerts::Column::DedupKey.eq(dedup_key))
        .filter(alerts::Column::ResolvedAt.is_null())
        .one(db)
        .await?
        .map(Into::into))
}

/// Takes the write lock before a transaction reads anything: on SQLite a
/// transaction that read first cannot take the write lock once another
/// connection has written (it fails at once, without waiting). A no-op
/// update of no row; on Postgres it locks nothing.
pub async fn lock_for_write<C: ConnectionTrait>(txn: &C) -> Result<()> {
    alerts::Entity::update_many()
        .col_expr(alerts::Column::Count, Expr::col(alerts::Column::Count))
        .filter(alerts::Column::Id.lt(0))
        .exec(txn)
        .await?;
    Ok(())
}

/// Which of `keys` have an active alert: one read over the active-key index.
pub async fn active_among<C: ConnectionTrait>(db: &C, keys: &[String]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    Ok(alerts::Entity::find()
        .select_only()
        .column(alerts::Column::DedupKey)
        .filter(alerts::Column::DedupKey.is_in(keys.iter().cloned()))
        .filter(alerts::Column::ResolvedAt.is_null())
        .into_tuple::<String>()
        .all(db)
        .await?)
}

/// Whether `host_id` has an active alert of one of `kinds`.
pub async fn host_has_active<C: ConnectionTrait>(
    db: &C,
    host_id: i64,
    kinds: &[&str],
) -> Result<bool> {
    Ok(alerts::Entity::find()
        .select_only()
        .column(alerts::Column::Id)
        .filter(alerts::Column::HostId.eq(host_id))
        .filter(alerts::Column::Kind.is_in(kinds.iter().copied()))
        .filter(alerts::Column::ResolvedAt.is_null())
        .into_tuple::<i64>()
        .one(db)
        .await?
        .is_some())
}

/// The keys of every active alert whose kind is one of `kinds`: loaded once
/// at server start (`agents::marks`).
pub async fn active_keys_of_kinds<C: ConnectionTrait>(
    db: &C,
    kinds: &[&str],
) -> Result<Vec<String>> {
    Ok(alerts::Entity::find()
        .select_only()
        .column(alerts::Column::DedupKey)
        .filter(alerts::Column::Kind.is_in(kinds.iter().copied()))
        .filter(alerts::Column::ResolvedAt.is_null())
        .into_tuple::<String>()
        .all(db)
        .await?)
}

/// Raises an alert. A repeat of an active key updates count, last-seen and
/// message. Concurrent first raises race on the partial unique index: the
/// loser sees a unique violation and counts itself as a repeat instead.
///
/// The insert runs in a savepoint (a transaction of its own when `db` is
/// not one), so a lost race does not abort the caller's transaction on
/// Postgres.
pub async fn raise<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    a: &NewAlert<'_>,
    now: i64,
) -> Result<Raised> {
    // Three rounds cover every interleaving of one concurrent raise and one
    // resolve; more would mean the key flaps faster than we can write it.
    for _ in 0..3 {
        if let Some(current) = active(db, a.dedup_key).await? {
            let r = alerts::Entity::update_many()
                .col_expr(
                    alerts::Column::Count,
                    Expr::col(alerts::Column::Count).add(1i64),
                )
                .col_expr(alerts::Column::LastSeenAt, Expr::value(now))
                .col_expr(alerts::Column::Message, Expr::value(a.message))
                .filter(alerts::Column::Id.eq(current.id))
                .filter(alerts::Column::ResolvedAt.is_null())
                .exec(db)
                .await?;
            if r.rows_affected == 1 {
                return Ok(Raised::Repeat(get(db, current.id).await?));
            }
            // Resolved between our read and write: raise it afresh.
            continue;
        }
        let m = alerts::ActiveModel {
            kind: Set(a.kind.to_string()),
            dedup_key: Set(a.dedup_key.to_string()),
            host_id: Set(a.host_id),
            severity: Set(a.severity.as_str().to_string()),
            message: Set(a.message.to_string()),
            count: Set(1),
            raised_at: Set(now),
            last_seen_at: Set(now),
            resolved_at: Set(None),
            ..Default::default()
        };
        let savepoint = db.begin().await?;
        match m.insert(&savepoint).await {
            Ok(m) => {
                savepoint.commit().await?;
                return Ok(Raised::New(m.into()));
            }
            Err(e) if is_unique_violation(&e) => {
                savepoint.rollback().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict(
        "alert_contended",
        format!("alert {:?} changed too often to record", a.dedup_key),
    ))
}

/// Resolves the active alert with this key. `None` when none was active
/// (or a concurrent resolve won): only one caller ever gets the alert back.
pub async fn resolve<C: ConnectionTrait>(
    db: &C,
    dedup_key: &str,
    now: i64,
) -> Result<Option<Alert>> {
    let Some(current) = active(db, dedup_key).await? else {
        return Ok(None);
    };
    let r = alerts::Entity::update_many()
        .col_expr(alerts::Column::ResolvedAt, Expr::value(now))
        .filter(alerts::Column::Id.eq(current.id))
        .filter(alerts::Column::ResolvedAt.is_null())
        .exec(db)
        .await?;
    if r.rows_affected == 1 {
        Ok(Some(Alert {
            resolved_at: Some(now),
            ..current
        }))
    } else {
        Ok(None)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Active,
    Resolved,
}

impl AlertState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AlertState::Active),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// Active alerts newest first; resolved ones most recently resolved first.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    state: Option<AlertState>,
    page: Page,
) -> Result<Vec<Alert>> {
    let q = alerts::Entity::find().filter(condition(state));
    let q = match state {
        Some(AlertState::Resolved) => q
            .order_by_desc(alerts::Column::ResolvedAt)
            .order_by_desc(alerts::Column::Id),
        _ => q.order_by_desc(alerts::Column::Id),
    };
    Ok(q.limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn count<C: ConnectionTrait>(db: &C, state: Option<AlertState>) -> Result<u64> {
    Ok(alerts::Entity::find()
        .filter(condition(state))
        .count(db)
        .await?)
}

fn condition(state: Option<AlertState>) -> Condition {
    match state {
        Some(AlertState::Active) => Condition::all().add(alerts::Column::ResolvedAt.is_null()),
        Some(AlertState::Resolved) => {
            Condition::all().add(alerts::Column::ResolvedAt.is_not_null())
        }
        None => Condition::all(),
    }
}

/// Host ids of the active alerts of `kind`.
pub async fn active_host_ids<C: ConnectionTrait>(db: &C, kind: &str) -> Result<Vec<i64>> {
    Ok(alerts::Entity::find()
        .select_only()
        .column(alerts::Column::HostId)
        .filter(alerts::Column::Kind.eq(kind))
        .filter(alerts::Column::ResolvedAt.is_null())
        .filter(alerts::Column::HostId.is_not_null())
        .into_tuple::<Option<i64>>()
        .all(db)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Dedup keys of the active alerts of `kind`.
pub async fn active_keys<C: ConnectionTrait>(db: &C, kind: &str) -> Result<Vec<String>> {
    Ok(alerts::Entity::find()
        .select_only()
        .column(alerts::Column::DedupKey)
        .filter(alerts::Column::Kind.eq(kind))
        .filter(alerts::Column::ResolvedAt.is_null())
        .into_tuple::<String>()
        .all(db)
        .await?)
}

/// An enrolled host that has been offline since before the cutoff.
#[derive(Clone, Debug)]
pub struct OfflineHost {
    pub id: i64,
    pub name: String,
    pub last_seen_at: i64,
}

/// Enrolled hosts offline and last seen before `cutoff` (never-seen hosts
/// are not "offline", they have not come up yet).
pub async fn hosts_offline_since<C: ConnectionTrait>(
    db: &C,
    cutoff: i64,
) -> Result<Vec<OfflineHost>> {
    Ok(hosts::Entity::find()
        .filter(hosts::Column::Online.eq(false))
        .filter(hosts::Column::SecretHash.is_not_null())
        .filter(hosts::Column::LastSeenAt.lt(cutoff))
        .order_by_asc(hosts::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|m| {
            Some(OfflineHost {
                id: m.id,
                last_seen_at: m.last_seen_at?,
                name: m.name,
            })
        })
        .collect())
}

/// Which of these hosts are online now.
pub async fn online_among<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        out.extend(
            hosts::Entity::find()
                .select_only()
                .column(hosts::Column::Id)
                .filter(hosts::Column::Id.is_in(chunk.iter().copied()))
                .filter(hosts::Column::Online.eq(true))
                .into_tuple::<i64>()
                .all(db)
                .await?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::DatabaseConnection;

    /// A migrated database of its own (Postgres with `TEST_DATABASE_URL`,
    /// else SQLite in the returned directory, which must outlive it).
    async fn db() -> (tempfile::TempDir, DatabaseConnection) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::testing::fresh_database(dir.path())
            .await
            .unwrap();
        (dir, db)
    }

    fn new<'a>(key: &'a str, message: &'a str) -> NewAlert<'a> {
        NewAlert {
            kind: "test",
            dedup_key: key,
            host_id: None,
            severity: Severity::Warning,
            message,
        }
    }

    #[tokio::test]
    async fn repeat_raise_counts_and_resolve_reopens() {
        let (_dir, db) = db().await;
        let first = raise(&db, &new("k", "one"), 1000).await.unwrap();
        assert!(first.is_new());
        let again = raise(&db, &new("k", "two"), 2000).await.unwrap();
        let Raised::Repeat(a) = again else {
            panic!("a repeat raise opened a new alert: {again:?}")
        };
        assert_eq!(a.id, first.alert().id);
        assert_eq!((a.count, a.last_seen_at, a.raised_at), (2, 2000, 1000));
        assert_eq!(a.message, "two");

        let resolved = resolve(&db, "k", 3000).await.unwrap().unwrap();
        assert_eq!(resolved.resolved_at, Some(3000));
        assert_eq!(resolve(&db, "k", 3001).await.unwrap(), None);

        let third = raise(&db, &new("k", "three"), 4000).await.unwrap();
        assert!(third.is_new());
        assert_ne!(third.alert().id, a.id);
        assert_eq!(count(&db, Some(AlertState::Active)).await.unwrap(), 1);
        assert_eq!(count(&db, Some(AlertState::Resolved)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_index_refuses_a_second_active_row() {
        let (_dir, db) = db().await;
        raise(&db, &new("dup", "x"), 1).await.unwrap();
        let dup = alerts::ActiveModel {
            kind: Set("test".into()),
            dedup_key: Set("dup".into()),
            host_id: Set(None),
            severity: Set("info".into()),
            message: Set("y".into()),
            count: Set(1),
            raised_at: Set(2),
            last_seen_at: Set(2),
            resolved_at: Set(None),
            ..Default::default()
        };
        let e = dup.clone().insert(&db).await.unwrap_err();
        assert!(is_unique_violation(&e), "{e}");
        // Resolved rows do not count against the key.
        resolve(&db, "dup", 3).await.unwrap();
        dup.insert(&db).await.unwrap();
    }
}
