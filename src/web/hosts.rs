//! Hosts: the JSON API, the dashboard, the host page and adding/removing
//! hosts (admin).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::Markup;
use serde::{Deserialize, Serialize};

use super::{AppError, CurrentUser, Htmx, PageError, public_url, redirect};
use crate::{
    clock, routes,
    state::AppState,
    store::{
        self, Page,
        health::{BackupState, HostHealth},
        hosts::{Host, HostFilter, Status},
        users::Role,
    },
    version,
    views::{self, dashboard::DashboardView},
};

#[derive(Serialize)]
pub struct HostJson {
    id: i64,
    name: String,
    hostname: String,
    os: String,
    arch: String,
    agent_version: String,
    online: bool,
    last_seen_at: Option<String>,
    update_available: bool,
    target_version: String,
    enrolled: bool,
    created_at: String,
    labels: Vec<String>,
    restic_version: Option<String>,
    backup_state: BackupState,
    last_backup_at: Option<String>,
    last_backup_status: Option<String>,
    next_backup_at: Option<String>,
}

impl HostJson {
    fn new(h: Host, health: &HostHealth) -> Self {
        HostJson {
            backup_state: health.backup_state,
            last_backup_at: health.last_backup_at.map(clock::rfc3339),
            last_backup_status: health.last_backup_status.clone(),
            next_backup_at: health.next_backup_at.map(clock::rfc3339),
            update_available: h.is_behind(version::VERSION),
            target_version: version::VERSION.to_string(),
            last_seen_at: h.last_seen_at.map(clock::rfc3339),
            created_at: clock::rfc3339(h.created_at),
            id: h.id,
            name: h.name,
            hostname: h.hostname,
            os: h.os,
            arch: h.arch,
            agent_version: h.agent_version,
            online: h.online,
            enrolled: h.enrolled,
            labels: h.labels,
            restic_version: h.restic_version,
        }
    }
}

/// Host objects with their backup health (one query for the page).
pub async fn hosts_json(state: &AppState, hosts: Vec<Host>) -> Result<Vec<HostJson>, AppError> {
    let ids: Vec<i64> = hosts.iter().map(|h| h.id).collect();
    let s = state.settings.staleness(state.clock.now_ms());
    let health = store::health::of_hosts(&state.db, &ids, s).await?;
    Ok(hosts
        .into_iter()
        .map(|h| {
            let hh = health.get(&h.id).unwrap_or(&HostHealth::UNPROTECTED);
            HostJson::new(h, hh)
        })
        .collect())
}

pub async fn host_json(state: &AppState, h: Host) -> Result<HostJson, AppError> {
    hosts_json(state, vec![h])
        .await?
        .pop()
        .ok_or(AppError::NotFound("not_found", "host not found".into()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    updates: Option<String>,
    backup: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl ListQuery {
    fn filter(&self, state: &AppState) -> Result<HostFilter, AppError> {
        let status = match self.status.as_deref() {
            None | Some("") | Some("all") => None,
            Some("online") => Some(Status::Online),
            Some("offline") => Some(Status::Offline),
            Some(other) => {
                return Err(AppError::BadRequest(
                    "invalid_status",
                    format!("status must be online or offline, not {other:?}"),
                ));
            }
        };
        let behind = match self.updates.as_deref() {
            None | Some("") => None,
            Some("behind") => Some(version::VERSION.to_string()),
            Some(other) => {
                return Err(AppError::BadRequest(
                    "invalid_updates",
                    format!("updates must be behind, not {other:?}"),
                ));
            }
        };
        let backup = match self.backup.as_deref() {
            None | Some("") | Some("all") => None,
            Some(b) => match BackupState::parse(b) {
                Some(b) => Some((b, state.settings.staleness(state.clock.now_ms()))),
                None => {
                    return Err(AppError::BadRequest(
                        "invalid_backup",
                        format!(
                            "backup must be failing, stale, pending, ok or unprotected, not {b:?}"
                        ),
                    ));
                }
            },
        };
        Ok(HostFilter {
            status,
            behind,
            backup,
        })
    }
    fn page(&self) -> Page {
        Page::new(self.limit, self.offset)
    }
}

async fn api_hosts_list(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let filter = q.filter(&state)?;
    let hosts = store::hosts::list(&state.db, &filter, q.page()).await?;
    Ok(HttpResponse::Ok().json(hosts_json(&state, hosts).await?))
}

async fn api_host_get(
    state: web::Data<AppState>,
    _user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let h = store::hosts::get(&state.db, *id).await?;
    Ok(HttpResponse::Ok().json(host_json(&state, h).await?))
}

#[derive(Deserialize)]
pub struct NewHost {
    name: String,
}

async fn api_host_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Json<NewHost>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let by = super::actor(&user, &req);
    let created = crate::hosts::add(&state, &by, body.name.trim()).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": created.host_id,
        "enrollment_token": created.enrollment_token,
        "expires_at": clock::rfc3339(created.expires_at),
    })))
}

async fn api_host_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let (_, t) = crate::hosts::new_token(&state, &super::actor(&user, &req), *id).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": *id,
        "enrollment_token": t.token,
        "expires_at": clock::rfc3339(t.expires_at),
    })))
}

