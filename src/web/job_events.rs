//! A job's live log stream: server-sent events, resumable with
//! `Last-Event-ID` (the log position) or `?after=`; the backlog from the
//! database first, then live lines, a status change and `end`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{HttpRequest, HttpResponse, http::header, rt, web};
use serde::Deserialize;
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{CurrentUser, PageError};
use crate::{
    jobs::LiveEvent,
    routes,
    state::AppState,
    store::{
        self,
        jobs::{Job, LogLine},
    },
    views,
};

const BACKLOG_CHUNK: u64 = 500;

/// A viewer that has not taken a frame for this long is gone (a reader
/// that stopped reading would otherwise hold its task and queue forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Live log streams one user may hold open at once (a browser holds one per
/// open job page, a wall display a few dozen; more is a script or a leak).
pub const MAX_STREAMS_PER_USER: usize = 32;

/// Open live log streams per user.
#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<i64, usize>>,
}

/// One open stream of a user; gives its place back when dropped.
struct StreamSlot {
    streams: Arc<Streams>,
    user_id: i64,
}

impl Streams {
    fn take(self: &Arc<Self>, user_id: i64) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user_id).or_insert(0);
        if *n >= MAX_STREAMS_PER_USER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.clone(),
            user_id,
        })
    }

    /// Streams `user_id` holds open now.
    pub fn open_for(&self, user_id: i64) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&user_id).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<web::Bytes>, frame: web::Bytes) -> Result<(), ()> {
    tx.send_timeout(frame, SEND_TIMEOUT).await.map_err(|_| ())
}

/// Whether the session that opened a stream still may watch it: a user
/// deleted, logged out or demoted below the route's role loses the stream
/// at the next keepalive.
async fn still_allowed(state: &AppState, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let idle = state.settings.session_idle.as_millis() as i64;
    let least =
        routes::find(routes::Method::Get, routes::JOB_EVENTS).and_then(|r| match r.access {
            routes::Access::Min(role) => Some(role),
            _ => None,
        });
    match store::sessions::lookup(&state.db, token, state.clock.now_ms(), idle).await {
        Ok(Some(u)) => least.is_none_or(|role| u.role >= role),
        Ok(None) => false,
        // A database hiccup does not end a stream; the next check decides.
        Err(e) => {
            tracing::warn!(error = %e, "re-checking a live log viewer's session failed");
            true
        }
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
}

/// One SSE frame; multi-line data becomes several `data:` lines. CR, LF and
/// CRLF all end a line in SSE, so each starts a new `data:` line: text from
/// a log can never begin a field of its own (an `event:` or `id:`).
fn sse(event: &str, id: Option<i64>, data: &str) -> web::Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    let mut rest = data;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            break;
        }
        let sep = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + sep..];
    }
    out.push('\n');
    web::Bytes::from(out)
}

fn line_event(l: &LogLine) -> web::Bytes {
    sse("line", Some(l.pos), &views::jobs::log_line(l).into_string())
}

fn status_event(state: &AppState, j: &Job) -> web::Bytes {
    sse(
        "status",
        None,
        &views::jobs::job_summary(j, state.clock.now_ms()).into_string(),
    )
}

/// Sends the lines after `*last` from the database. Err: the viewer left.
async fn catch_up(
    state: &AppState,
    job_id: i64,
    last: &mut i64,
    tx: &mpsc::Sender<web::Bytes>,
) -> Result<(), ()> {
    loop {
        let lines = store::jobs::logs(&state.db, job_id, *last, BACKLOG_CHUNK)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, job_id, "reading job log for a viewer failed");
            })?;
        for l in &lines {
            send(tx, line_event(l)).await?;
            *last = l.pos;
        }
        if (lines.len() as u64) < BACKLOG_CHUNK {
            return Ok(());
        }
    }
}

