//! `GET /agent/ws`: the transport, one task per connected agent.
//! Authenticates the agent secret, registers with the hub (replacing an
//! older connection of the same host), reads frames and hands them on (a
//! hello to `agents::hello`, the rest to `agents::message`), writes frames
//! and keeps the link alive with pings. Never holds a lock across an await; unknown message types are
//! logged and ignored; oversized frames close with a policy violation.
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, rt, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use agent::wire::{self, Envelope, HelloAck, Message as _};
use futures_util::{FutureExt, StreamExt};

use super::{
    AppError,
    agent_binary::{bearer, host_for_secret},
};
use crate::{
    agents::hello::{self, Refused},
    hub::Outbound,
    routes,
    state::AppState,
};

/// An agent that has not said hello by then is dropped.
const HELLO_DEADLINE: Duration = Duration::from_secs(30);

/// Longest a single send to an agent may wait. A peer that stops reading
/// fills its buffers and then every send would wait forever: it is closed
/// instead, and its task ends.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one send on the session with [`SEND_TIMEOUT`]; false when it failed
/// or timed out (the connection is to be dropped).
async fn sent<F>(send: F) -> bool
where
    F: std::future::Future<Output = Result<(), actix_ws::Closed>>,
{
    matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(())))
}

async fn agent_ws(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    super::agent_request_allowed(&req)?;
    let Some(secret) = bearer(&req) else {
        return Err(AppError::Unauthenticated(
            "unauthorized",
            "send `Authorization: Bearer <agent secret>`; enroll the host first".into(),
        )
        .into());
    };
    let Some(host_id) = host_for_secret(&state, secret).await? else {
        tracing::warn!(peer = ?req.peer_addr(), "agent connection with an unknown secret");
        return Err(AppError::Unauthenticated(
            "invalid_secret",
            "agent secret not recognised: re-enroll this host with a new token".into(),
        )
        .into());
    };
    let (resp, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(wire::MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(wire::MAX_FRAME_BYTES);
    let state = state.get_ref().clone();
    // Each connected agent costs this task (kept small: the work done per
    // message is boxed) plus actix's per-connection buffers.
    let fut = connection(state, host_id, session, stream);
    rt::spawn(async move {
        let span = tracing::info_span!("agent", host_id);
        let _ = tracing::Instrument::instrument(fut, span).await;
    });
    Ok(resp)
}

fn close(code: CloseCode, why: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(why.to_string()),
    })
}

/// A frame over the limit, or fragments adding up to more than it
/// (actix-ws reports the latter only as an I/O error with this text).
fn is_too_large(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io
            .to_string()
            .contains("Exceeded maximum continuation size"),
        _ => false,
    }
}

/// The per-connection message limiter (`agent_messages_per_sec`, burst).
fn message_limiter(state: &AppState) -> governor::DefaultDirectRateLimiter {
    let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::direct(
        governor::Quota::per_second(nz(state.settings.agent_messages_per_sec))
            .allow_burst(nz(state.settings.agent_messages_burst)),
    )
}

/// Most `log.stream` messages stored in one transaction.
const LOG_BATCH: usize = 256;

type Incoming = Option<Result<AggregatedMessage, actix_ws::ProtocolError>>;

/// The held-over message if there is one, else the next from the socket.
/// Cancel-safe: `pending` is taken only when this is first polled, and then
/// it completes at once.
async fn next_message(
    pending: &mut Option<Incoming>,
    stream: &mut actix_ws::AggregatedMessageStream,
) -> Incoming {
    match pending.take() {
        Some(m) => m,
        None => stream.next().await,
    }
}

/// The envelope, when `text` is a well-formed `log.stream` message.
fn log_line(text: &str) -> Option<Envelope> {
    Envelope::parse(text)
        .ok()
        .filter(|e| e.kind == wire::LOG_STREAM)
}

