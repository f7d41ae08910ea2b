//! What the command line creates: users (also the first admin at start)
//! and hosts. The HTTP handlers go through the services in `crate::users`
//! and `crate::hosts`, which share these rules and add the audit row.
use sea_orm::{DatabaseConnection, TransactionTrait};

pub use crate::hosts::CreatedHost;
use crate::{
    auth,
    store::{
        StoreError,
        users::{self, Role, User},
    },
};

/// A new host and its one-time enrollment token, in one transaction (the
/// command line's `host add`).
pub async fn host_add(
    db: &DatabaseConnection,
    name: &str,
    now: i64,
) -> Result<CreatedHost, StoreError> {
    let txn = db.begin().await?;
    let created = crate::hosts::create(&txn, name, now).await?;
    txn.commit().await?;
    Ok(created)
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
