//! A job's live log stream: server-sent events, resumable with
//! `Last-Event-ID` (the log position) or `?after=`; the backlog from the
//! database first, then live lines, a status change and `end`.
use std::time::Duration;

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

const KEEPALIVE: Duration = Duration::from_secs(15);
const BACKLOG_CHUNK: u64 = 500;

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
            tx.send(line_event(l)).await.map_err(|_| ())?;
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
) -> Result<(), ()> {
    // Subscribe before reading the backlog so nothing falls in between.
    let live = state.live.clone();
    let mut rx = live.subscribe(job_id);
    catch_up(&state, job_id, &mut last, &tx).await?;
    let finish = |state: AppState, tx: mpsc::Sender<web::Bytes>, mut last: i64| async move {
        catch_up(&state, job_id, &mut last, &tx).await?;
        if let Ok(j) = store::jobs::get(&state.db, job_id).await {
            tx.send(status_event(&state, &j)).await.map_err(|_| ())?;
        }
        tx.send(sse("end", None, "")).await.map_err(|_| ())
    };
    match store::jobs::get(&state.db, job_id).await {
        Ok(j) if j.status.is_terminal() => return finish(state, tx, last).await,
        Ok(j) => tx.send(status_event(&state, &j)).await.map_err(|_| ())?,
        Err(_) => return Err(()),
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
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
                        tx.send(b.frames_after(last, line_event)).await.map_err(|_| ())?;
                        last = end;
                    }
                }
                Ok(LiveEvent::Progress(p)) => {
                    let bar = views::jobs::progress_bar(Some(&p)).into_string();
                    tx.send(sse("progress", None, &bar)).await.map_err(|_| ())?;
                }
                Ok(LiveEvent::Status(j)) if j.status.is_terminal() => return finish(state, tx, last).await,
                Ok(LiveEvent::Status(j)) => tx.send(status_event(&state, &j)).await.map_err(|_| ())?,
                // Fell behind: skip the buffer and read what was missed.
                Err(RecvError::Lagged(_)) => catch_up(&state, job_id, &mut last, &tx).await?,
                Err(RecvError::Closed) => return finish(state, tx, last).await,
            },
            _ = keepalive.tick() => tx.send(web::Bytes::from_static(b": keepalive\n\n")).await.map_err(|_| ())?,
        }
    }
}

async fn job_events(
    state: web::Data<AppState>,
    _user: CurrentUser,
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
    let (tx, rx) = mpsc::channel::<web::Bytes>(64);
    let state = state.get_ref().clone();
    rt::spawn(async move {
        let _ = pump(state, job.id, after, tx).await;
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
