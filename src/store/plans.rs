//! Backup plans, and the scheduler's stored state: the next run of every
//! (plan, host) a plan covers and the next maintenance of every repository.
use agent::wire::Retention;
use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, OnConflict},
};
use serde::Serialize;

use super::{
    Page, Result, StoreError, is_unique_violation,
    jobs::{Job, JobKind, JobStatus},
};
use crate::entities::{jobs, plan_schedules, plans, repository_maintenance};

pub use super::plan_batches::{Move, live_backups_many, move_schedules};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Plan {
    pub id: i64,
    pub name: String,
    pub repository_id: i64,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub tags: Vec<String>,
    pub schedule: String,
    pub timezone: String,
    pub splay_secs: i32,
    pub hosts: Vec<i64>,
    pub labels: Vec<String>,
    pub retention: Retention,
    pub forget_after_backup: bool,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Plan {
    /// The plan covers a host named in `hosts` or carrying any of `labels`.
    pub fn covers(&self, host_id: i64, host_labels: &[String]) -> bool {
        self.hosts.contains(&host_id) || host_labels.iter().any(|l| self.labels.contains(l))
    }

    /// What a stored next run was computed from.
    pub fn basis(&self) -> String {
        format!("{}|{}|{}", self.schedule, self.timezone, self.splay_secs)
    }
}

/// Everything a plan row holds but its id and times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanRow {
    pub name: String,
    pub repository_id: i64,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub tags: Vec<String>,
    pub schedule: String,
    pub timezone: String,
    pub splay_secs: i32,
    pub hosts: Vec<i64>,
    pub labels: Vec<String>,
    pub retention: Retention,
    pub forget_after_backup: bool,
    pub enabled: bool,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl From<plans::Model> for Plan {
    fn from(m: plans::Model) -> Self {
        Plan {
            id: m.id,
            name: m.name,
            repository_id: m.repository_id,
            paths: serde_json::from_str(&m.paths).unwrap_or_default(),
            excludes: serde_json::from_str(&m.excludes).unwrap_or_default(),
            tags: serde_json::from_str(&m.tags).unwrap_or_default(),
            schedule: m.schedule,
            timezone: m.timezone,
            splay_secs: m.splay_secs,
            hosts: serde_json::from_str(&m.hosts).unwrap_or_default(),
            labels: serde_json::from_str(&m.labels).unwrap_or_default(),
            retention: serde_json::from_str(&m.retention).unwrap_or_default(),
            forget_after_backup: m.forget_after_backup,
            enabled: m.enabled,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<&Plan> for PlanRow {
    fn from(p: &Plan) -> Self {
        PlanRow {
            name: p.name.clone(),
            repository_id: p.repository_id,
            paths: p.paths.clone(),
            excludes: p.excludes.clone(),
            tags: p.tags.clone(),
            schedule: p.schedule.clone(),
            timezone: p.timezone.clone(),
            splay_secs: p.splay_secs,
            hosts: p.hosts.clone(),
            labels: p.labels.clone(),
            retention: p.retention.clone(),
            forget_after_backup: p.forget_after_backup,
            enabled: p.enabled,
        }
    }
}

fn active(r: &PlanRow) -> plans::ActiveModel {
    plans::ActiveModel {
        name: Set(r.name.clone()),
        repository_id: Set(r.repository_id),
        paths: Set(json(&r.paths)),
        excludes: Set(json(&r.excludes)),
        tags: Set(json(&r.tags)),
        schedule: Set(r.schedule.clone()),
        timezone: Set(r.timezone.clone()),
        splay_secs: Set(r.splay_secs),
        hosts: Set(json(&r.hosts)),
        labels: Set(json(&r.labels)),
        retention: Set(serde_json::to_string(&r.retention).unwrap_or_else(|_| "{}".into())),
        forget_after_backup: Set(r.forget_after_backup),
        enabled: Set(r.enabled),
        ..Default::default()
    }
}

fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(
        "name_taken",
        format!("a plan named {name:?} already exists"),
    )
}

pub async fn create<C: ConnectionTrait>(db: &C, r: &PlanRow, now: i64) -> Result<Plan> {
    let mut m = active(r);
    m.created_at = Set(now);
    m.updated_at = Set(now);
    match m.insert(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&r.name)),
        Err(e) => Err(e.into()),
    }
}

pub async fn update<C: ConnectionTrait>(db: &C, id: i64, r: &PlanRow, now: i64) -> Result<Plan> {
    let mut m = active(r);
    m.id = Set(id);
    m.updated_at = Set(now);
    match m.update(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&r.name)),
        Err(sea_orm::DbErr::RecordNotUpdated) => Err(StoreError::NotFound("plan")),
        Err(e) => Err(e.into()),
    }
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Plan> {
    plans::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("plan"))
}