async fn api_host_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    crate::hosts::remove(&state, &super::actor(&user, &req), *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn dashboard(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
    q: web::Query<ListQuery>,
) -> Result<Markup, PageError> {
    let filter = q.filter(&state)?;
    let page = q.page();
    let now = state.clock.now_ms();
    let staleness = state.settings.staleness(now);
    let db = &state.db;
    // The page's reads are independent: run them side by side on the pool,
    // so the page takes as long as its slowest read, not their sum (two
    // grouped passes over the plans' rows on `?backup=`: BENCHMARKS.md,
    // history at scale).
    let listed = async {
        let hosts = store::hosts::list(db, &filter, page).await?;
        let ids: Vec<i64> = hosts.iter().map(|h| h.id).collect();
        let health = store::health::of_hosts(db, &ids, staleness).await?;
        Ok::<_, store::StoreError>((hosts, health))
    };
    let everyone = HostFilter::default();
    let online = HostFilter {
        status: Some(Status::Online),
        ..Default::default()
    };
    // Filtered by backup state alone, the tile's count is the total: one
    // pass over the plans' rows fewer.
    let own_total = !matches!(
        (&filter.backup, filter.status, &filter.behind),
        (Some(_), None, None) | (None, None, None)
    );
    // Three at once at most: the pool is shared with the agents' writers.
    let counted = async {
        let filtered = match own_total {
            true => Some(store::hosts::count(db, &filter).await?),
            false => None,
        };
        Ok::<_, store::StoreError>((
            store::hosts::count(db, &everyone).await?,
            store::hosts::count(db, &online).await?,
            store::hosts::behind_count(db, version::VERSION).await?,
            filtered,
        ))
    };
    let ((hosts, health), backup_counts, (count_all, count_online, count_behind, filtered)) =
        tokio::try_join!(listed, store::health::counts(db, staleness), counted)?;
    let total = match (filtered, &filter.backup) {
        (Some(n), _) => n,
        (None, Some((b, _))) => backup_counts.get(b).copied().unwrap_or(0),
        (None, None) => count_all,
    };
    let v = DashboardView {
        user: &user,
        hosts: &hosts,
        status: filter.status,
        behind: filter.behind.is_some(),
        backup: filter.backup.map(|(b, _)| b),
        health: &health,
        backup_counts: &backup_counts,
        count_behind,
        offset: page.offset,
        limit: page.limit,
        total,
        count_all,
        count_online,
        now_ms: now,
    };
    Ok(if htmx.0 {
        views::dashboard::dashboard_body(&v)
    } else {
        views::dashboard::dashboard(&v)
    })
}

async fn host_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<Markup, PageError> {
    let h = store::hosts::get(&state.db, *id).await?;
    let now = state.clock.now_ms();
    if htmx.0 {
        return Ok(views::host::host_status(&h, now));
    }
    let recent = super::jobs::recent_for_host(&state, h.id, 10).await?;
    let live_update = store::jobs::live_of_kind(&state.db, h.id, store::jobs::JobKind::Update)
        .await?
        .map(|j| j.id);
    // Snapshots and the restore flow (web/restore.rs).
    let snapshots = views::restore::host_snapshots_section(
        h.id,
        &super::restore::host_snapshots(&state, h.id).await?,
        user.role >= Role::Operator,
    );
    Ok(views::host::host_page(
        &user,
        &h,
        &recent,
        live_update,
        now,
        snapshots,
    ))
}

async fn host_new_page(user: CurrentUser) -> Result<Markup, PageError> {
    user.require(Role::Admin)?;
    Ok(views::host::add_host_page(&user, None, ""))
}

#[derive(Deserialize)]
pub struct NewHostForm {
    name: String,
}

async fn host_new_submit(
    state: web::Data<AppState>,
    user: CurrentUser,
    req: HttpRequest,
    form: web::Form<NewHostForm>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let name = form.name.trim();
    match crate::hosts::add(&state, &super::actor(&user, &req), name).await {
        Ok(c) => Ok(super::html(
            StatusCode::OK,
            views::host::enroll_instructions(
                &user,
                c.host_id,
                &c.name,
                &c.enrollment_token,
                c.expires_at,
                &public_url(&state, &req),
            ),
        )),
        Err(e @ (AppError::BadRequest(..) | AppError::Conflict(..))) => Ok(super::html(
            actix_web::ResponseError::status_code(&e),
            views::host::add_host_page(&user, Some(&e.message()), name),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn host_token_submit(
    state: web::Data<AppState>,
    user: CurrentUser,
    req: HttpRequest,
    id: web::Path<i64>,
) -> Result<Markup, PageError> {
    user.require(Role::Admin)?;
    let (h, t) = crate::hosts::new_token(&state, &super::actor(&user, &req), *id).await?;
    Ok(views::host::enroll_instructions(
        &user,
        h.id,
        &h.name,
        &t.token,
        t.expires_at,
        &public_url(&state, &req),
    ))
}

async fn host_delete_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    crate::hosts::remove(&state, &super::actor(&user, &req), *id).await?;
    Ok(redirect(htmx.0, routes::DASHBOARD))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_HOSTS, api_hosts_list);
    super::route(cfg, Post, routes::API_HOSTS, api_host_create);
    super::route(cfg, Get, routes::API_HOST, api_host_get);
    super::route(cfg, Delete, routes::API_HOST, api_host_delete);
    super::route(cfg, Post, routes::API_HOST_TOKEN, api_host_token);
    super::route(cfg, Get, routes::DASHBOARD, dashboard);
    super::route(cfg, Get, routes::HOST_NEW, host_new_page);
    super::route(cfg, Post, routes::HOST_NEW, host_new_submit);
    super::route(cfg, Get, routes::HOST, host_page);
    super::route(cfg, Post, routes::HOST_TOKEN, host_token_submit);
    super::route(cfg, Post, routes::HOST_DELETE, host_delete_submit);
}
