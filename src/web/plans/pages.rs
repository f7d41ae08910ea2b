//! The plan pages: list and detail with their forms, running a plan from
//! its page, the schedule preview, and the host page's Backups section
//! and labels form.
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde::Deserialize;

use super::{covered, create, remove, run, set_labels, update};
use crate::web::forms::{field, pairs as form_pairs};
use crate::web::{AppError, CurrentUser, Htmx, PageError, html, redirect};
use crate::{
    restic::{plans::PlanInput, schedule},
    routes,
    state::AppState,
    store::{
        self, Page,
        users::{Role, User},
    },
    views,
};

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

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    use crate::web::route;
    route(cfg, Get, routes::PLANS_PAGE, list_page);
    route(cfg, Post, routes::PLANS_PAGE, create_submit);
    // Before PLAN_PAGE: "preview" is not a plan id.
    route(cfg, Get, routes::PLAN_PREVIEW, preview);
    route(cfg, Get, routes::PLAN_PAGE, detail_page);
    route(cfg, Post, routes::PLAN_PAGE, update_submit);
    route(cfg, Post, routes::PLAN_DELETE, delete_submit);
    route(cfg, Post, routes::PLAN_RUN, run_submit);
    route(cfg, Get, routes::HOST_PLANS, host_plans);
    route(cfg, Post, routes::HOST_LABELS, host_labels_submit);
}
