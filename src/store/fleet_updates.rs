//! Rolling fleet updates and their hosts. The "one running at a time" rule
//! is the database's (a partial unique index); state changes are
//! conditional so a finished run never changes again.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionSession, TransactionTrait, sea_query::Expr,
};
use serde::Serialize;

use super::{Page, Result, StoreError, is_unique_violation};
use crate::entities::{fleet_update_hosts as fuh, fleet_updates as fu};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetStatus {
    Running,
    Completed,
    Halted,
    Cancelled,
}

impl FleetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetStatus::Running => "running",
            FleetStatus::Completed => "completed",
            FleetStatus::Halted => "halted",
            FleetStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "running" => FleetStatus::Running,
            "completed" => FleetStatus::Completed,
            "halted" => FleetStatus::Halted,
            _ => FleetStatus::Cancelled,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::Running => "running",
            HostStatus::Succeeded => "succeeded",
            HostStatus::Failed => "failed",
            HostStatus::Skipped => "skipped",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "pending" => HostStatus::Pending,
            "running" => HostStatus::Running,
            "succeeded" => HostStatus::Succeeded,
            "skipped" => HostStatus::Skipped,
            _ => HostStatus::Failed,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FleetUpdate {
    pub id: i64,
    pub started_at: i64,
    pub started_by_user_id: Option<i64>,
    pub started_by: String,
    pub target_version: String,
    pub status: FleetStatus,
    pub current_host_id: Option<i64>,
    pub halted_reason: Option<String>,
    pub completed_at: Option<i64>,
}

