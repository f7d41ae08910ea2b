//! Jobs: the JSON API, the jobs list and the live job page (its event
//! stream is `job_events`).
use actix_web::{HttpResponse, web};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

use actix_web::HttpRequest;
use agent::wire::{CommandCancel, Message as _};

use super::{AppError, CurrentUser, PageError};
use crate::{
    audit::{self, Entry},
    clock, routes,
    state::AppState,
    store::{
        self, Page,
        jobs::{Job, JobFilter, JobKind, JobStatus},
        users::Role,
    },
    views,
};

pub fn job_json(j: &Job) -> serde_json::Value {
    job_json_with(j, None)
}

/// A job object; `progress` is a running restic job's latest report.
pub fn job_json_with(j: &Job, progress: Option<&agent::wire::JobProgress>) -> serde_json::Value {
    json!({
        "id": j.id,
        "host_id": j.host_id,
        "kind": j.kind,
        "status": j.status,
        "actor_kind": j.actor_kind,
        "actor": j.actor_name,
        "error": j.error,
        "exit_code": j.exit_code,
        "target_version": j.target_version,
        "created_at": clock::rfc3339(j.created_at),
        "started_at": j.started_at.map(clock::rfc3339),
        "finished_at": j.finished_at.map(clock::rfc3339),
        "log_truncated": j.log_truncated,
        "plan_id": j.plan_id,
        "repository_id": j.repository_id,
        "warning": j.warning,
        "error_kind": j.error_kind,
        "result": j.result,
        // Only a running job has progress (the last report may outlive the
        // run by a moment in memory).
        "progress": progress.filter(|_| j.status == JobStatus::Running).map(|p| json!({
            "percent": p.percent,
            "bytes_done": p.bytes_done,
            "total_bytes": p.total_bytes,
            "files_done": p.files_done,
            "total_files": p.total_files,
            "seconds_remaining": p.seconds_remaining,
        })),
    })
}

#[derive(Deserialize)]
pub struct JobsQuery {
    host_id: Option<i64>,
    plan_id: Option<i64>,
    repository_id: Option<i64>,
    kind: Option<String>,
    status: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl JobsQuery {
    fn filter(&self) -> Result<JobFilter, AppError> {
        let kind = match self.kind.as_deref().filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(JobKind::parse(k).ok_or_else(|| {
                AppError::BadRequest("invalid_kind", format!("unknown job kind {k:?}"))
            })?),
        };
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                AppError::BadRequest("invalid_status", format!("unknown job status {s:?}"))
            })?),
        };
        Ok(JobFilter {
            host_id: self.host_id,
            kind,
            status,
            plan_id: self.plan_id,
            repository_id: self.repository_id,
        })
    }
}

async fn api_jobs_list(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<JobsQuery>,
) -> Result<HttpResponse, AppError> {
    let jobs = store::jobs::list(&state.db, &q.filter()?, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(
        jobs.iter()
            .map(|j| job_json_with(j, state.restic.progress(j.id).as_ref()))
            .collect::<Vec<_>>(),
    ))
}

async fn api_job_get(
    state: web::Data<AppState>,
    _user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let job = store::jobs::get(&state.db, *id).await?;
    Ok(HttpResponse::Ok().json(job_json_with(&job, state.restic.progress(job.id).as_ref())))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    after: Option<i64>,
    limit: Option<u64>,
}

