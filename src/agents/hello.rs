//! The hello service: checks an agent's hello and sequences what it means,
//! in order: presence (the host's facts), alerts, then, once the transport
//! has acknowledged it, updates and restic.
use agent::wire::{Envelope, Hello, HelloAck, HelloRejected, Message as _};

use crate::{
    agent_binaries::check_platform, agents::marks::Mark, state::AppState, store::hosts::HelloFacts,
    version,
};

/// Checks a hello's fields; the reason is sent back to the agent.
pub fn validate_hello(h: &Hello) -> Result<HelloFacts, String> {
    let printable = |s: &str| s.chars().all(|c| c.is_ascii_graphic());
    if h.agent_version.is_empty() || h.agent_version.len() > 64 || !printable(&h.agent_version) {
        return Err("agent_version must be 1–64 printable characters".into());
    }
    let Some((os, arch)) = check_platform(&h.os, &h.arch) else {
        return Err(format!(
            "unsupported platform {:?}/{:?}",
            truncate(&h.os),
            truncate(&h.arch)
        ));
    };
    let hostname_ok = !h.hostname.is_empty()
        && h.hostname.len() <= 253
        && h.hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !hostname_ok {
        return Err("hostname must be 1–253 characters of letters, digits, '.', '-' or '_'".into());
    }
    Ok(HelloFacts {
        agent_version: h.agent_version.clone(),
        os: os.to_string(),
        arch: arch.to_string(),
        hostname: h.hostname.clone(),
        restic_version: h
            .restic_version
            .as_deref()
            .map(|v| crate::text::one_line(v, 64)),
        restic_capable: h.running_jobs.is_some(),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// A hello that was accepted and recorded.
pub struct Accepted {
    /// As received; its fields passed [`validate_hello`].
    hello: Hello,
    /// The alerts this hello may settle that were open when it arrived.
    open: crate::alerts::OpenOnHello,
    /// The `hello.ack` frame for the transport to send.
    pub ack: String,
}

/// Why a hello was not accepted.
pub enum Refused {
    /// Bad fields: send `frame` (`hello.rejected`) and close.
    Rejected { frame: String },
    /// A newer connection of the same host took over.
    Replaced,
    /// Recording it failed.
    ServerError,
}

/// Checks `host_id`'s hello on connection `conn_id` and records it: the
/// host's facts, then the alerts it settles. The transport then sends
/// [`Accepted::ack`] and calls [`after_ack`].
pub async fn accept(
    state: &AppState,
    host_id: i64,
    conn_id: u64,
    env: &Envelope,
) -> Result<Accepted, Refused> {
    let parsed = env.payload::<Hello>();
    let checked = parsed
        // serde quotes the bad value: keep the reason short.
        .map_err(|e| crate::text::one_line(&e.to_string(), 256))
        .and_then(|h| validate_hello(&h).map(|f| (h, f)));
    let (hello, facts) = match checked {
        Ok(v) => v,
        Err(reason) => {
            tracing::warn!(%reason, "hello rejected");
            let frame = HelloRejected { reason }.envelope().to_text();
            return Err(Refused::Rejected { frame });
        }
    };
    if !state.hub.is_current(host_id, conn_id) {
        return Err(Refused::Replaced);
    }
    if let Err(e) = state.presence.hello(host_id, facts).await {
        tracing::error!(error = %e, "recording hello failed");
        return Err(Refused::ServerError);
    }
    let open = crate::alerts::open_on_hello(state, host_id).await;
    if open.host_offline {
        crate::alerts::on_hello(state, host_id).await;
    }
    tracing::info!(agent_version = %hello.agent_version, hostname = %hello.hostname, "agent hello");
    let ack = HelloAck {
        host_id,
        server_version: version::VERSION.to_string(),
    }
    .envelope()
    .to_text();
    Ok(Accepted { hello, open, ack })
}

/// What an acknowledged hello settles: the host's update job, then its
/// restic jobs. A host the in-memory record says has no live job
/// (`agents::marks`) skips both reads; one whose reads find none is cleared.
pub async fn after_ack(state: &AppState, host_id: i64, conn_id: u64, a: &Accepted) {
    let seen = state.marks.seen(Mark::Jobs, host_id);
    let update = crate::updates::on_hello(
        state,
        host_id,
        conn_id,
        &a.hello.agent_version,
        a.hello.update.as_ref(),
        a.open.update_failed,
        seen.maybe,
    )
    .await;
    let restic = crate::restic::events::on_hello(
        state,
        host_id,
        &a.hello,
        a.open.restic_missing,
        seen.maybe,
    )
    .await;
    if !update && !restic {
        state.marks.settled(Mark::Jobs, host_id, seen);
    }
}
