//! Writes audit rows for admin-relevant actions. A failed audit write is
//! logged loudly but does not undo the action it describes (that already
//! happened); the row carries actor, action, target, details, client address.
use actix_web::HttpRequest;

use crate::{
    state::AppState,
    store::{self, users::User},
    web::client_ip,
};

/// Who did it: a logged-in user, or a named non-user actor (`agent`, `system`).
pub enum Actor<'a> {
    User(&'a User),
    Named(&'a str),
}

pub async fn record(
    state: &AppState,
    req: Option<&HttpRequest>,
    actor: Actor<'_>,
    action: &str,
    target_kind: &str,
    target_id: impl ToString,
    details: serde_json::Value,
) {
    let (name, id) = match actor {
        Actor::User(u) => (u.username.as_str(), Some(u.id)),
        Actor::Named(n) => (n, None),
    };
    let entry = store::audit::NewEntry {
        at: state.clock.now_ms(),
        actor: name,
        actor_id: id,
        action,
        target_kind,
        target_id: target_id.to_string(),
        details,
        client_addr: req
            .and_then(client_ip)
            .map(|i| i.to_string())
            .unwrap_or_default(),
    };
    if let Err(e) = store::audit::record(&state.db, entry).await {
        tracing::error!(error = %e, action, "writing an audit row failed");
    }
}