impl From<fu::Model> for FleetUpdate {
    fn from(m: fu::Model) -> Self {
        FleetUpdate {
            id: m.id,
            started_at: m.started_at,
            started_by_user_id: m.started_by_user_id,
            started_by: m.started_by,
            target_version: m.target_version,
            status: FleetStatus::parse(&m.status),
            current_host_id: m.current_host_id,
            halted_reason: m.halted_reason,
            completed_at: m.completed_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FleetHost {
    pub host_id: i64,
    pub position: i32,
    pub hostname: String,
    pub from_version: String,
    pub status: HostStatus,
    pub job_id: Option<i64>,
    pub failed_reason: Option<String>,
}

impl From<fuh::Model> for FleetHost {
    fn from(m: fuh::Model) -> Self {
        FleetHost {
            host_id: m.host_id,
            position: m.position,
            hostname: m.hostname,
            from_version: m.from_version,
            status: HostStatus::parse(&m.status),
            job_id: m.job_id,
            failed_reason: m.failed_reason,
        }
    }
}

/// A host to put in a new run: (id, display name, current version).
pub struct PlannedHost {
    pub host_id: i64,
    pub hostname: String,
    pub from_version: String,
}

pub fn already_running() -> StoreError {
    StoreError::Conflict(
        "already_running",
        "a fleet update is already running: wait for it to finish or cancel it".into(),
    )
}

/// Creates a running fleet update with its hosts pending, in order.
/// Loses cleanly (`already_running`) against another running one, even
/// when two starts race.
pub async fn create<C: TransactionTrait>(
    db: &C,
    started_by_user_id: Option<i64>,
    started_by: &str,
    target_version: &str,
    hosts: &[PlannedHost],
    now: i64,
) -> Result<FleetUpdate> {
    let txn = db.begin().await?;
    let row = fu::ActiveModel {
        started_at: Set(now),
        started_by_user_id: Set(started_by_user_id),
        started_by: Set(started_by.to_string()),
        target_version: Set(target_version.to_string()),
        status: Set(FleetStatus::Running.as_str().into()),
        current_host_id: Set(None),
        halted_reason: Set(None),
        completed_at: Set(None),
        ..Default::default()
    };
    let created = match row.insert(&txn).await {
        Ok(m) => m,
        Err(e) if is_unique_violation(&e) => return Err(already_running()),
        Err(e) => return Err(e.into()),
    };
    for (i, h) in hosts.iter().enumerate() {
        fuh::ActiveModel {
            fleet_update_id: Set(created.id),
            host_id: Set(h.host_id),
            position: Set(i as i32 + 1),
            hostname: Set(h.hostname.clone()),
            from_version: Set(h.from_version.clone()),
            status: Set(HostStatus::Pending.as_str().into()),
            job_id: Set(None),
            failed_reason: Set(None),
        }
        .insert(&txn)
        .await?;
    }
    match txn.commit().await {
        Ok(()) => Ok(created.into()),
        Err(e) if is_unique_violation(&e) => Err(already_running()),
        Err(e) => Err(e.into()),
    }
}

/// The running fleet update, if any.
pub async fn active<C: ConnectionTrait>(db: &C) -> Result<Option<FleetUpdate>> {
    Ok(fu::Entity::find()
        .filter(fu::Column::Status.eq(FleetStatus::Running.as_str()))
        .one(db)
        .await?
        .map(Into::into))
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<FleetUpdate> {
    fu::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("fleet update"))
}

/// The run and all its hosts in position order.
pub async fn get_with_hosts<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<(FleetUpdate, Vec<FleetHost>)> {
    let f = get(db, id).await?;
    let hosts = fuh::Entity::find()
        .filter(fuh::Column::FleetUpdateId.eq(id))
        .order_by_asc(fuh::Column::Position)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok((f, hosts))
}

/// Hosts still to do (running first, for a resumed run, then pending), in
/// position order.
pub async fn list_pending<C: ConnectionTrait>(db: &C, id: i64) -> Result<Vec<FleetHost>> {
    Ok(fuh::Entity::find()
        .filter(fuh::Column::FleetUpdateId.eq(id))
        .filter(
            fuh::Column::Status.is_in([HostStatus::Pending.as_str(), HostStatus::Running.as_str()]),
        )
        .order_by_asc(fuh::Column::Position)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn set_host_status<C: ConnectionTrait>(
    db: &C,
    id: i64,
    host_id: i64,
    status: HostStatus,
    failed_reason: Option<&str>,
    job_id: Option<i64>,
) -> Result<()> {
    let mut q = fuh::Entity::update_many()
        .col_expr(fuh::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            fuh::Column::FailedReason,
            Expr::value(failed_reason.map(str::to_string)),
        );
    if let Some(j) = job_id {
        q = q.col_expr(fuh::Column::JobId, Expr::value(j));
    }
    q.filter(fuh::Column::FleetUpdateId.eq(id))
        .filter(fuh::Column::HostId.eq(host_id))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn set_current_host<C: ConnectionTrait>(
    db: &C,
    id: i64,
    host_id: Option<i64>,
) -> Result<()> {
    fu::Entity::update_many()
        .col_expr(fu::Column::CurrentHostId, Expr::value(host_id))
        .filter(fu::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Moves a running run to `to`; false when it was no longer running.
async fn end<C: ConnectionTrait>(
    db: &C,
    id: i64,
    to: FleetStatus,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let r = fu::Entity::update_many()
        .col_expr(fu::Column::Status, Expr::value(to.as_str()))
        .col_expr(
            fu::Column::HaltedReason,
            Expr::value(reason.map(str::to_string)),
        )
        .col_expr(fu::Column::CompletedAt, Expr::value(now))
        .filter(fu::Column::Id.eq(id))
        .filter(fu::Column::Status.eq(FleetStatus::Running.as_str()))
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

pub async fn halt<C: ConnectionTrait>(db: &C, id: i64, reason: &str, now: i64) -> Result<bool> {
    end(db, id, FleetStatus::Halted, Some(reason), now).await
}

pub async fn cancel<C: ConnectionTrait>(db: &C, id: i64, now: i64) -> Result<bool> {
    end(db, id, FleetStatus::Cancelled, None, now).await
}

pub async fn complete<C: ConnectionTrait>(db: &C, id: i64, now: i64) -> Result<bool> {
    end(db, id, FleetStatus::Completed, None, now).await
}

/// Past and present runs, newest first.
pub async fn list<C: ConnectionTrait>(db: &C, page: Page) -> Result<Vec<FleetUpdate>> {
    Ok(fu::Entity::find()
        .order_by_desc(fu::Column::Id)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}
