//! One-time enrollment tokens: random, stored hashed, valid 24 hours, used
//! up atomically by the first successful enroll.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::Expr,
};

use super::{Result, StoreError};
use crate::{auth, entities::enrollment_tokens};

pub const TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;

pub struct NewToken {
    pub token: String,
    pub expires_at: i64,
}

pub async fn create<C: ConnectionTrait>(db: &C, host_id: i64, now: i64) -> Result<NewToken> {
    let token = auth::new_enrollment_token();
    let expires_at = now + TOKEN_TTL_MS;
    enrollment_tokens::ActiveModel {
        host_id: Set(host_id),
        token_hash: Set(auth::token_hash(&token)),
        created_at: Set(now),
        expires_at: Set(expires_at),
        used_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(NewToken { token, expires_at })
}

fn invalid() -> StoreError {
    StoreError::Invalid(
        "invalid_token",
        "enrollment token not recognised: create a new host token in the dashboard".into(),
    )
}

/// The token's host if the token is valid and unused (does not use it up).
pub async fn check<C: ConnectionTrait>(db: &C, token: &str, now: i64) -> Result<i64> {
    let hash = auth::token_hash(token);
    let row = enrollment_tokens::Entity::find()
        .filter(enrollment_tokens::Column::TokenHash.eq(hash.as_str()))
        .one(db)
        .await?
        .ok_or_else(invalid)?;
    if !auth::hashes_equal(&row.token_hash, &hash) {
        return Err(invalid());
    }
    if row.used_at.is_some() {
        return Err(StoreError::Invalid(
            "token_used",
            "this enrollment token was already used: create a new one for the host".into(),
        ));
    }
    if row.expires_at <= now {
        return Err(StoreError::Invalid(
            "token_expired",
            "this enrollment token expired (they last 24 hours): create a new one".into(),
        ));
    }
    Ok(row.host_id)
}

/// Uses the token up; exactly one concurrent caller wins. The guarded
/// write comes first: on SQLite a transaction that read before writing
/// cannot take the write lock once another connection has written.
pub async fn redeem<C: ConnectionTrait>(db: &C, token: &str, now: i64) -> Result<i64> {
    let hash = auth::token_hash(token);
    let r = enrollment_tokens::Entity::update_many()
        .col_expr(enrollment_tokens::Column::UsedAt, Expr::value(now))
        .filter(enrollment_tokens::Column::TokenHash.eq(hash.as_str()))
        .filter(enrollment_tokens::Column::UsedAt.is_null())
        .filter(enrollment_tokens::Column::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    if r.rows_affected != 1 {
        // Say why: unknown, used or expired.
        check(db, token, now).await?;
        return Err(StoreError::Invalid(
            "token_used",
            "this enrollment token was already used: create a new one for the host".into(),
        ));
    }
    let row = enrollment_tokens::Entity::find()
        .filter(enrollment_tokens::Column::TokenHash.eq(hash.as_str()))
        .one(db)
        .await?
        .ok_or_else(invalid)?;
    Ok(row.host_id)
}