/// Feeds one viewer: backlog after `last`, then live events, then the end.
async fn pump(
    state: AppState,
    job_id: i64,
    mut last: i64,
    tx: mpsc::Sender<web::Bytes>,
    session: Option<String>,
) -> Result<(), ()> {
    // Subscribe before reading the backlog so nothing falls in between.
    let live = state.live.clone();
    let mut rx = live.subscribe(job_id);
    catch_up(&state, job_id, &mut last, &tx).await?;
    let finish = |state: AppState, tx: mpsc::Sender<web::Bytes>, mut last: i64| async move {
        catch_up(&state, job_id, &mut last, &tx).await?;
        if let Ok(j) = store::jobs::get(&state.db, job_id).await {
            send(&tx, status_event(&state, &j)).await?;
        }
        send(&tx, sse("end", None, "")).await
    };
    match store::jobs::get(&state.db, job_id).await {
        Ok(j) if j.status.is_terminal() => return finish(state, tx, last).await,
        Ok(j) => send(&tx, status_event(&state, &j)).await?,
        Err(_) => return Err(()),
    }
    let mut keepalive = tokio::time::interval(state.settings.sse_keepalive);
    keepalive.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(LiveEvent::Lines(b)) => {
                    let (Some(first), Some(end)) = (b.first_pos(), b.last_pos()) else { continue };
                    if first > last.saturating_add(1) {
                        catch_up(&state, job_id, &mut last, &tx).await?;
                    }
                    if end > last {
                        // Rendered once for all viewers; one write per batch.
                        send(&tx, b.frames_after(last, line_event)).await?;
                        last = end;
                    }
                }
                Ok(LiveEvent::Progress(p)) => {
                    let bar = views::jobs::progress_bar(Some(&p)).into_string();
                    send(&tx, sse("progress", None, &bar)).await?;
                }
                Ok(LiveEvent::Status(j)) if j.status.is_terminal() => return finish(state, tx, last).await,
                Ok(LiveEvent::Status(j)) => send(&tx, status_event(&state, &j)).await?,
                // Fell behind: skip the buffer and read what was missed.
                Err(RecvError::Lagged(_)) => catch_up(&state, job_id, &mut last, &tx).await?,
                Err(RecvError::Closed) => return finish(state, tx, last).await,
            },
            _ = keepalive.tick() => {
                if !still_allowed(&state, session.as_deref()).await {
                    tracing::info!(job_id, "live log viewer's session ended; closing the stream");
                    return Err(());
                }
                send(&tx, web::Bytes::from_static(b": keepalive\n\n")).await?
            }
        }
    }
}

async fn job_events(
    state: web::Data<AppState>,
    user: CurrentUser,
    req: HttpRequest,
    id: web::Path<i64>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, PageError> {
    let job = store::jobs::get(&state.db, *id).await?;
    let resume = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = resume.into_iter().chain(q.after).max().unwrap_or(0).max(0);
    let Some(slot) = state.streams.take(user.id) else {
        return Err(PageError(crate::error::AppError::TooManyRequests(
            "too_many_streams",
            format!(
                "you have {MAX_STREAMS_PER_USER} live logs open already: close some job pages and try again"
            ),
            5,
        )));
    };
    let (tx, rx) = mpsc::channel::<web::Bytes>(64);
    let state = state.get_ref().clone();
    let session = super::session_token(&req);
    rt::spawn(async move {
        let _slot = slot;
        let _ = pump(state, job.id, after, tx, session).await;
    });
    // Whatever is queued goes out in one write.
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut queued = Vec::new();
        if rx.recv_many(&mut queued, 64).await == 0 {
            return None;
        }
        let chunk = match <[web::Bytes; 1]>::try_from(queued) {
            Ok([one]) => one,
            Err(many) => web::Bytes::from(many.concat()),
        };
        Some((Ok::<_, actix_web::Error>(chunk), rx))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::JOB_EVENTS, job_events);
}

#[cfg(test)]
mod tests {
    use super::sse;

    #[test]
    fn every_line_ending_starts_a_new_data_line() {
        let frame = sse("line", Some(7), "a\rb\r\nc\nevent: x\r\rid: 9");
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "id: 7\nevent: line\ndata: a\ndata: b\ndata: c\ndata: event: x\ndata: \ndata: id: 9\n\n"
        );
        assert_eq!(&sse("end", None, "")[..], b"event: end\ndata: \n\n");
        assert_eq!(&sse("s", None, "x\n")[..], b"event: s\ndata: x\ndata: \n\n");
    }
}
