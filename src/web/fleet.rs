//! Rolling fleet updates (admin): start with a typed host count, follow the
//! run, cancel it; the JSON API; the running-run banner for every page.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, Htmx, PageError, redirect};
use crate::{
    clock, routes,
    state::AppState,
    store::{
        self, Page, StoreError,
        fleet_updates::{FleetHost, FleetStatus, FleetUpdate, HostStatus},
        users::{Role, User},
    },
    views::{self, fleet::FleetView},
};

fn run_json(r: &FleetUpdate) -> serde_json::Value {
    json!({
        "id": r.id,
        "status": r.status,
        "target_version": r.target_version,
        "started_at": clock::rfc3339(r.started_at),
        "started_by": r.started_by,
        "current_host_id": r.current_host_id,
        "halted_reason": r.halted_reason,
        "completed_at": r.completed_at.map(clock::rfc3339),
    })
}

fn host_json(h: &FleetHost) -> serde_json::Value {
    json!({
        "host_id": h.host_id,
        "position": h.position,
        "hostname": h.hostname,
        "from_version": h.from_version,
        "status": h.status,
        "job_id": h.job_id,
        "failed_reason": h.failed_reason,
    })
}

#[derive(Deserialize, Default)]
pub struct StartBody {
    target_version: Option<String>,
    /// Optional for the API; when given it must match the number of hosts.
    confirm_count: Option<serde_json::Value>,
}

async fn api_fleet_start(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    // The body is optional; when present it must be valid JSON.
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AppError::BadRequest(
                "invalid_json",
                format!("request body is not valid JSON for this endpoint: {e}"),
            )
        })?
    };
    let count = body.confirm_count.map(|v| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    });
    let run = crate::fleet::start(
        &state,
        &super::actor(&user, &req),
        body.target_version.as_deref(),
        count.as_deref(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"fleet_update_id": run.id})))
}

async fn api_fleet_get(
    state: web::Data<AppState>,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let (run, hosts) = store::fleet_updates::get_with_hosts(&state.db, *id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                AppError::NotFound("fleet_update_not_found", "no such fleet update".into())
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(json!({"fleet_update": run_json(&run), "hosts": hosts.iter().map(host_json).collect::<Vec<_>>()})))
}

async fn api_fleet_list(
    state: web::Data<AppState>,
    user: CurrentUser,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let runs = store::fleet_updates::list(&state.db, Page::new(Some(100), None)).await?;
    Ok(HttpResponse::Ok().json(runs.iter().map(run_json).collect::<Vec<_>>()))
}

async fn api_fleet_cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    crate::fleet::cancel(&state, &super::actor(&user, &req), *id).await?;
    Ok(HttpResponse::Ok().json(json!({"fleet_update_id": *id, "status": "cancelled"})))
}

async fn render(
    state: &AppState,
    user: &User,
    htmx: bool,
    error: Option<(&AppError, &str)>,
) -> Result<HttpResponse, PageError> {
    let history = store::fleet_updates::list(&state.db, Page::new(Some(20), None)).await?;
    let current = match history.first() {
        Some(r) => Some(store::fleet_updates::get_with_hosts(&state.db, r.id).await?),
        None => None,
    };
    let running = current
        .as_ref()
        .is_some_and(|(r, _)| r.status == FleetStatus::Running);
    let cands = if running {
        vec![]
    } else {
        crate::fleet::candidates(state).await?
    };
    let msg = error.map(|(e, _)| e.message());
    let v = FleetView {
        user,
        run: current.as_ref().map(|(r, h)| (r, h.as_slice())),
        candidates: &cands,
        history: if history.len() > 1 || !running {
            &history
        } else {
            &[]
        },
        error: msg.as_deref(),
        typed: error.map(|(_, t)| t).unwrap_or(""),
        now_ms: state.clock.now_ms(),
    };
    let status = error
        .map(|(e, _)| actix_web::ResponseError::status_code(e))
        .unwrap_or(StatusCode::OK);
    let body = if htmx {
        views::fleet::fleet_live(&v)
    } else {
        views::fleet::fleet_page(&v)
    };
    Ok(super::html(status, body))
}

async fn fleet_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    render(&state, &user, htmx.0, None).await
}

#[derive(Deserialize)]
pub struct StartForm {
    confirm_count: String,
}

async fn fleet_start_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    form: web::Form<StartForm>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    match crate::fleet::start(
        &state,
        &super::actor(&user, &req),
        None,
        Some(&form.confirm_count),
    )
    .await
    {
        Ok(_) => Ok(redirect(htmx.0, routes::FLEET_UPDATE_PAGE)),
        Err(e @ AppError::Internal(_)) => Err(e.into()),
        Err(e) => render(&state, &user, false, Some((&e, &form.confirm_count))).await,
    }
}

async fn fleet_cancel_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    match crate::fleet::cancel(&state, &super::actor(&user, &req), *id).await {
        Ok(()) => Ok(redirect(htmx.0, routes::FLEET_UPDATE_PAGE)),
        Err(e @ AppError::Conflict(..)) => render(&state, &user, false, Some((&e, ""))).await,
        Err(e) => Err(e.into()),
    }
}

/// The running-run banner, for every logged-in user's pages.
async fn fleet_banner(state: web::Data<AppState>, _user: CurrentUser) -> Result<Markup, PageError> {
    let body = match store::fleet_updates::active(&state.db).await? {
        Some(run) => {
            let (_, hosts) = store::fleet_updates::get_with_hosts(&state.db, run.id).await?;
            let done = hosts
                .iter()
                .filter(|h| h.status != HostStatus::Pending && h.status != HostStatus::Running)
                .count();
            views::fleet::running_banner(Some((&run, done, hosts.len())))
        }
        None => views::fleet::running_banner(None),
    };
    Ok(body)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Post, routes::API_FLEET_UPDATE, api_fleet_start);
    super::route(cfg, Get, routes::API_FLEET_RUNS, api_fleet_list);
    super::route(cfg, Get, routes::API_FLEET_RUN, api_fleet_get);
    super::route(cfg, Post, routes::API_FLEET_RUN_CANCEL, api_fleet_cancel);
    super::route(cfg, Get, routes::FLEET_BANNER, fleet_banner);
    super::route(cfg, Get, routes::FLEET_UPDATE_PAGE, fleet_page);
    super::route(cfg, Post, routes::FLEET_UPDATE_PAGE, fleet_start_submit);
    super::route(cfg, Post, routes::FLEET_CANCEL, fleet_cancel_submit);
}
