//! Snapshots, browsing and restore: `GET /api/snapshots`, the ls API, `POST
//! /api/restores`, and the restore flow on the host page (the panel, its
//! folder browser and the review/confirm step). The rules live in
//! `restic::restore`; handlers parse, authorize, call it and render.
use actix_web::{HttpRequest, HttpResponse, web};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, Htmx, PageError, redirect};
use crate::{
    audit::{self, Entry},
    clock,
    restic::{
        jobs::Requester,
        restore::{self, CheckedRestore, RestoreError, RestoreRequest},
    },
    routes,
    state::AppState,
    store::{
        self, Page,
        jobs::ActorKind,
        snapshots::{Snapshot, SnapshotFilter},
        users::{Role, User},
    },
    views::{self, restore as v},
};

impl From<RestoreError> for AppError {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Invalid(code, m) => AppError::BadRequest(code, m),
            RestoreError::Forbidden(_) => AppError::Forbidden,
            RestoreError::NotFound(what) => AppError::not_found(what),
            RestoreError::HostOffline(m) => AppError::Conflict("host_offline", m),
            RestoreError::Timeout(m) => AppError::GatewayTimeout("agent_timeout", m),
            RestoreError::Failed(code, m) => AppError::BadGateway(code, m),
            RestoreError::Store(s) => s.into(),
        }
    }
}

/// What a person reads for a refused restore or browse (the 403 says why).
fn message(e: &RestoreError) -> String {
    match e {
        RestoreError::Forbidden(m) => format!("your role does not allow this: {m}"),
        RestoreError::Store(_) => AppError::Internal(anyhow::anyhow!("store")).message(),
        other => other.to_string(),
    }
}

pub fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "repository_id": s.repository_id,
        "host_id": s.host_id,
        "plan_id": s.plan_id,
        "snapshot_id": s.snapshot_id,
        "short_id": s.short_id,
        "time": clock::rfc3339(s.time),
        "hostname": s.hostname,
        "paths": s.paths,
        "tags": s.tags,
        "files_new": s.files_new,
        "files_changed": s.files_changed,
        "data_added": s.data_added,
        "total_bytes_processed": s.total_bytes_processed,
    })
}

fn requester(user: &User) -> Requester {
    Requester {
        kind: ActorKind::User,
        id: Some(user.id),
        name: user.username.clone(),
    }
}

#[derive(Deserialize)]
pub struct SnapshotsQuery {
    host_id: Option<i64>,
    repository_id: Option<i64>,
    plan_id: Option<i64>,
    limit: Option<u64>,
    offset: Option<u64>,
}

async fn api_snapshots(
    state: web::Data<AppState>,
    _user: CurrentUser,
    q: web::Query<SnapshotsQuery>,
) -> Result<HttpResponse, AppError> {
    let filter = SnapshotFilter {
        host_id: q.host_id,
        repository_id: q.repository_id,
        plan_id: q.plan_id,
    };
    let list = store::snapshots::list(&state.db, &filter, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(list.iter().map(snapshot_json).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
pub struct LsQuery {
    path: Option<String>,
    host_id: Option<i64>,
}

async fn api_ls(
    state: web::Data<AppState>,
    user: CurrentUser,
    p: web::Path<(i64, String)>,
    q: web::Query<LsQuery>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Operator)?;
    let (repository_id, snapshot_id) = p.into_inner();
    let (repo, snap) = restore::snapshot_of(&state, repository_id, &snapshot_id).await?;
    let path = restore::parse_snapshot_path(q.path.as_deref().unwrap_or("/"))?;
    let host = restore::ls_host(&state, &repo, &snap, q.host_id, None).await?;
    let ls = restore::browse(&state, &requester(&user), &repo, &snap, host, &path).await?;
    Ok(HttpResponse::Ok().json(json!({
        "path": ls.path,
        "entries": ls.entries.iter().map(|e| json!({
            "name": e.name,
            "type": e.kind,
            "size": e.size,
            "mtime": e.mtime,
        })).collect::<Vec<_>>(),
    })))
}

/// Queues a checked restore and writes its audit row.
async fn start(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    c: &CheckedRestore,
) -> Result<i64, AppError> {
    let job = restore::queue(state, &requester(user), c).await?;
    tracing::info!(
        job_id = job.id,
        host_id = c.host.id,
        repository_id = c.repo.id,
        snapshot = %c.snap.short_id,
        target = %c.target_path(),
        in_place = c.in_place,
        by = %user.username,
        "restore queued"
    );
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "restore.create",
            "job",
            job.id,
            json!({
                "repository_id": c.repo.id,
                "snapshot_id": c.snap.snapshot_id,
                "host_id": c.host.id,
                "snapshot_host_id": c.snap.host_id,
                "target": c.target_path(),
                "include": c.include,
                "in_place": c.in_place,
            }),
        ),
    )
    .await;
    Ok(job.id)
}

