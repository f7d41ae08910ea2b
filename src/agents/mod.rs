//! What a connected agent's messages do, by message type; the socket
//! itself (frames, pings, closes) is `web/agent_ws.rs`'s. A hello goes to
//! [`hello`], which sequences its effects; job messages go to the job
//! lifecycle in `crate::jobs`.
pub mod hello;
pub mod marks;
pub mod secret_cache;

use agent::wire::{self, Envelope};

use crate::state::AppState;

/// One message from `host_id`'s agent after its hello.
pub async fn message(state: &AppState, host_id: i64, env: &Envelope) {
    match env.kind.as_str() {
        wire::JOB_STARTED
        | wire::JOB_FINISHED
        | wire::LOG_STREAM
        | wire::JOB_PROGRESS
        | wire::JOB_SNAPSHOTS => {
            crate::jobs::agent_message(state, host_id, env).await;
        }
        other => {
            tracing::debug!(kind = %crate::text::one_line(other, 64), "unknown message type ignored");
        }
    }
}
