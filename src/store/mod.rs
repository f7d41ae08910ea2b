//! All database access, one file per aggregate. Functions take a
//! `&DatabaseConnection` (or any `ConnectionTrait`) and return domain
//! structs; sea-orm types never leave this module.
pub mod agent_binaries;
pub mod alerts;
pub mod audit;
pub mod enrollment;
pub mod fleet_updates;
pub mod gate;
pub mod health;
pub mod hosts;
pub mod jobs;
pub mod notifications;
pub mod plan_batches;
pub mod plans;
pub mod repositories;
pub mod retention;
pub mod sessions;
pub mod snapshots;
pub mod users;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    Invalid(&'static str, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Page of a list query: `limit` capped at 1000 (default 100).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub limit: u64,
    pub offset: u64,
}

impl Page {
    pub const MAX: u64 = 1000;
    /// Largest offset: the database takes a signed 64-bit number (the driver
    /// panics beyond it), and `offset + limit` (the next page) must fit too.
    /// Any offset this large is past the end: an empty page.
    pub const MAX_OFFSET: u64 = i64::MAX as u64 - Self::MAX;
    pub fn new(limit: Option<u64>, offset: Option<u64>) -> Self {
        Page {
            limit: limit.unwrap_or(100).clamp(1, Self::MAX),
            offset: offset.unwrap_or(0).min(Self::MAX_OFFSET),
        }
    }
}

/// True when the error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Takes row `id` of `E` for writing before anything is read in `txn`: a
/// no-op update of `col` where `key` is `id`. On SQLite a transaction that
/// read first cannot take the write lock once another connection has
/// written (it fails at once, without waiting); on Postgres other writers
/// of the row wait for `txn` and then see what it left. A row that does not
/// exist is simply not found next.
pub(crate) async fn lock_row<E, C>(txn: &C, col: E::Column, key: E::Column, id: i64) -> Result<()>
where
    E: sea_orm::EntityTrait,
    C: sea_orm::ConnectionTrait,
{
    use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
    E::update_many()
        .col_expr(col, Expr::col(col))
        .filter(key.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}
