//! Plans: the JSON API (`/api/plans…`), running a plan now, host labels
//! (`PATCH /api/hosts/{id}`), and the plan pages with their forms, the
//! schedule preview and the host page's Backups section.
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde::Deserialize;
use serde_json::json;

use super::forms::{field, pairs as form_pairs};
use super::{AppError, CurrentUser, Htmx, PageError, html, redirect};
use crate::{
    audit::{self, Entry},
    clock,
    restic::{
        jobs::Requester,
        plans::{self, PlanError, PlanInput, RunError},
        schedule,
        scheduler::{next_run, splay_ms},
    },
    routes,
    state::AppState,
    store::{
        self, Page,
        jobs::ActorKind,
        plans::Plan,
        users::{Role, User},
    },
    views::{self, plans::Covered},
};

impl From<PlanError> for AppError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Invalid(m) => AppError::BadRequest("invalid_input", m),
            PlanError::Store(s) => s.into(),
        }
    }
}

impl From<RunError> for AppError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::NotCovered(0) => AppError::BadRequest(
                "not_covered",
                "this plan covers no host: tick hosts or give labels on the plan first".into(),
            ),
            RunError::NotCovered(h) => AppError::BadRequest(
                "not_covered",
                format!(
                    "the plan does not cover host {h}: add the host or one of its labels to the plan"
                ),
            ),
            RunError::Queue(q) => q.into(),
            RunError::Store(s) => s.into(),
        }
    }
}

pub fn plan_json(p: &Plan) -> serde_json::Value {
    json!({
        "id": p.id,
        "name": p.name,
        "repository_id": p.repository_id,
        "paths": p.paths,
        "excludes": p.excludes,
        "tags": p.tags,
        "schedule": p.schedule,
        "timezone": p.timezone,
        "splay_secs": p.splay_secs,
        "hosts": p.hosts,
        "labels": p.labels,
        "retention": p.retention,
        "forget_after_backup": p.forget_after_backup,
        "enabled": p.enabled,
        "created_at": clock::rfc3339(p.created_at),
        "updated_at": clock::rfc3339(p.updated_at),
    })
}

/// The hosts a plan covers with their next run (stored, or what it will
/// be when the scheduler has not stored it yet) and last backup.
async fn covered(state: &AppState, plan: &Plan) -> Result<Vec<Covered>, AppError> {
    let hosts = plans::covered_hosts(&state.db, plan).await?;
    let rows = store::plans::schedules_of_plan(&state.db, plan.id).await?;
    let parsed = schedule::parse(&plan.schedule).ok();
    let tz = schedule::parse_tz(&plan.timezone).unwrap_or(state.settings.timezone);
    let now = state.clock.now_ms();
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let next_run_at = if !plan.enabled {
            None
        } else if let Some(r) = rows.iter().find(|r| r.host_id == host.id) {
            Some(r.next_run_at)
        } else {
            parsed
                .as_ref()
                .and_then(|s| next_run(s, tz, splay_ms(plan.id, host.id, plan.splay_secs), now))
        };
        let last_job = store::plans::last_backup(&state.db, plan.id, host.id).await?;
        out.push(Covered {
            host,
            next_run_at,
            last_job,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<u64>,
    offset: Option<u64>,
}

async fn api_list(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let list = store::plans::list(&state.db, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(list.iter().map(plan_json).collect::<Vec<_>>()))
}

async fn api_get(
    state: web::Data<AppState>,
    _user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let p = store::plans::get(&state.db, *id).await?;
    let mut v = plan_json(&p);
    v["covered"] = covered(&state, &p)
        .await?
        .iter()
        .map(|c| {
            json!({
                "host_id": c.host.id,
                "next_run_at": c.next_run_at.map(clock::rfc3339),
                "last_job": c.last_job.as_ref().map(|j| json!({
                    "id": j.id,
                    "status": j.status,
                    "finished_at": j.finished_at.map(clock::rfc3339),
                })),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(v))
}

async fn create(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    input: PlanInput,
) -> Result<Plan, AppError> {
    let p = plans::create(
        &state.db,
        input,
        state.settings.timezone,
        state.clock.now_ms(),
    )
    .await?;
    tracing::info!(plan_id = p.id, name = %p.name, by = %user.username, "plan added");
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new("plan.create", "plan", p.id, plan_json(&p)),
    )
    .await;
    state.restic.wake_scheduler();
    Ok(p)
}

async fn update(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
    input: PlanInput,
) -> Result<Plan, AppError> {
    let p = plans::update(
        &state.db,
        id,
        input,
        state.settings.timezone,
        state.clock.now_ms(),
    )
    .await?;
    tracing::info!(plan_id = p.id, by = %user.username, "plan changed");
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new("plan.update", "plan", p.id, plan_json(&p)),
    )
    .await;
    state.restic.wake_scheduler();
    Ok(p)
}

async fn remove(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
) -> Result<Plan, AppError> {
    let p = store::plans::delete(&state.db, id).await?;
    tracing::info!(plan_id = p.id, by = %user.username, "plan removed");
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new("plan.delete", "plan", p.id, json!({"name": p.name})),
    )
    .await;
    state.restic.wake_scheduler();
    Ok(p)
}

async fn api_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let p = create(&state, &req, &user, PlanInput::from_json(&body)?).await?;
    Ok(HttpResponse::Created().json(json!({"id": p.id})))
}

async fn api_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    // An unknown plan is 404 before its input is judged.
    store::plans::get(&state.db, *id).await?;
    let p = update(&state, &req, &user, *id, PlanInput::from_json(&body)?).await?;
    Ok(HttpResponse::Ok().json(plan_json(&p)))
}

