//! Plans: the JSON API (`/api/plans…`), running a plan now and host labels
//! (`PATCH /api/hosts/{id}`); the plan pages with their forms, the schedule
//! preview and the host page's Backups section are in `pages`.
mod pages;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser};
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
    views::plans::Covered,
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

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_PLANS, api_list);
    super::route(cfg, Post, routes::API_PLANS, api_create);
    super::route(cfg, Get, routes::API_PLAN, api_get);
    super::route(cfg, Patch, routes::API_PLAN, api_update);
    super::route(cfg, Delete, routes::API_PLAN, api_delete);
    super::route(cfg, Post, routes::API_PLAN_RUN, api_run);
    super::route(cfg, Patch, routes::API_HOST, api_host_patch);
    pages::configure(cfg);
}
