//! Repositories. Secrets are stored sealed (the service seals and opens
//! them with the server's key); [`Repository`] carries none of them, so a
//! handler can never show one by accident. [`Sealed`] is for dispatch only.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Serialize;

use super::{Page, Result, StoreError, is_unique_violation};
use crate::entities::{jobs, repositories};

/// A repository as anyone may see it: URL masked, no password, env names only.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Repository {
    pub id: i64,
    pub name: String,
    pub url_masked: String,
    pub local: bool,
    pub env_keys: Vec<String>,
    pub password_set: bool,
    pub maintenance_host_id: Option<i64>,
    pub maintenance_schedule: String,
    pub prune: bool,
    pub max_unused: Option<String>,
    pub check_every_days: i32,
    pub check_read_data_subset: Option<String>,
    pub max_concurrent_backups: i32,
    pub last_check_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The sealed secrets of a repository, as stored.
#[derive(Clone)]
pub struct Sealed {
    pub url: String,
    pub password: String,
    pub env: Option<String>,
}

impl From<repositories::Model> for Repository {
    fn from(m: repositories::Model) -> Self {
        Repository {
            id: m.id,
            name: m.name,
            url_masked: m.url_masked,
            local: m.local,
            env_keys: serde_json::from_str(&m.env_keys).unwrap_or_default(),
            password_set: !m.password_enc.is_empty(),
            maintenance_host_id: m.maintenance_host_id,
            maintenance_schedule: m.maintenance_schedule,
            prune: m.prune,
            max_unused: m.max_unused,
            check_every_days: m.check_every_days,
            check_read_data_subset: m.check_read_data_subset,
            max_concurrent_backups: m.max_concurrent_backups,
            last_check_at: m.last_check_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Everything a repository row holds, secrets already sealed.
#[derive(Clone, Debug)]
pub struct RepositoryRow {
    pub name: String,
    pub url_enc: String,
    pub url_masked: String,
    pub local: bool,
    pub password_enc: String,
    pub env_enc: Option<String>,
    pub env_keys: Vec<String>,
    pub maintenance_host_id: Option<i64>,
    pub maintenance_schedule: String,
    pub prune: bool,
    pub max_unused: Option<String>,
    pub check_every_days: i32,
    pub check_read_data_subset: Option<String>,
    pub max_concurrent_backups: i32,
}

fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(
        "name_taken",
        format!("a repository named {name:?} already exists"),
    )
}

fn active(r: &RepositoryRow) -> repositories::ActiveModel {
    repositories::ActiveModel {
        name: Set(r.name.clone()),
        url_enc: Set(r.url_enc.clone()),
        url_masked: Set(r.url_masked.clone()),
        local: Set(r.local),
        password_enc: Set(r.password_enc.clone()),
        env_enc: Set(r.env_enc.clone()),
        env_keys: Set(serde_json::to_string(&r.env_keys).unwrap_or_else(|_| "[]".into())),
        maintenance_host_id: Set(r.maintenance_host_id),
        maintenance_schedule: Set(r.maintenance_schedule.clone()),
        prune: Set(r.prune),
        max_unused: Set(r.max_unused.clone()),
        check_every_days: Set(r.check_every_days),
        check_read_data_subset: Set(r.check_read_data_subset.clone()),
        max_concurrent_backups: Set(r.max_concurrent_backups),
        ..Default::default()
    }
}

pub async fn create<C: ConnectionTrait>(db: &C, r: &RepositoryRow, now: i64) -> Result<Repository> {
    let mut m = active(r);
    m.created_at = Set(now);
    m.updated_at = Set(now);
    m.last_check_at = Set(None);
    match m.insert(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&r.name)),
        Err(e) => Err(e.into()),
    }
}

