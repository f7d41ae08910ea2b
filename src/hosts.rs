//! Host administration as services: each action takes the acting admin
//! ([`Actor`]) and writes its audit row in the transaction of the change,
//! like `crate::users`. The JSON API and the pages are thin wrappers over
//! these; the command line's `host add` uses [`create`] (no actor, no
//! audit row, as before). Each transaction writes before it reads, as
//! SQLite needs.
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;

use crate::{
    audit::{self, Actor, Entry},
    error::AppError,
    state::AppState,
    store::{
        StoreError, enrollment,
        hosts::{self, Host},
    },
};

pub struct CreatedHost {
    pub host_id: i64,
    pub name: String,
    pub enrollment_token: String,
    pub expires_at: i64,
}

/// A new host and its one-time enrollment token, on `db` (a transaction).
pub async fn create<C: ConnectionTrait>(
    db: &C,
    name: &str,
    now: i64,
) -> Result<CreatedHost, StoreError> {
    let host = hosts::create(db, name, now).await?;
    let token = enrollment::create(db, host.id, now).await?;
    Ok(CreatedHost {
        host_id: host.id,
        name: host.name,
        enrollment_token: token.token,
        expires_at: token.expires_at,
    })
}

/// Adds a host named `name` with its enrollment token; audited `host.add`.
pub async fn add(state: &AppState, by: &Actor, name: &str) -> Result<CreatedHost, AppError> {
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    let created = create(&txn, name, now).await?;
    let entry = Entry::new(
        "host.add",
        "host",
        created.host_id,
        json!({"name": created.name}),
    );
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    tracing::info!(host_id = created.host_id, by = %by.name, "host added");
    Ok(created)
}

/// A fresh enrollment token for host `id` (re-enrolment); audited
/// `host.token_create`. Returns the host with it.
pub async fn new_token(
    state: &AppState,
    by: &Actor,
    id: i64,
) -> Result<(Host, enrollment::NewToken), AppError> {
    let host = hosts::get(&state.db, id).await?;
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    let token = enrollment::create(&txn, host.id, now).await?;
    let entry = Entry::new("host.token_create", "host", host.id, json!({}));
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    Ok((host, token))
}

/// Removes host `id` (its jobs and logs go with it) and closes its agent's
/// connection; audited `host.remove` in the transaction of the removal.
pub async fn remove(state: &AppState, by: &Actor, id: i64) -> Result<Host, AppError> {
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    let host = hosts::delete(&txn, id).await?;
    let entry = Entry::new("host.remove", "host", host.id, json!({"name": host.name}));
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    // Its agent's secret stops working at once (`agents::secret_cache`).
    state.agent_secrets.forget_host(id);
    state.hub.disconnect(id, "host removed");
    tracing::info!(host_id = host.id, by = %by.name, "host removed");
    Ok(host)
}