async fn connection(
    state: AppState,
    host_id: i64,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    let crate::hub::Registration {
        conn_id,
        mut outbox,
        replaced,
    } = state.hub.register_conn(host_id);
    tracing::debug!(conn_id, "agent connected");
    let mut last_heard = Instant::now();
    let connected_at = Instant::now();
    let limiter = message_limiter(&state);
    let mut said_hello = false;
    let mut ping = tokio::time::interval(state.settings.agent_ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // A message read past the end of a batch of log lines, handled next.
    let mut pending: Option<Incoming> = None;
    let reason: Option<CloseReason> = loop {
        tokio::select! {
            msg = next_message(&mut pending, &mut stream) => {
                let Some(msg) = msg else { break None };
                // Slow the reading down to the connection's rate: an agent
                // flooding messages waits, and the rest of the server does not.
                let _ = limiter.until_ready().await;
                // A ping from the peer proves nothing about it reading what
                // we send: only its other frames (pongs to our pings among
                // them) keep it alive.
                if !matches!(msg, Ok(AggregatedMessage::Ping(_))) {
                    last_heard = Instant::now();
                }
                match msg {
                    Ok(AggregatedMessage::Text(text)) => {
                        // Log lines, and every log line already waiting behind
                        // them, are stored and published together.
                        if said_hello && let Some(first) = log_line(&text) {
                            let mut batch = vec![first];
                            // Progress reports among them: kept in memory only
                            // and ordered with nothing stored, so shown before
                            // the lines are written rather than after.
                            let mut progress = Vec::new();
                            while batch.len() + progress.len() < LOG_BATCH {
                                match stream.next().now_or_never() {
                                    Some(Some(Ok(AggregatedMessage::Text(t)))) => match Envelope::parse(&t) {
                                        Ok(env) if env.kind == wire::LOG_STREAM => batch.push(env),
                                        Ok(env) if env.kind == wire::JOB_PROGRESS => progress.push(env),
                                        _ => {
                                            pending = Some(Some(Ok(AggregatedMessage::Text(t))));
                                            break;
                                        }
                                    },
                                    Some(other) => {
                                        pending = Some(other);
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            // The first was counted above; a batch never asks
                            // for more than a burst at once.
                            let more = ((batch.len() + progress.len()) as u32 - 1).min(state.settings.agent_messages_burst.max(1));
                            if let Some(more) = std::num::NonZeroU32::new(more) {
                                let _ = limiter.until_n_ready(more).await;
                            }
                            for env in &progress {
                                Box::pin(crate::jobs::agent_message(&state, host_id, env)).await;
                            }
                            // Boxed, like handle_text: the database work's
                            // state lives on the heap only while it runs, not
                            // in every idle connection's task.
                            Box::pin(crate::jobs::agent_logs(&state, host_id, &batch)).await;
                            continue;
                        }
                        match Box::pin(handle_text(&state, host_id, conn_id, &mut session, &text, &mut said_hello)).await {
                            Ok(()) => {}
                            Err(reason) => break reason,
                        }
                    }
                    Ok(AggregatedMessage::Binary(_)) => {
                        tracing::warn!("binary frame from agent ignored");
                    }
                    Ok(AggregatedMessage::Ping(p)) => {
                        if !sent(session.pong(&p)).await { break None; }
                    }
                    Ok(AggregatedMessage::Pong(_)) => {}
                    Ok(AggregatedMessage::Close(_)) => break None,
                    Err(e) if is_too_large(&e) => {
                        tracing::warn!("agent sent an oversized message; closing");
                        break close(CloseCode::Policy, "frame too large");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "websocket protocol error; closing");
                        break close(CloseCode::Protocol, "protocol error");
                    }
                }
            }
            out = outbox.recv() => {
                match out {
                    Some(Outbound::Frame(text)) => {
                        if !sent(session.text(text)).await { break None; }
                    }
                    Some(Outbound::Close(why)) => break close(CloseCode::Normal, why),
                    None => break None,
                }
            }
            _ = ping.tick() => {
                if !said_hello && connected_at.elapsed() > HELLO_DEADLINE {
                    break close(CloseCode::Policy, "no hello");
                }
                if last_heard.elapsed() > state.settings.agent_ping_timeout {
                    tracing::info!("agent stopped answering pings");
                    break close(CloseCode::Away, "ping timeout");
                }
                if !sent(session.ping(b"")).await { break None; }
            }
            () = replaced.notified() => break close(CloseCode::Normal, wire::CLOSE_REPLACED),
        }
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, session.close(reason)).await;
    if state.hub.unregister(host_id, conn_id) {
        state.presence.offline(host_id);
        tracing::info!(conn_id, "agent disconnected");
    } else {
        tracing::debug!(conn_id, "replaced connection closed");
    }
}

/// Handles one text frame. `Err` closes the connection with that reason.
async fn handle_text(
    state: &AppState,
    host_id: i64,
    conn_id: u64,
    session: &mut Session,
    text: &str,
    said_hello: &mut bool,
) -> Result<(), Option<CloseReason>> {
    let env = match Envelope::parse(text) {
        Ok(env) => env,
        Err(wire::WireError::TooLarge(_)) => {
            return Err(close(CloseCode::Policy, "frame too large"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "malformed frame from agent ignored");
            return Ok(());
        }
    };
    if env.kind == wire::AGENT_HELLO && *said_hello {
        // One hello per connection: a repeat is acknowledged again, and
        // costs nothing else (no parsing, database, alerts or updates); what
        // it says is not taken in.
        tracing::debug!("repeated hello on one connection: acknowledged, not taken in");
        let ack = HelloAck {
            host_id,
            server_version: crate::version::VERSION.to_string(),
        };
        if !sent(session.text(ack.envelope().to_text())).await {
            return Err(None);
        }
    } else if env.kind == wire::AGENT_HELLO {
        let mut accepted = match hello::accept(state, host_id, conn_id, &env).await {
            Ok(a) => a,
            Err(Refused::Rejected { frame }) => {
                let _ = sent(session.text(frame)).await;
                return Err(close(CloseCode::Policy, "hello rejected"));
            }
            Err(Refused::Replaced) => return Err(close(CloseCode::Normal, wire::CLOSE_REPLACED)),
            Err(Refused::ServerError) => return Err(close(CloseCode::Error, "server error")),
        };
        *said_hello = true;
        if !sent(session.text(std::mem::take(&mut accepted.ack))).await {
            return Err(None);
        }
        hello::after_ack(state, host_id, conn_id, &accepted).await;
    } else if !*said_hello {
        tracing::warn!(kind = %crate::text::one_line(&env.kind, 64), "message before hello ignored");
    } else {
        crate::agents::message(state, host_id, &env).await;
    }
    Ok(())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::route(cfg, routes::Method::Get, routes::AGENT_WS, agent_ws);
}