/// Replaces every stored field of repository `id` with `r`.
pub async fn update<C: ConnectionTrait>(
    db: &C,
    id: i64,
    r: &RepositoryRow,
    now: i64,
) -> Result<Repository> {
    let mut m = active(r);
    m.id = Set(id);
    m.updated_at = Set(now);
    match m.update(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&r.name)),
        Err(sea_orm::DbErr::RecordNotUpdated) => Err(StoreError::NotFound("repository")),
        Err(e) => Err(e.into()),
    }
}

async fn model<C: ConnectionTrait>(db: &C, id: i64) -> Result<repositories::Model> {
    repositories::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("repository"))
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Repository> {
    Ok(model(db, id).await?.into())
}

/// The repository and its stored row (sealed secrets included), for the
/// service that edits or dispatches it.
pub async fn get_row<C: ConnectionTrait>(db: &C, id: i64) -> Result<(Repository, RepositoryRow)> {
    let m = model(db, id).await?;
    let row = RepositoryRow {
        name: m.name.clone(),
        url_enc: m.url_enc.clone(),
        url_masked: m.url_masked.clone(),
        local: m.local,
        password_enc: m.password_enc.clone(),
        env_enc: m.env_enc.clone(),
        env_keys: serde_json::from_str(&m.env_keys).unwrap_or_default(),
        maintenance_host_id: m.maintenance_host_id,
        maintenance_schedule: m.maintenance_schedule.clone(),
        prune: m.prune,
        max_unused: m.max_unused.clone(),
        check_every_days: m.check_every_days,
        check_read_data_subset: m.check_read_data_subset.clone(),
        max_concurrent_backups: m.max_concurrent_backups,
    };
    Ok((m.into(), row))
}

pub async fn sealed<C: ConnectionTrait>(db: &C, id: i64) -> Result<Sealed> {
    let m = model(db, id).await?;
    Ok(Sealed {
        url: m.url_enc,
        password: m.password_enc,
        env: m.env_enc,
    })
}

pub async fn list<C: ConnectionTrait>(db: &C, page: Page) -> Result<Vec<Repository>> {
    Ok(repositories::Entity::find()
        .order_by_asc(repositories::Column::Name)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Deletes a repository that no plan and no live job uses (plans also hold
/// theirs with a foreign key).
pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<Repository> {
    let m = model(db, id).await?;
    if let Some(p) = crate::entities::plans::Entity::find()
        .filter(crate::entities::plans::Column::RepositoryId.eq(id))
        .one(db)
        .await?
    {
        return Err(StoreError::Conflict(
            "in_use",
            format!(
                "plan {:?} backs up into this repository: delete the plan or move it to another repository first",
                p.name
            ),
        ));
    }
    let live = jobs::Entity::find()
        .filter(jobs::Column::RepositoryId.eq(id))
        .filter(jobs::Column::Status.is_in(["queued", "running"]))
        .one(db)
        .await?;
    if let Some(j) = live {
        return Err(StoreError::Conflict(
            "in_use",
            format!(
                "job {} on this repository is still {}: wait for it or cancel it first",
                j.id, j.status
            ),
        ));
    }
    repositories::Entity::delete_by_id(id).exec(db).await?;
    Ok(m.into())
}

/// Key ids of every sealed value stored, so a start without the key file
/// can say which key the database needs.
pub async fn sealed_key_ids<C: ConnectionTrait>(db: &C) -> Result<Vec<String>> {
    let rows: Vec<String> = repositories::Entity::find()
        .select_only()
        .column(repositories::Column::PasswordEnc)
        .into_tuple()
        .all(db)
        .await?;
    let mut ids: Vec<String> = rows
        .iter()
        .filter_map(|s| crate::secrets::sealed_key_id(s).map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

pub async fn set_last_check<C: ConnectionTrait>(db: &C, id: i64, at: i64) -> Result<()> {
    repositories::Entity::update_many()
        .col_expr(
            repositories::Column::LastCheckAt,
            sea_orm::sea_query::Expr::value(at),
        )
        .filter(repositories::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}