pub async fn list<C: ConnectionTrait>(db: &C, page: Page) -> Result<Vec<Plan>> {
    Ok(plans::Entity::find()
        .order_by_asc(plans::Column::Name)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Every plan (the scheduler's view; plans are few).
pub async fn list_all<C: ConnectionTrait>(db: &C) -> Result<Vec<Plan>> {
    Ok(plans::Entity::find()
        .order_by_asc(plans::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Plans that back up into a repository.
pub async fn using_repository<C: ConnectionTrait>(db: &C, repository_id: i64) -> Result<Vec<Plan>> {
    Ok(plans::Entity::find()
        .filter(plans::Column::RepositoryId.eq(repository_id))
        .order_by_asc(plans::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<Plan> {
    let p = get(db, id).await?;
    plans::Entity::delete_by_id(id).exec(db).await?;
    Ok(p)
}

// ------------------------------------------------------------ schedules

/// The stored next run of one (plan, host).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRow {
    pub id: i64,
    pub plan_id: i64,
    pub host_id: i64,
    pub next_run_at: i64,
    pub basis: String,
    pub covered_since: i64,
}

impl From<plan_schedules::Model> for ScheduleRow {
    fn from(m: plan_schedules::Model) -> Self {
        ScheduleRow {
            id: m.id,
            plan_id: m.plan_id,
            host_id: m.host_id,
            next_run_at: m.next_run_at,
            basis: m.basis,
            covered_since: m.covered_since,
        }
    }
}

pub async fn schedules<C: ConnectionTrait>(db: &C) -> Result<Vec<ScheduleRow>> {
    Ok(plan_schedules::Entity::find()
        .order_by_asc(plan_schedules::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn schedules_of_plan<C: ConnectionTrait>(
    db: &C,
    plan_id: i64,
) -> Result<Vec<ScheduleRow>> {
    Ok(plan_schedules::Entity::find()
        .filter(plan_schedules::Column::PlanId.eq(plan_id))
        .order_by_asc(plan_schedules::Column::HostId)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn schedules_of_host<C: ConnectionTrait>(
    db: &C,
    host_id: i64,
) -> Result<Vec<ScheduleRow>> {
    Ok(plan_schedules::Entity::find()
        .filter(plan_schedules::Column::HostId.eq(host_id))
        .order_by_asc(plan_schedules::Column::PlanId)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// A (plan, host) pair to store with its first next run.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSchedule {
    pub plan_id: i64,
    pub host_id: i64,
    pub next_run_at: i64,
    pub basis: String,
}

/// Rows per transaction (and per multi-row INSERT) in [`insert_schedules`]:
/// 3,000 bound values, inside both databases' limits.
pub const SCHEDULE_BATCH: usize = 500;

/// Stores new (plan, host) rows, covered since `now`: one transaction and one
/// multi-row INSERT per [`SCHEDULE_BATCH`] rows, not one commit per host. A
/// pair another writer stored first keeps its row. A pair covered again (a
/// plan re-enabled, a label back) starts from the runs it already had: the
/// health columns of the pairs with finished backups are refreshed from
/// them (one lookup per plan and batch finds which).
pub async fn insert_schedules(
    db: &DatabaseConnection,
    rows: &[NewSchedule],
    now: i64,
) -> Result<()> {
    for chunk in rows.chunks(SCHEDULE_BATCH) {
        let txn = db.begin().await?;
        plan_schedules::Entity::insert_many(chunk.iter().map(|r| plan_schedules::ActiveModel {
            plan_id: Set(r.plan_id),
            host_id: Set(r.host_id),
            next_run_at: Set(r.next_run_at),
            basis: Set(r.basis.clone()),
            covered_since: Set(now),
            ..Default::default()
        }))
        .on_conflict(
            OnConflict::columns([
                plan_schedules::Column::PlanId,
                plan_schedules::Column::HostId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let mut by_plan: HashMap<i64, Vec<i64>> = HashMap::new();
        for r in chunk {
            by_plan.entry(r.plan_id).or_default().push(r.host_id);
        }
        for (plan_id, hosts) in by_plan {
            let ran: Vec<i64> = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::HostId)
                .distinct()
                .filter(jobs::Column::PlanId.eq(plan_id))
                .filter(jobs::Column::HostId.is_in(hosts))
                .filter(jobs::Column::Kind.eq(JobKind::Backup.as_str()))
                .filter(
                    jobs::Column::Status
                        .is_in([JobStatus::Succeeded.as_str(), JobStatus::Failed.as_str()]),
                )
                .into_tuple()
                .all(&txn)
                .await?;
            for host_id in ran {
                super::health::refresh(&txn, plan_id, host_id).await?;
            }
        }
        txn.commit().await?;
    }
    Ok(())
}

/// Moves one (plan, host) to its next run, only if its stored next run is
/// still `was` (so two passes never both move it).
pub async fn move_schedule<C: ConnectionTrait>(
    db: &C,
    id: i64,
    was: i64,
    next_run_at: i64,
    basis: &str,
) -> Result<bool> {
    let r = plan_schedules::Entity::update_many()
        .col_expr(plan_schedules::Column::NextRunAt, Expr::value(next_run_at))
        .col_expr(plan_schedules::Column::Basis, Expr::value(basis))
        .filter(plan_schedules::Column::Id.eq(id))
        .filter(plan_schedules::Column::NextRunAt.eq(was))
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

pub async fn delete_schedules<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(500) {
        plan_schedules::Entity::delete_many()
            .filter(plan_schedules::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// (plan, host) pairs whose next run is at or before `now`, earliest first.
pub async fn due_schedules<C: ConnectionTrait>(db: &C, now: i64) -> Result<Vec<ScheduleRow>> {
    Ok(plan_schedules::Entity::find()
        .filter(plan_schedules::Column::NextRunAt.lte(now))
        .order_by_asc(plan_schedules::Column::NextRunAt)
        .order_by_asc(plan_schedules::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// The earliest stored next run of any (plan, host) or repository.
pub async fn earliest<C: ConnectionTrait>(db: &C) -> Result<Option<i64>> {
    let a: Option<i64> = plan_schedules::Entity::find()
        .select_only()
        .column(plan_schedules::Column::NextRunAt)
        .order_by_asc(plan_schedules::Column::NextRunAt)
        .into_tuple()
        .one(db)
        .await?;
    let b: Option<i64> = repository_maintenance::Entity::find()
        .select_only()
        .column(repository_maintenance::Column::NextRunAt)
        .order_by_asc(repository_maintenance::Column::NextRunAt)
        .into_tuple()
        .one(db)
        .await?;
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

// ---------------------------------------------------------- maintenance

#[derive(Clone, Debug, PartialEq)]
pub struct MaintenanceRow {
    pub repository_id: i64,
    pub next_run_at: i64,
    pub basis: String,
}

impl From<repository_maintenance::Model> for MaintenanceRow {
    fn from(m: repository_maintenance::Model) -> Self {
        MaintenanceRow {
            repository_id: m.repository_id,
            next_run_at: m.next_run_at,
            basis: m.basis,
        }
    }
}

pub async fn maintenance<C: ConnectionTrait>(db: &C) -> Result<Vec<MaintenanceRow>> {
    Ok(repository_maintenance::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn set_maintenance<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
    next_run_at: i64,
    basis: &str,
) -> Result<()> {
    let existing = repository_maintenance::Entity::find_by_id(repository_id)
        .one(db)
        .await?;
    let m = repository_maintenance::ActiveModel {
        repository_id: Set(repository_id),
        next_run_at: Set(next_run_at),
        basis: Set(basis.to_string()),
    };
    if existing.is_some() {
        m.update(db).await?;
    } else {
        match m.insert(db).await {
            Err(e) if is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- runs

fn backups_of(plan_id: i64, host_id: i64) -> sea_orm::Select<jobs::Entity> {
    jobs::Entity::find()
        .filter(jobs::Column::PlanId.eq(plan_id))
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(jobs::Column::Kind.eq(JobKind::Backup.as_str()))
}

/// The latest backup job of a plan on a host, any status.
pub async fn last_backup<C: ConnectionTrait>(
    db: &C,
    plan_id: i64,
    host_id: i64,
) -> Result<Option<Job>> {
    Ok(backups_of(plan_id, host_id)
        .filter(jobs::Column::Status.ne(JobStatus::Skipped.as_str()))
        .order_by_desc(jobs::Column::Id)
        .one(db)
        .await?
        .map(Into::into))
}

/// The plan's backups on a host that are still queued or running.
pub async fn live_backups<C: ConnectionTrait>(
    db: &C,
    plan_id: i64,
    host_id: i64,
) -> Result<Vec<Job>> {
    Ok(backups_of(plan_id, host_id)
        .filter(
            jobs::Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
        )
        .order_by_asc(jobs::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Live scheduled maintenance jobs (forget, prune, check) in a scope.
pub async fn live_maintenance<C: ConnectionTrait>(db: &C, scope: &str) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(jobs::Entity::find()
        .filter(jobs::Column::Scope.eq(scope))
        .filter(jobs::Column::Kind.is_in([
            JobKind::Forget.as_str(),
            JobKind::Prune.as_str(),
            JobKind::Check.as_str(),
        ]))
        .filter(jobs::Column::ActorKind.eq("schedule"))
        .filter(
            jobs::Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
        )
        .count(db)
        .await?)
}

/// Moves a repository's maintenance to its next time, only if it is still
/// at `was`.
pub async fn move_maintenance<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
    was: i64,
    next_run_at: i64,
    basis: &str,
) -> Result<bool> {
    let r = repository_maintenance::Entity::update_many()
        .col_expr(
            repository_maintenance::Column::NextRunAt,
            Expr::value(next_run_at),
        )
        .col_expr(repository_maintenance::Column::Basis, Expr::value(basis))
        .filter(repository_maintenance::Column::RepositoryId.eq(repository_id))
        .filter(repository_maintenance::Column::NextRunAt.eq(was))
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}