async fn api_restore(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Operator)?;
    let r: RestoreRequest = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(
            "invalid_input",
            format!(
                "the request body does not fit: {}",
                crate::text::one_line(&e.to_string(), 300)
            ),
        )
    })?;
    let c = restore::check(&state, user.role, &r).await?;
    let job_id = start(&state, &req, &user, &c).await?;
    Ok(HttpResponse::Accepted().json(json!({"job_id": job_id})))
}

// ---------------------------------------------------------------- pages

fn html(m: Markup) -> HttpResponse {
    super::html(actix_web::http::StatusCode::OK, m)
}

/// A fragment as its own page when the browser came without htmx.
fn fragment(htmx: bool, user: &User, title: &str, m: Markup) -> HttpResponse {
    if htmx {
        html(m)
    } else {
        html(views::page(
            title,
            user,
            views::Nav::Dashboard,
            maud::html! { (m) },
        ))
    }
}

/// The host page's snapshot list: this host's snapshots, newest first,
/// with their repository's name.
pub async fn host_snapshots(
    state: &AppState,
    host_id: i64,
) -> Result<Vec<(Snapshot, String)>, AppError> {
    let list = store::snapshots::list(
        &state.db,
        &SnapshotFilter {
            host_id: Some(host_id),
            ..Default::default()
        },
        Page::new(Some(50), None),
    )
    .await?;
    let repos = store::repositories::list(&state.db, Page::new(Some(Page::MAX), None)).await?;
    Ok(list
        .into_iter()
        .map(|s| {
            let name = repos
                .iter()
                .find(|r| r.id == s.repository_id)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("#{}", s.repository_id));
            (s, name)
        })
        .collect())
}

#[derive(Deserialize)]
pub struct PanelQuery {
    repository_id: i64,
    snapshot_id: String,
}

async fn restore_panel(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    q: web::Query<PanelQuery>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Operator)?;
    let host = store::hosts::get(&state.db, *id).await?;
    let (repo, snap) = restore::snapshot_of(&state, q.repository_id, &q.snapshot_id)
        .await
        .map_err(AppError::from)?;
    // Admins may restore a shared repository's snapshot onto another host.
    let hosts = if (user.role == Role::Admin) && !repo.local {
        store::hosts::list_all(&state.db, &Default::default()).await?
    } else {
        vec![]
    };
    let view = v::PanelView {
        host: &host,
        repo: &repo,
        snap: &snap,
        hosts: &hosts,
        admin: (user.role == Role::Admin),
    };
    Ok(fragment(htmx.0, &user, "Restore", v::restore_panel(&view)))
}

#[derive(Deserialize)]
pub struct BrowseQuery {
    repository_id: i64,
    snapshot_id: String,
    path: Option<String>,
}

