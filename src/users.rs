//! User administration as services: each action takes the acting admin
//! ([`Actor`]) and writes its audit row in the transaction of the change.
//! The JSON API and the settings page are thin wrappers over these. Each
//! transaction writes before it reads (`users::lock`), as SQLite needs.
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::{
    audit::{self, Actor, Entry},
    auth,
    error::AppError,
    state::AppState,
    store::{
        self,
        users::{self, Role, User},
    },
};

pub fn parse_role(s: &str) -> Result<Role, AppError> {
    Role::parse(s).ok_or_else(|| {
        AppError::BadRequest(
            "invalid_role",
            format!("role must be viewer, operator or admin, not {s:?}"),
        )
    })
}

/// A valid password's hash, computed in a password-work turn.
async fn hash(password: &str) -> Result<String, AppError> {
    users::validate_password(password)?;
    let pw = password.to_string();
    auth::password_work(move || auth::hash_password(&pw))
        .await
        .ok_or_else(|| {
            AppError::TooManyRequests(
                "server_busy",
                "the server is busy checking passwords: try again in a few seconds".into(),
                5,
            )
        })?
        .map_err(AppError::Internal)
}

pub async fn add(
    state: &AppState,
    by: &Actor,
    username: &str,
    password: &str,
    role: &str,
) -> Result<User, AppError> {
    let role = parse_role(role)?;
    users::validate_username(username)?;
    let h = hash(password).await?;
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    let u = users::create(&txn, username, &h, role, now).await?;
    let details = json!({"username": u.username, "role": role});
    audit::record(&txn, now, by, Entry::new("user.add", "user", u.id, details)).await?;
    txn.commit().await?;
    tracing::info!(user = %u.username, role = role.as_str(), by = %by.name, "user added");
    Ok(u)
}

pub async fn change_role(
    state: &AppState,
    by: &Actor,
    id: i64,
    role: &str,
) -> Result<User, AppError> {
    let role = parse_role(role)?;
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    users::lock(&txn, id).await?;
    let u = users::set_role(&txn, id, role, now).await?;
    // Sessions carry no role (it is read per request), so nothing to revoke.
    let details = json!({"username": u.username, "role": role});
    let entry = Entry::new("user.role_change", "user", u.id, details);
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    tracing::info!(user = %u.username, role = role.as_str(), by = %by.name, "role changed");
    Ok(u)
}

/// Sets a user's password and ends all their sessions but `current_session`
/// (the session token of the request doing it: resetting your own password
/// keeps you logged in here and logs you out everywhere else).
pub async fn reset_password(
    state: &AppState,
    by: &Actor,
    id: i64,
    password: &str,
    current_session: Option<&str>,
) -> Result<User, AppError> {
    let h = hash(password).await?;
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    users::lock(&txn, id).await?;
    let u = users::get(&txn, id).await?;
    users::set_password_hash(&txn, id, &h, now).await?;
    // A reset ends the user's other sessions, one's own included: a
    // password changed because it leaked must not leave a thief logged in.
    store::sessions::delete_for_user_except(&txn, id, current_session).await?;
    let details = json!({"username": u.username});
    let entry = Entry::new("user.password_reset", "user", u.id, details);
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    tracing::info!(user = %u.username, by = %by.name, "password reset");
    Ok(u)
}

pub async fn remove(state: &AppState, by: &Actor, id: i64) -> Result<User, AppError> {
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    users::lock(&txn, id).await?;
    let u = users::delete(&txn, id).await?;
    let details = json!({"username": u.username});
    audit::record(
        &txn,
        now,
        by,
        Entry::new("user.remove", "user", u.id, details),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(user = %u.username, by = %by.name, "user removed");
    Ok(u)
}
