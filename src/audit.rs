//! Audit rows for admin-relevant actions: actor, action, target, details,
//! client address. A service writes its row with [`record`] in the
//! transaction of the action, so both commit or neither does; the few
//! actions outside a transaction (logins, settings) use [`record_logged`],
//! where a failed write is logged loudly but does not undo what happened.
use sea_orm::ConnectionTrait;

use crate::{
    state::AppState,
    store::{self, users::User},
};

/// Who did it: a user, or a named non-user (`agent`, `system`, what was
/// typed at a failed login), and from where.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    /// The user's id; None for a non-user.
    pub id: Option<i64>,
    /// The client's address, empty when unknown.
    pub client_addr: String,
}

impl Actor {
    pub fn user(u: &User, client_addr: impl Into<String>) -> Actor {
        Actor {
            name: u.username.clone(),
            id: Some(u.id),
            client_addr: client_addr.into(),
        }
    }

    pub fn named(name: &str, client_addr: impl Into<String>) -> Actor {
        Actor {
            name: name.to_string(),
            id: None,
            client_addr: client_addr.into(),
        }
    }
}

/// What an audit row says happened.
pub struct Entry<'a> {
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: String,
    pub details: serde_json::Value,
}

impl<'a> Entry<'a> {
    pub fn new(
        action: &'a str,
        target_kind: &'a str,
        target_id: impl ToString,
        details: serde_json::Value,
    ) -> Self {
        Entry {
            action,
            target_kind,
            target_id: target_id.to_string(),
            details,
        }
    }
}

/// Writes the row with `db`: a service passes its transaction.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    at: i64,
    actor: &Actor,
    entry: Entry<'_>,
) -> store::Result<()> {
    store::audit::record(
        db,
        store::audit::NewEntry {
            at,
            actor: &actor.name,
            actor_id: actor.id,
            action: entry.action,
            target_kind: entry.target_kind,
            target_id: entry.target_id,
            details: entry.details,
            client_addr: actor.client_addr.clone(),
        },
    )
    .await
}

/// Writes the row on its own; a failure is logged, not returned.
pub async fn record_logged(state: &AppState, actor: &Actor, entry: Entry<'_>) {
    let action = entry.action.to_string();
    if let Err(e) = record(&state.db, state.clock.now_ms(), actor, entry).await {
        tracing::error!(error = %e, action, "writing an audit row failed");
    }
}