async fn api_job_logs(
    state: web::Data<AppState>,
    _user: CurrentUser,
    id: web::Path<i64>,
    q: web::Query<LogsQuery>,
) -> Result<HttpResponse, AppError> {
    let job = store::jobs::get(&state.db, *id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let lines = store::jobs::logs(&state.db, job.id, q.after.unwrap_or(0), limit).await?;
    Ok(HttpResponse::Ok().json(
        lines
            .iter()
            .map(|l| json!({"pos": l.pos, "seq": l.seq, "ts": clock::rfc3339(l.ts), "stream": l.stream, "data": l.data}))
            .collect::<Vec<_>>(),
    ))
}

/// Host names for a page of jobs, in one query.
async fn with_host_names(state: &AppState, jobs: Vec<Job>) -> Result<Vec<(Job, String)>, AppError> {
    let mut ids: Vec<i64> = jobs.iter().map(|j| j.host_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names = store::hosts::names(&state.db, &ids).await?;
    Ok(jobs
        .into_iter()
        .map(|j| {
            let n = names
                .get(&j.host_id)
                .cloned()
                .unwrap_or_else(|| format!("host {}", j.host_id));
            (j, n)
        })
        .collect())
}

pub async fn recent_for_host(
    state: &AppState,
    host_id: i64,
    n: u64,
) -> Result<Vec<(Job, String)>, AppError> {
    let jobs = store::jobs::list(
        &state.db,
        &JobFilter {
            host_id: Some(host_id),
            ..Default::default()
        },
        Page::new(Some(n), None),
    )
    .await?;
    with_host_names(state, jobs).await
}

async fn jobs_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    q: web::Query<JobsQuery>,
) -> Result<Markup, PageError> {
    let filter = q.filter()?;
    let page = Page::new(q.limit, q.offset);
    let jobs = store::jobs::list(&state.db, &filter, page).await?;
    let total = store::jobs::count(&state.db, &filter).await?;
    let jobs = with_host_names(&state, jobs).await?;
    let v = views::jobs::JobsView {
        user: &user,
        jobs: &jobs,
        host_id: filter.host_id,
        kind: filter.kind,
        status: filter.status,
        offset: page.offset,
        limit: page.limit,
        total,
    };
    Ok(views::jobs::jobs_page(&v, state.clock.now_ms()))
}

async fn job_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<Markup, PageError> {
    let job = store::jobs::get(&state.db, *id).await?;
    let host = store::hosts::get(&state.db, job.host_id).await.ok();
    let lines = store::jobs::logs(&state.db, job.id, 0, 10_000).await?;
    Ok(views::jobs::job_page(
        &user,
        &job,
        host.as_ref(),
        &lines,
        state.restic.progress(job.id).as_ref(),
        state.clock.now_ms(),
    ))
}

/// Cancels a restic job: a queued one ends at once; a running one is
/// stopped by its agent (SIGINT, then SIGKILL after 30 s) and ends
/// `cancelled` when the agent reports it.
async fn cancel(
    state: &AppState,
    req: &HttpRequest,
    user: &CurrentUser,
    id: i64,
) -> Result<Job, AppError> {
    let job = store::jobs::get(&state.db, id).await?;
    if !job.kind.is_restic() {
        return Err(AppError::Conflict(
            "not_cancellable",
            "an agent update cannot be cancelled: it ends by itself, at the latest at its deadline"
                .into(),
        ));
    }
    user.require(Role::Operator)?;
    let finished =
        || AppError::Conflict("already_finished", format!("job {id} has already finished"));
    if job.status.is_terminal() {
        return Err(finished());
    }
    let by = format!("cancelled by {}", user.username);
    let ended = |why: String| async move {
        let outcome = store::jobs::Outcome {
            error: Some(&why),
            ..Default::default()
        };
        crate::jobs::finish_with(state, id, JobStatus::Cancelled, &outcome).await
    };
    let command = CommandCancel { job_id: id }.envelope().to_text();
    if job.status == JobStatus::Queued {
        if ended(format!("{by} before it started")).await?.is_none() {
            // It started (or ended) meanwhile: ask the agent instead.
            let now = store::jobs::get(&state.db, id).await?;
            if now.status.is_terminal() {
                return Err(finished());
            }
            let _ = state.hub.send(now.host_id, command);
        }
    } else if state.hub.send(job.host_id, command).is_err() {
        // The agent is away: the job ends here, and the agent stops the
        // run when it reconnects (its hello lists it).
        ended(format!("{by} while the agent was offline")).await?;
    }
    tracing::info!(job_id = id, by = %user.username, "job cancel requested");
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "job.cancel",
            "job",
            id,
            json!({"kind": job.kind, "host_id": job.host_id}),
        ),
    )
    .await;
    Ok(store::jobs::get(&state.db, id).await?)
}

async fn api_job_cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let job = cancel(&state, &req, &user, *id).await?;
    Ok(HttpResponse::Ok().json(job_json(&job)))
}

async fn job_cancel_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: super::Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    cancel(&state, &req, &user, *id).await.map_err(PageError)?;
    Ok(super::redirect(htmx.0, &routes::job(*id)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Post, routes::API_JOB_CANCEL, api_job_cancel);
    super::route(cfg, Post, routes::JOB_CANCEL, job_cancel_submit);
    super::route(cfg, Get, routes::API_JOBS, api_jobs_list);
    super::route(cfg, Get, routes::API_JOB, api_job_get);
    super::route(cfg, Get, routes::API_JOB_LOGS, api_job_logs);
    super::route(cfg, Get, routes::JOBS_PAGE, jobs_page);
    super::route(cfg, Get, routes::JOB, job_page);
}