async fn api_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    remove(&state, &req, &user, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    host_id: Option<i64>,
}

async fn run(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
    host_id: Option<i64>,
) -> Result<Vec<i64>, AppError> {
    let plan = store::plans::get(&state.db, id).await?;
    let who = Requester {
        kind: ActorKind::User,
        id: Some(user.id),
        name: user.username.clone(),
    };
    let jobs = plans::run_now(state, &who, &plan, host_id).await?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "plan.run",
            "plan",
            plan.id,
            json!({"host_id": host_id, "job_ids": ids}),
        ),
    )
    .await;
    Ok(ids)
}

async fn api_run(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Operator)?;
    let r: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AppError::BadRequest(
                "invalid_input",
                format!("host_id: {}", crate::text::one_line(&e.to_string(), 200)),
            )
        })?
    };
    let ids = run(&state, &req, &user, *id, r.host_id).await?;
    Ok(HttpResponse::Accepted().json(json!({"job_ids": ids})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPatch {
    labels: Vec<String>,
}

async fn set_labels(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
    labels: &[String],
) -> Result<store::hosts::Host, AppError> {
    let labels = plans::check_labels("labels", labels)
        .map_err(|m| AppError::BadRequest("invalid_input", m))?;
    let h = store::hosts::set_labels(&state.db, id, &labels).await?;
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new("host.labels", "host", h.id, json!({"labels": h.labels})),
    )
    .await;
    state.restic.wake_scheduler();
    Ok(h)
}

async fn api_host_patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    store::hosts::get(&state.db, *id).await?;
    let p: HostPatch = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(
            "invalid_input",
            format!("labels: {}", crate::text::one_line(&e.to_string(), 200)),
        )
    })?;
    let h = set_labels(&state, &req, &user, *id, &p.labels).await?;
    Ok(HttpResponse::Ok().json(super::hosts::host_json(&state, h).await?))
}

// ---------------------------------------------------------------- pages

