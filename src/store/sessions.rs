//! Server-side login sessions. The cookie carries a random token; only its
//! hash is stored. Sessions expire after an idle period and at an absolute
//! limit; logout deletes the row.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::Expr,
};

use super::{Result, users::User};
use crate::{
    auth,
    entities::{sessions, users},
};

/// Only refresh `last_seen_at` this often, so browsing is not a write per click.
const TOUCH_EVERY_MS: i64 = 60_000;

pub struct NewSession {
    pub token: String,
    pub expires_at: i64,
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    client_addr: &str,
    now: i64,
    absolute_ms: i64,
) -> Result<NewSession> {
    let token = auth::random_token();
    let expires_at = now + absolute_ms;
    sessions::ActiveModel {
        token_hash: Set(auth::token_hash(&token)),
        user_id: Set(user_id),
        created_at: Set(now),
        last_seen_at: Set(now),
        expires_at: Set(expires_at),
        client_addr: Set(client_addr.chars().take(64).collect()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(NewSession { token, expires_at })
}

/// The user behind a session token, if the session is alive.
pub async fn lookup<C: ConnectionTrait>(
    db: &C,
    token: &str,
    now: i64,
    idle_ms: i64,
) -> Result<Option<User>> {
    let hash = auth::token_hash(token);
    let Some(s) = sessions::Entity::find()
        .filter(sessions::Column::TokenHash.eq(hash.as_str()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if !auth::hashes_equal(&s.token_hash, &hash) {
        return Ok(None);
    }
    if s.expires_at <= now || s.last_seen_at + idle_ms <= now {
        sessions::Entity::delete_by_id(s.id).exec(db).await?;
        return Ok(None);
    }
    let Some(u) = users::Entity::find_by_id(s.user_id).one(db).await? else {
        return Ok(None);
    };
    if now - s.last_seen_at >= TOUCH_EVERY_MS {
        sessions::Entity::update_many()
            .col_expr(sessions::Column::LastSeenAt, Expr::value(now))
            .filter(sessions::Column::Id.eq(s.id))
            .exec(db)
            .await?;
    }
    Ok(Some(u.into()))
}

pub async fn delete<C: ConnectionTrait>(db: &C, token: &str) -> Result<()> {
    sessions::Entity::delete_many()
        .filter(sessions::Column::TokenHash.eq(auth::token_hash(token)))
        .exec(db)
        .await?;
    Ok(())
}

/// Ends every session of a user (password reset, role change, removal).
pub async fn delete_for_user<C: ConnectionTrait>(db: &C, user_id: i64) -> Result<()> {
    sessions::Entity::delete_many()
        .filter(sessions::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Ends every session of `user_id` but the one whose token is `keep`.
pub async fn delete_for_user_except<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    keep: Option<&str>,
) -> Result<()> {
    let mut q = sessions::Entity::delete_many().filter(sessions::Column::UserId.eq(user_id));
    if let Some(token) = keep {
        q = q.filter(sessions::Column::TokenHash.ne(auth::token_hash(token)));
    }
    q.exec(db).await?;
    Ok(())
}

pub async fn purge_expired<C: ConnectionTrait>(db: &C, now: i64, idle_ms: i64) -> Result<u64> {
    let r = sessions::Entity::delete_many()
        .filter(
            sea_orm::Condition::any()
                .add(sessions::Column::ExpiresAt.lte(now))
                .add(sessions::Column::LastSeenAt.lte(now - idle_ms)),
        )
        .exec(db)
        .await?;
    Ok(r.rows_affected)
}
