//! Alerts: `GET /api/alerts` and the `/alerts` page (every role), and
//! resolving an alert by hand (admin).
use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, Htmx, PageError, redirect};
use crate::{
    alerts, audit, clock, routes,
    state::AppState,
    store::{
        self, Page,
        alerts::{Alert, AlertState},
        users::Role,
    },
    views::{self, alerts::AlertsView},
};

#[derive(Deserialize)]
pub struct AlertsQuery {
    state: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
    /// The page's second list (resolved alerts) has its own offset.
    resolved_offset: Option<u64>,
}

fn parse_state(s: Option<&str>) -> Result<Option<AlertState>, AppError> {
    match s {
        None | Some("") | Some("all") => Ok(None),
        Some(s) => AlertState::parse(s).map(Some).ok_or_else(|| {
            AppError::BadRequest(
                "invalid_state",
                format!("state must be active or resolved, not {s:?}"),
            )
        }),
    }
}

pub fn alert_json(a: &Alert) -> serde_json::Value {
    json!({
        "id": a.id,
        "kind": a.kind,
        "host_id": a.host_id,
        "severity": a.severity,
        "message": a.message,
        "raised_at": clock::rfc3339(a.raised_at),
        "last_seen_at": clock::rfc3339(a.last_seen_at),
        "resolved_at": a.resolved_at.map(clock::rfc3339),
        "count": a.count,
    })
}

async fn api_alerts_list(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<AlertsQuery>,
) -> Result<HttpResponse, AppError> {
    let filter = parse_state(q.state.as_deref())?;
    let list = store::alerts::list(&state.db, filter, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(list.iter().map(alert_json).collect::<Vec<_>>()))
}

/// Resolves by hand; 409 `already_resolved` when it was not active.
async fn resolve_by_hand(
    state: &AppState,
    req: &HttpRequest,
    user: &CurrentUser,
    id: i64,
) -> Result<Alert, AppError> {
    let Some(a) = alerts::resolve_id(state, id).await? else {
        return Err(AppError::Conflict(
            "already_resolved",
            "this alert is already resolved".into(),
        ));
    };
    audit::record_logged(
        state,
        &super::actor(user, req),
        audit::Entry::new(
            "alert.resolve",
            "alert",
            a.id,
            json!({"kind": a.kind, "dedup_key": a.dedup_key}),
        ),
    )
    .await;
    Ok(a)
}

async fn api_alert_resolve(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let a = resolve_by_hand(&state, &req, &user, *id).await?;
    Ok(HttpResponse::Ok().json(alert_json(&a)))
}

async fn render(
    state: &AppState,
    user: &CurrentUser,
    q: &AlertsQuery,
    partial: bool,
    error: Option<AppError>,
) -> Result<HttpResponse, PageError> {
    let limit = Page::new(q.limit, None).limit;
    let active_page = Page::new(q.limit, q.offset);
    let resolved_page = Page::new(q.limit, q.resolved_offset);
    let active = store::alerts::list(&state.db, Some(AlertState::Active), active_page).await?;
    let resolved =
        store::alerts::list(&state.db, Some(AlertState::Resolved), resolved_page).await?;
    let (active_total, resolved_total) = alerts::counts(&state.db).await?;
    let mut host_ids: Vec<i64> = active
        .iter()
        .chain(&resolved)
        .filter_map(|a| a.host_id)
        .collect();
    host_ids.sort_unstable();
    host_ids.dedup();
    let host_names: HashMap<i64, String> = store::hosts::names(&state.db, &host_ids).await?;
    let v = AlertsView {
        user,
        active: &active,
        active_total,
        active_offset: active_page.offset,
        resolved: &resolved,
        resolved_total,
        resolved_offset: resolved_page.offset,
        limit,
        host_names: &host_names,
        now_ms: state.clock.now_ms(),
    };
    let status = error
        .as_ref()
        .map(ResponseError::status_code)
        .unwrap_or(actix_web::http::StatusCode::OK);
    let markup = if partial {
        views::alerts::alerts_body(&v)
    } else {
        let message = error.as_ref().map(AppError::message);
        views::alerts::alerts_page(&v, message.as_deref())
    };
    Ok(super::html(status, markup))
}

async fn alerts_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
    q: web::Query<AlertsQuery>,
) -> Result<HttpResponse, PageError> {
    render(&state, &user, &q, htmx.0, None).await
}

async fn alert_resolve_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    match resolve_by_hand(&state, &req, &user, *id).await {
        Ok(_) => Ok(redirect(htmx.0, routes::ALERTS_PAGE)),
        Err(e @ AppError::Conflict(..)) => {
            let q = AlertsQuery {
                state: None,
                limit: None,
                offset: None,
                resolved_offset: None,
            };
            render(&state, &user, &q, false, Some(e)).await
        }
        Err(e) => Err(PageError(e)),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_ALERTS, api_alerts_list);
    super::route(cfg, Post, routes::API_ALERT_RESOLVE, api_alert_resolve);
    super::route(cfg, Get, routes::ALERTS_PAGE, alerts_page);
    super::route(cfg, Post, routes::ALERT_RESOLVE, alert_resolve_submit);
}