fn split_lines(v: Option<&str>) -> Vec<String> {
    v.unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A plan input from the create or edit form (every field given).
fn form_input(pairs: &[(String, String)]) -> Result<PlanInput, AppError> {
    let bad = |f: &str, why: &str| AppError::BadRequest("invalid_input", format!("{f}: {why}"));
    let num = |name: &str| -> Result<Option<u32>, AppError> {
        match field(pairs, name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .map(|n| Some(n).filter(|n| *n > 0))
                .map_err(|_| bad(&format!("retention.{name}"), "a whole number from 0")),
        }
    };
    let repository_id = field(pairs, "repository_id")
        .unwrap_or_default()
        .trim()
        .parse::<i64>()
        .map_err(|_| bad("repository_id", "pick a repository"))?;
    let mut hosts = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "hosts") {
        let _ = k;
        hosts.push(
            v.parse::<i64>()
                .map_err(|_| bad("hosts", "pick hosts from the list"))?,
        );
    }
    let splay = match field(pairs, "splay_secs")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| bad("splay_secs", "a whole number of seconds"))?,
    };
    let labels: Vec<String> = field(pairs, "labels")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    Ok(PlanInput {
        name: Some(field(pairs, "name").unwrap_or_default().to_string()),
        repository_id: Some(repository_id),
        paths: Some(split_lines(field(pairs, "paths"))),
        excludes: Some(split_lines(field(pairs, "excludes"))),
        tags: Some(split_lines(field(pairs, "tags"))),
        schedule: Some(field(pairs, "schedule").unwrap_or_default().to_string()),
        timezone: Some(field(pairs, "timezone").unwrap_or_default().to_string()),
        splay_secs: Some(splay),
        hosts: Some(hosts),
        labels: Some(labels),
        retention: Some(agent::wire::Retention {
            keep_last: num("keep_last")?,
            keep_hourly: num("keep_hourly")?,
            keep_daily: num("keep_daily")?,
            keep_weekly: num("keep_weekly")?,
            keep_monthly: num("keep_monthly")?,
            keep_yearly: num("keep_yearly")?,
            keep_within: field(pairs, "keep_within")
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        }),
        forget_after_backup: Some(field(pairs, "forget_after_backup").is_some()),
        enabled: Some(field(pairs, "enabled").is_some()),
    })
}

async fn all_repos(state: &AppState) -> Result<Vec<store::repositories::Repository>, AppError> {
    Ok(store::repositories::list(&state.db, Page::new(Some(Page::MAX), None)).await?)
}

async fn render_list(
    state: &AppState,
    user: &User,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let plans = store::plans::list(&state.db, Page::new(Some(Page::MAX), None)).await?;
    let repos = all_repos(state).await.map_err(PageError)?;
    let hosts = store::hosts::list_all(&state.db, &Default::default()).await?;
    let v = views::plans::ListView {
        user,
        plans: &plans,
        repos: &repos,
        hosts: &hosts,
        server_tz: state.settings.timezone.name(),
        error: error.as_deref(),
    };
    Ok(html(status, views::plans::list_page(&v)))
}

async fn list_page(
    state: web::Data<AppState>,
    user: CurrentUser,
) -> Result<HttpResponse, PageError> {
    render_list(&state, &user, None, StatusCode::OK).await
}

async fn create_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let result = match form_pairs(&body).and_then(|p| form_input(&p)) {
        Ok(i) => create(&state, &req, &user, i).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(p) => Ok(redirect(htmx.0, &routes::plan(p.id))),
        Err(e @ AppError::Internal(_)) => Err(PageError(e)),
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e);
            render_list(&state, &user, Some(e.message()), status).await
        }
    }
}

async fn render_detail(
    state: &AppState,
    user: &User,
    id: i64,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let plan = store::plans::get(&state.db, id).await?;
    let repos = all_repos(state).await.map_err(PageError)?;
    let hosts = store::hosts::list_all(&state.db, &Default::default()).await?;
    let covered = covered(state, &plan).await.map_err(PageError)?;
    let v = views::plans::DetailView {
        user,
        plan: &plan,
        repos: &repos,
        hosts: &hosts,
        covered: &covered,
        server_tz: state.settings.timezone.name(),
        error: error.as_deref(),
    };
    Ok(html(status, views::plans::detail_page(&v)))
}

async fn detail_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    render_detail(&state, &user, *id, None, StatusCode::OK).await
}

async fn page_failure(
    state: &AppState,
    user: &User,
    id: i64,
    e: AppError,
) -> Result<HttpResponse, PageError> {
    match e {
        e @ (AppError::Internal(_) | AppError::NotFound(..) | AppError::Forbidden) => {
            Err(PageError(e))
        }
        e => {
            let status = actix_web::ResponseError::status_code(&e);
            render_detail(state, user, id, Some(e.message()), status).await
        }
    }
}

