//! Creating users and hosts, shared by the command line and the HTTP
//! handlers so both enforce the same rules.
use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::{
    auth,
    store::{
        StoreError, enrollment, hosts,
        users::{self, Role, User},
    },
};

pub struct CreatedHost {
    pub host_id: i64,
    pub name: String,
    pub enrollment_token: String,
    pub expires_at: i64,
}

/// A new host and its one-time enrollment token, in one transaction.
pub async fn host_add(
    db: &DatabaseConnection,
    name: &str,
    now: i64,
) -> Result<CreatedHost, StoreError> {
    let txn = db.begin().await?;
    let host = hosts::create(&txn, name, now).await?;
    let token = enrollment::create(&txn, host.id, now).await?;
    txn.commit().await?;
    Ok(CreatedHost {
        host_id: host.id,
        name: host.name,
        enrollment_token: token.token,
        expires_at: token.expires_at,
    })
}

/// A fresh enrollment token for an existing host (re-enrolment).
pub async fn host_new_token(
    db: &DatabaseConnection,
    host_id: i64,
    now: i64,
) -> Result<enrollment::NewToken, StoreError> {
    hosts::get(db, host_id).await?;
    enrollment::create(db, host_id, now).await
}

/// Creates a user, or for the command line resets an existing one's
/// password and role.
pub async fn user_save(
    db: &DatabaseConnection,
    username: &str,
    role: Role,
    password: &str,
    now: i64,
) -> anyhow::Result<User> {
    users::validate_username(username)?;
    users::validate_password(password)?;
    let hash = auth::hash_password(password)?;
    match users::get_by_name(db, username).await? {
        None => Ok(users::create(db, username, &hash, role, now).await?),
        Some(existing) => {
            users::set_password_hash(db, existing.id, &hash, now).await?;
            let u = users::set_role(db, existing.id, role, now).await?;
            crate::store::sessions::delete_for_user(db, existing.id).await?;
            Ok(u)
        }
    }
}