async fn browse_partial(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    q: web::Query<BrowseQuery>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Operator)?;
    let page_host = *id;
    let result = async {
        let (repo, snap) = restore::snapshot_of(&state, q.repository_id, &q.snapshot_id).await?;
        let path = restore::parse_snapshot_path(q.path.as_deref().unwrap_or("/"))?;
        let runner = restore::ls_host(&state, &repo, &snap, None, Some(page_host)).await?;
        let ls = restore::browse(&state, &requester(&user), &repo, &snap, runner, &path).await?;
        Ok::<_, RestoreError>((snap, ls))
    }
    .await;
    // Errors are shown in place (htmx swaps only successful answers).
    let m = match result {
        Ok((snap, ls)) => v::browse_list(page_host, q.repository_id, &snap.snapshot_id, &ls),
        Err(RestoreError::Store(e)) => return Err(AppError::from(e).into()),
        Err(e) => views::components::error_banner(&message(&e)),
    };
    Ok(fragment(htmx.0, &user, "Browse snapshot", m))
}

/// The restore form's fields (`include` repeats).
fn form_request(page_host: i64, body: &[u8]) -> Result<(RestoreRequest, bool), AppError> {
    let pairs = super::forms::pairs(body)?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
    };
    let int = |k: &str| -> Result<Option<i64>, AppError> {
        get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    AppError::BadRequest("invalid_input", format!("{k}: must be a number"))
                })
            })
            .transpose()
    };
    let in_place = get("in_place").is_some_and(|v| !v.is_empty());
    let r = RestoreRequest {
        repository_id: int("repository_id")?.ok_or_else(|| {
            AppError::BadRequest("invalid_input", "repository_id: pick a snapshot".into())
        })?,
        snapshot_id: get("snapshot_id").unwrap_or_default(),
        host_id: int("host_id")?.unwrap_or(page_host),
        // In place means every file back onto its own path.
        target: if in_place {
            "/".into()
        } else {
            get("target").unwrap_or_default()
        },
        include: pairs
            .iter()
            .filter(|(k, _)| k == "include")
            .map(|(_, v)| v.clone())
            .collect(),
        in_place,
        confirm: get("confirm"),
    };
    Ok((r, get("step").as_deref() == Some("confirm")))
}

/// The restore form: first a review of what will happen (with the typed
/// host name for an in-place restore), then, confirmed, the job page.
async fn restore_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Operator)?;
    let (mut r, confirmed) = match form_request(*id, &body) {
        Ok(x) => x,
        Err(e) => {
            return Ok(fragment(
                htmx.0,
                &user,
                "Restore",
                views::components::error_banner(&e.message()),
            ));
        }
    };
    if !confirmed && r.in_place {
        // The review asks for the typed name; every other rule applies now.
        if let Ok(h) = store::hosts::get(&state.db, r.host_id).await {
            r.confirm = Some(h.name);
        }
    }
    let c = match restore::check(&state, user.role, &r).await {
        Ok(c) => c,
        Err(RestoreError::Store(e)) => return Err(AppError::from(e).into()),
        Err(e) => {
            return Ok(fragment(
                htmx.0,
                &user,
                "Restore",
                views::components::error_banner(&message(&e)),
            ));
        }
    };
    if !confirmed {
        return Ok(fragment(
            htmx.0,
            &user,
            "Review restore",
            v::restore_review(*id, &c, &r.include),
        ));
    }
    let job_id = start(&state, &req, &user, &c).await?;
    Ok(redirect(htmx.0, &routes::job(job_id)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_SNAPSHOTS, api_snapshots);
    super::route(cfg, Get, routes::API_SNAPSHOT_LS, api_ls);
    super::route(cfg, Post, routes::API_RESTORES, api_restore);
    super::route(cfg, Get, routes::HOST_RESTORE, restore_panel);
    super::route(cfg, Post, routes::HOST_RESTORE, restore_submit);
    super::route(cfg, Get, routes::HOST_BROWSE, browse_partial);
}
