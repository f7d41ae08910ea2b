//! Users and roles. Guards that keep at least one admin live here, in the
//! statements themselves, so no caller can forget them.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError, is_unique_violation};
use crate::entities::users;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub created_at: i64,
}

impl From<users::Model> for User {
    fn from(m: users::Model) -> Self {
        User {
            id: m.id,
            username: m.username,
            // An unknown role string (hand-edited row) gets the least power.
            role: Role::parse(&m.role).unwrap_or(Role::Viewer),
            created_at: m.created_at,
        }
    }
}

pub fn validate_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "invalid_username",
            "usernames are 1–64 characters of letters, digits, '.', '-', '_' or '@'".into(),
        ))
    }
}

pub fn validate_password(pw: &str) -> Result<()> {
    if pw.chars().count() < 8 || pw.len() > 1024 {
        return Err(StoreError::Invalid(
            "weak_password",
            "passwords need at least 8 characters".into(),
        ));
    }
    Ok(())
}

pub async fn count<C: ConnectionTrait>(db: &C) -> Result<u64> {
    Ok(users::Entity::find().count(db).await?)
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    username: &str,
    password_hash: &str,
    role: Role,
    now: i64,
) -> Result<User> {
    validate_username(username)?;
    let m = users::ActiveModel {
        username: Set(username.to_string()),
        password_hash: Set(password_hash.to_string()),
        role: Set(role.as_str().to_string()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    match m.insert(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
            "username_taken",
            format!("a user named {username:?} already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// User and password hash for a login attempt.
pub async fn find_for_login<C: ConnectionTrait>(
    db: &C,
    username: &str,
) -> Result<Option<(User, String)>> {
    Ok(users::Entity::find()
        .filter(users::Column::Username.eq(username))
        .one(db)
        .await?
        .map(|m| {
            let hash = m.password_hash.clone();
            (m.into(), hash)
        }))
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<User> {
    users::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("user"))
}

pub async fn get_by_name<C: ConnectionTrait>(db: &C, username: &str) -> Result<Option<User>> {
    Ok(users::Entity::find()
        .filter(users::Column::Username.eq(username))
        .one(db)
        .await?
        .map(Into::into))
}

pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<User>> {
    Ok(users::Entity::find()
        .order_by_asc(users::Column::Username)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

fn last_admin() -> StoreError {
    StoreError::Conflict(
        "last_admin",
        "this is the last admin: make another user admin first".into(),
    )
}

/// "More than one admin exists" as a SQL condition, so the guard and the
/// write are one statement.
fn other_admins_exist() -> sea_orm::sea_query::SimpleExpr {
    Expr::cust("(SELECT COUNT(*) FROM users WHERE role = 'admin') > 1")
}

/// Takes the user's row for writing before anything is read in `txn`: on
/// SQLite a transaction that read first cannot take the write lock once
/// another connection has written (it fails at once, without waiting). A
/// no-op update, so an unknown user is simply not found next.
///
/// On Postgres it first locks every admin's row as well (in id order, so two
/// such transactions never deadlock): the last-admin guard counts admins, and
/// under READ COMMITTED two admins demoting or deleting each other at once
/// would each count the other and leave none. With the rows locked the second
/// waits for the first to commit and then counts what it left. (SQLite has
/// one writer at a time, so the no-op update already serializes them.)
pub async fn lock<C: ConnectionTrait>(txn: &C, id: i64) -> Result<()> {
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        users::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(users::Column::Role.eq(Role::Admin.as_str()))
                    .add(users::Column::Id.eq(id)),
            )
            .order_by_asc(users::Column::Id)
            .lock_exclusive()
            .all(txn)
            .await?;
    }
    let (col, key) = (users::Column::UpdatedAt, users::Column::Id);
    super::lock_row::<users::Entity, _>(txn, col, key, id).await
}

pub async fn set_role<C: ConnectionTrait>(db: &C, id: i64, role: Role, now: i64) -> Result<User> {
    let current = get(db, id).await?;
    if current.role == role {
        return Ok(current);
    }
    let mut q = users::Entity::update_many()
        .col_expr(users::Column::Role, Expr::value(role.as_str()))
        .col_expr(users::Column::UpdatedAt, Expr::value(now))
        .filter(users::Column::Id.eq(id));
    if current.role == Role::Admin {
        q = q.filter(other_admins_exist());
    }
    if q.exec(db).await?.rows_affected == 0 {
        return Err(last_admin());
    }
    get(db, id).await
}

pub async fn set_password_hash<C: ConnectionTrait>(
    db: &C,
    id: i64,
    password_hash: &str,
    now: i64,
) -> Result<()> {
    let r = users::Entity::update_many()
        .col_expr(users::Column::PasswordHash, Expr::value(password_hash))
        .col_expr(users::Column::UpdatedAt, Expr::value(now))
        .filter(users::Column::Id.eq(id))
        .exec(db)
        .await?;
    if r.rows_affected == 0 {
        return Err(StoreError::NotFound("user"));
    }
    Ok(())
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<User> {
    let current = get(db, id).await?;
    let mut q = users::Entity::delete_many().filter(users::Column::Id.eq(id));
    if current.role == Role::Admin {
        q = q.filter(other_admins_exist());
    }
    if q.exec(db).await?.rows_affected == 0 {
        return Err(last_admin());
    }
    Ok(current)
}