async fn update_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    store::plans::get(&state.db, *id).await?;
    let result = match form_pairs(&body).and_then(|p| form_input(&p)) {
        Ok(i) => update(&state, &req, &user, *id, i).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(p) => Ok(redirect(htmx.0, &routes::plan(p.id))),
        Err(e) => page_failure(&state, &user, *id, e).await,
    }
}

async fn delete_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    match remove(&state, &req, &user, *id).await {
        Ok(_) => Ok(redirect(htmx.0, routes::PLANS_PAGE)),
        Err(e) => page_failure(&state, &user, *id, e).await,
    }
}

async fn run_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Operator)?;
    let pairs = form_pairs(&body)?;
    let host_id = match field(&pairs, "host_id")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(h) => match h.parse::<i64>() {
            Ok(h) => Some(h),
            Err(_) => {
                return page_failure(
                    &state,
                    &user,
                    *id,
                    AppError::BadRequest("invalid_input", "host_id: pick a host".into()),
                )
                .await;
            }
        },
    };
    match run(&state, &req, &user, *id, host_id).await {
        Ok(ids) if ids.len() == 1 => Ok(redirect(htmx.0, &routes::job(ids[0]))),
        Ok(_) => Ok(redirect(htmx.0, &routes::plan(*id))),
        Err(e) => page_failure(&state, &user, *id, e).await,
    }
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    schedule: Option<String>,
    timezone: Option<String>,
}

/// The next five runs of the schedule being typed (an htmx fragment).
async fn preview(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<PreviewQuery>,
) -> Result<HttpResponse, PageError> {
    let tz_name = q
        .timezone
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let result = schedule::parse(q.schedule.as_deref().unwrap_or_default())
        .map_err(|e| format!("schedule: {e}"))
        .and_then(|s| {
            let tz = match tz_name {
                Some(t) => schedule::parse_tz(t).map_err(|e| format!("timezone: {e}"))?,
                None => state.settings.timezone,
            };
            Ok((
                s.upcoming(state.clock.now_ms(), tz, 5),
                tz.name().to_string(),
            ))
        });
    Ok(html(StatusCode::OK, views::plans::preview(&result)))
}

/// The host page's Backups section (an htmx fragment, also readable alone).
async fn host_plans(
    state: web::Data<AppState>,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    let host = store::hosts::get(&state.db, *id).await?;
    let mut rows = Vec::new();
    for plan in store::plans::list_all(&state.db).await? {
        if !plan.covers(host.id, &host.labels) {
            continue;
        }
        let c = covered(&state, &plan).await.map_err(PageError)?;
        if let Some(c) = c.into_iter().find(|c| c.host.id == host.id) {
            rows.push((plan, c));
        }
    }
    Ok(html(
        StatusCode::OK,
        views::plans::host_section(&user, &host, &rows),
    ))
}

async fn host_labels_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    store::hosts::get(&state.db, *id).await?;
    let pairs = form_pairs(&body)?;
    let labels: Vec<String> = field(&pairs, "labels")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    set_labels(&state, &req, &user, *id, &labels).await?;
    Ok(redirect(htmx.0, &routes::host(*id)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_PLANS, api_list);
    super::route(cfg, Post, routes::API_PLANS, api_create);
    super::route(cfg, Get, routes::API_PLAN, api_get);
    super::route(cfg, Patch, routes::API_PLAN, api_update);
    super::route(cfg, Delete, routes::API_PLAN, api_delete);
    super::route(cfg, Post, routes::API_PLAN_RUN, api_run);
    super::route(cfg, Patch, routes::API_HOST, api_host_patch);
    super::route(cfg, Get, routes::PLANS_PAGE, list_page);
    super::route(cfg, Post, routes::PLANS_PAGE, create_submit);
    // Before PLAN_PAGE: "preview" is not a plan id.
    super::route(cfg, Get, routes::PLAN_PREVIEW, preview);
    super::route(cfg, Get, routes::PLAN_PAGE, detail_page);
    super::route(cfg, Post, routes::PLAN_PAGE, update_submit);
    super::route(cfg, Post, routes::PLAN_DELETE, delete_submit);
    super::route(cfg, Post, routes::PLAN_RUN, run_submit);
    super::route(cfg, Get, routes::HOST_PLANS, host_plans);
    super::route(cfg, Post, routes::HOST_LABELS, host_labels_submit);
}
