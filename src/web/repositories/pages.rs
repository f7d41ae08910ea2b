//! The repository pages: list and detail with their forms (the secrets
//! stay write-only there too) and repository jobs started from a page.
use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};

use super::{JobRequest, create, remove, run_job, update};
// Form fields repeat (`env_key`/`env_value` rows): the body is read as pairs.
use crate::web::forms::{field, nonempty, pairs as form_pairs};
use crate::web::{AppError, CurrentUser, Htmx, PageError, redirect};
use crate::{
    restic::{self, repositories::RepositoryInput},
    routes,
    state::AppState,
    store::{
        self, Page,
        jobs::JobFilter,
        snapshots::SnapshotFilter,
        users::{Role, User},
    },
    views,
};

async fn page_data(state: &AppState) -> Result<Vec<store::hosts::Host>, AppError> {
    Ok(store::hosts::list_all(&state.db, &Default::default()).await?)
}

async fn list_page(
    state: web::Data<AppState>,
    user: CurrentUser,
) -> Result<HttpResponse, PageError> {
    render_list(&state, &user, None, actix_web::http::StatusCode::OK).await
}

async fn render_list(
    state: &AppState,
    user: &User,
    error: Option<String>,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, PageError> {
    let list = store::repositories::list(&state.db, Page::new(Some(1000), None)).await?;
    Ok(crate::web::html(
        status,
        views::repositories::list_page(user, &list, error.as_deref()),
    ))
}

/// The env rows of a form: a row with a name and an empty value keeps the
/// stored value of that name (`old`); a row without a name is dropped.
fn form_env(
    pairs: &[(String, String)],
    old: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let keys = pairs
        .iter()
        .filter(|(k, _)| k == "env_key")
        .map(|(_, v)| v.trim());
    let values = pairs
        .iter()
        .filter(|(k, _)| k == "env_value")
        .map(|(_, v)| v.as_str());
    let mut env = BTreeMap::new();
    for (k, v) in keys.zip(values) {
        if k.is_empty() {
            continue;
        }
        let v = if v.is_empty() {
            old.get(k).cloned().unwrap_or_default()
        } else {
            v.to_string()
        };
        env.insert(k.to_string(), v);
    }
    env
}

/// A repository input from the create or edit form.
fn form_input(
    pairs: &[(String, String)],
    old_env: &BTreeMap<String, String>,
    creating: bool,
) -> Result<RepositoryInput, AppError> {
    let int = |name: &str| -> Result<Option<i32>, AppError> {
        nonempty(pairs, name)
            .map(|v| {
                v.parse::<i32>().map_err(|_| {
                    AppError::BadRequest("invalid_input", format!("{name}: must be a whole number"))
                })
            })
            .transpose()
    };
    let host = nonempty(pairs, "maintenance_host_id")
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                AppError::BadRequest("invalid_input", "maintenance_host_id: pick a host".into())
            })
        })
        .transpose()?;
    Ok(RepositoryInput {
        name: nonempty(pairs, "name"),
        url: nonempty(pairs, "url"),
        // Write-only: an empty password field keeps the stored one.
        password: field(pairs, "password")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        env: Some(form_env(pairs, old_env)),
        maintenance_host_id: Some(host),
        maintenance_schedule: nonempty(pairs, "maintenance_schedule"),
        prune: Some(field(pairs, "prune").is_some()),
        max_unused: Some(nonempty(pairs, "max_unused")),
        check_every_days: int("check_every_days")?,
        check_read_data_subset: Some(nonempty(pairs, "check_read_data_subset")),
        max_concurrent_backups: int("max_concurrent_backups")?,
    })
    .map(|mut i| {
        if creating && i.maintenance_host_id == Some(None) {
            i.maintenance_host_id = None;
        }
        i
    })
}

async fn create_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let pairs = form_pairs(&body)?;
    let result = match form_input(&pairs, &BTreeMap::new(), true) {
        Ok(i) => create(&state, &req, &user, i).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Ok(redirect(htmx.0, &routes::repository(r.id))),
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
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, PageError> {
    let repo = store::repositories::get(&state.db, id).await?;
    let hosts = page_data(state).await.map_err(PageError)?;
    let jobs = store::jobs::list(
        &state.db,
        &JobFilter {
            repository_id: Some(id),
            ..Default::default()
        },
        Page::new(Some(20), None),
    )
    .await?;
    let names: std::collections::HashMap<i64, String> =
        hosts.iter().map(|h| (h.id, h.name.clone())).collect();
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|j| {
            let n = names
                .get(&j.host_id)
                .cloned()
                .unwrap_or_else(|| format!("#{}", j.host_id));
            (j, n)
        })
        .collect();
    let snapshots = store::snapshots::list(
        &state.db,
        &SnapshotFilter {
            repository_id: Some(id),
            ..Default::default()
        },
        Page::new(Some(50), None),
    )
    .await?;
    let v = views::repositories::DetailView {
        user,
        repo: &repo,
        hosts: &hosts,
        jobs: &jobs,
        snapshots: &snapshots,
        error: error.as_deref(),
        now_ms: state.clock.now_ms(),
    };
    Ok(crate::web::html(
        status,
        views::repositories::detail_page(&v),
    ))
}

async fn detail_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    render_detail(&state, &user, *id, None, actix_web::http::StatusCode::OK).await
}

async fn page_failure(
    state: &AppState,
    user: &User,
    id: i64,
    e: AppError,
) -> Result<HttpResponse, PageError> {
    match e {
        e @ (AppError::Internal(_) | AppError::NotFound(..)) => Err(PageError(e)),
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
    let pairs = form_pairs(&body)?;
    let old = restic::repositories::open_for_agent(&state.db, &state.secrets, *id)
        .await
        .map_err(|e| PageError(e.into()))?;
    let result = match form_input(&pairs, &old.env, false) {
        Ok(i) => update(&state, &req, &user, *id, i).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Ok(redirect(htmx.0, &routes::repository(r.id))),
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
        Ok(_) => Ok(redirect(htmx.0, routes::REPOSITORIES_PAGE)),
        Err(e) => page_failure(&state, &user, *id, e).await,
    }
}

async fn jobs_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Operator)?;
    let pairs = form_pairs(&body)?;
    let host_id = match nonempty(&pairs, "host_id").map(|h| h.parse::<i64>()) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => {
            return page_failure(
                &state,
                &user,
                *id,
                AppError::BadRequest("invalid_input", "host_id: pick a host".into()),
            )
            .await;
        }
    };
    let r = JobRequest {
        kind: field(&pairs, "kind").unwrap_or_default().to_string(),
        host_id,
        remove_all: field(&pairs, "remove_all").is_some(),
    };
    match run_job(&state, &req, &user, *id, r).await {
        Ok(ids) if ids.len() == 1 => Ok(redirect(htmx.0, &routes::job(ids[0]))),
        Ok(_) => Ok(redirect(htmx.0, &routes::repository(*id))),
        Err(e) => page_failure(&state, &user, *id, e).await,
    }
}

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    use crate::web::route;
    route(cfg, Get, routes::REPOSITORIES_PAGE, list_page);
    route(cfg, Post, routes::REPOSITORIES_PAGE, create_submit);
    route(cfg, Get, routes::REPOSITORY_PAGE, detail_page);
    route(cfg, Post, routes::REPOSITORY_PAGE, update_submit);
    route(cfg, Post, routes::REPOSITORY_DELETE, delete_submit);
    route(cfg, Post, routes::REPOSITORY_JOBS, jobs_submit);
}
