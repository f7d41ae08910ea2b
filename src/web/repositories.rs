//! Repositories: the JSON API, their pages and forms, and repository jobs
//! (`init`, `check`, `unlock`, `snapshots`, `stats`, `forget`, `prune`).
//! Secrets are write-only: no response here ever carries a password, an
//! `env` value or an unmasked URL.
use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

// Form fields repeat (`env_key`/`env_value` rows): the body is read as pairs.
use super::forms::{field, nonempty, pairs as form_pairs};
use super::{AppError, CurrentUser, Htmx, PageError, redirect};
use crate::{
    audit::{self, Entry},
    clock,
    restic::{
        self,
        jobs::{QueueError, REPOSITORY_KINDS, Requester},
        repositories::RepositoryInput,
    },
    routes,
    state::AppState,
    store::{
        self, Page,
        jobs::{ActorKind, JobFilter, JobKind},
        repositories::Repository,
        snapshots::SnapshotFilter,
        users::{Role, User},
    },
    views,
};

pub fn repository_json(r: &Repository) -> serde_json::Value {
    json!({
        "id": r.id,
        "name": r.name,
        "url": r.url_masked,
        "local": r.local,
        "env_keys": r.env_keys,
        "password_set": r.password_set,
        "maintenance_host_id": r.maintenance_host_id,
        "maintenance_schedule": r.maintenance_schedule,
        "prune": r.prune,
        "max_unused": r.max_unused,
        "check_every_days": r.check_every_days,
        "check_read_data_subset": r.check_read_data_subset,
        "max_concurrent_backups": r.max_concurrent_backups,
        "last_check_at": r.last_check_at.map(clock::rfc3339),
        "created_at": clock::rfc3339(r.created_at),
    })
}

/// A JSON body, with any error as `invalid_input` (serde names the field).
fn input<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::BadRequest(
            "invalid_input",
            format!(
                "the request body does not fit: {}",
                crate::text::one_line(&e.to_string(), 300)
            ),
        )
    })
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
    let list = store::repositories::list(&state.db, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(list.iter().map(repository_json).collect::<Vec<_>>()))
}

async fn api_get(
    state: web::Data<AppState>,
    _user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let r = store::repositories::get(&state.db, *id).await?;
    Ok(HttpResponse::Ok().json(repository_json(&r)))
}

async fn create(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    input: RepositoryInput,
) -> Result<Repository, AppError> {
    let r = restic::repositories::create(&state.db, &state.secrets, input, state.clock.now_ms())
        .await?;
    tracing::info!(repository_id = r.id, name = %r.name, url = %r.url_masked, by = %user.username, "repository added");
    state.restic.wake_scheduler();
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "repository.create",
            "repository",
            r.id,
            json!({"name": r.name, "url": r.url_masked, "env_keys": r.env_keys}),
        ),
    )
    .await;
    Ok(r)
}

async fn update(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
    input: RepositoryInput,
) -> Result<Repository, AppError> {
    // Which fields changed, never their values.
    let changed: Vec<&str> = [
        ("name", input.name.is_some()),
        ("url", input.url.is_some()),
        ("password", input.password.is_some()),
        ("env", input.env.is_some()),
        ("maintenance_host_id", input.maintenance_host_id.is_some()),
        ("maintenance_schedule", input.maintenance_schedule.is_some()),
        ("prune", input.prune.is_some()),
        ("max_unused", input.max_unused.is_some()),
        ("check_every_days", input.check_every_days.is_some()),
        (
            "check_read_data_subset",
            input.check_read_data_subset.is_some(),
        ),
        (
            "max_concurrent_backups",
            input.max_concurrent_backups.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let r =
        restic::repositories::update(&state.db, &state.secrets, id, input, state.clock.now_ms())
            .await?;
    tracing::info!(repository_id = r.id, fields = ?changed, by = %user.username, "repository changed");
    state.restic.wake_scheduler();
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "repository.update",
            "repository",
            r.id,
            json!({"name": r.name, "changed": changed}),
        ),
    )
    .await;
    Ok(r)
}

async fn remove(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    id: i64,
) -> Result<Repository, AppError> {
    let r = store::repositories::delete(&state.db, id).await?;
    tracing::info!(repository_id = r.id, by = %user.username, "repository removed");
    audit::record_logged(
        state,
        &super::actor(user, req),
        Entry::new(
            "repository.delete",
            "repository",
            r.id,
            json!({"name": r.name}),
        ),
    )
    .await;
    Ok(r)
}

async fn api_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let r = create(&state, &req, &user, input(&body)?).await?;
    Ok(HttpResponse::Created().json(json!({"id": r.id})))
}

async fn api_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let r = update(&state, &req, &user, *id, input(&body)?).await?;
    Ok(HttpResponse::Ok().json(repository_json(&r)))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    kind: String,
    host_id: Option<i64>,
    /// unlock: also remove locks that are not stale (admin).
    #[serde(default)]
    remove_all: bool,
}

/// The role a repository job needs.
fn role_for(kind: JobKind, remove_all: bool) -> Role {
    match kind {
        JobKind::Forget | JobKind::Prune => Role::Admin,
        JobKind::Unlock if remove_all => Role::Admin,
        _ => Role::Operator,
    }
}

/// Queues a repository job on the given host, or on the default hosts.
async fn run_job(
    state: &AppState,
    req: &HttpRequest,
    user: &CurrentUser,
    repository_id: i64,
    r: JobRequest,
) -> Result<Vec<i64>, AppError> {
    let kind = JobKind::parse(&r.kind)
        .filter(|k| REPOSITORY_KINDS.contains(k))
        .ok_or_else(|| {
            AppError::BadRequest(
                "invalid_input",
                format!(
                    "kind: must be one of init, check, unlock, snapshots, stats, forget, prune (not {:?})",
                    crate::text::one_line(&r.kind, 32)
                ),
            )
        })?;
    user.require(role_for(kind, r.remove_all))?;
    if r.remove_all && kind != JobKind::Unlock {
        return Err(AppError::BadRequest(
            "invalid_input",
            "remove_all: only for unlock".into(),
        ));
    }
    let repo = store::repositories::get(&state.db, repository_id).await?;
    let hosts = match r.host_id {
        Some(h) => {
            restic::jobs::check_host(state, h).await?;
            vec![h]
        }
        None if kind == JobKind::Init => {
            return Err(AppError::BadRequest(
                "invalid_input",
                "host_id: init needs the host that creates the repository".into(),
            ));
        }
        None => restic::jobs::default_hosts(state, &repo).await?,
    };
    // Forget follows each plan's retention (--tag rm-plan:<id> --group-by
    // host,paths): one job per plan using the repository.
    let runs: Vec<(Option<i64>, agent::wire::ResticOptions)> = if kind == JobKind::Forget {
        let plans = restic::plans::retention_plans(&state.db, repo.id).await?;
        if plans.is_empty() {
            return Err(QueueError::Invalid(
                "kind: forget applies the retention of each plan using this repository, and no plan with a retention uses it".into(),
            )
            .into());
        }
        plans
            .iter()
            .map(|p| (Some(p.id), restic::plans::forget_options(p, None)))
            .collect()
    } else {
        vec![(
            None,
            restic::jobs::repository_options(kind, &repo, r.remove_all),
        )]
    };
    let who = Requester {
        kind: ActorKind::User,
        id: Some(user.id),
        name: user.username.clone(),
    };
    let mut ids = Vec::with_capacity(hosts.len());
    for (host, (plan_id, options)) in hosts.iter().flat_map(|h| runs.iter().map(move |r| (*h, r))) {
        let job = restic::jobs::enqueue(state, &who, &repo, host, kind, *plan_id, options).await?;
        audit::record_logged(
            state,
            &super::actor(user, req),
            Entry::new(
                "repository.job",
                "job",
                job.id,
                json!({"repository_id": repo.id, "kind": kind, "host_id": host, "remove_all": r.remove_all}),
            ),
        )
        .await;
        ids.push(job.id);
    }
    Ok(ids)
}

async fn api_jobs(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Operator)?;
    let r: JobRequest = input(&body)?;
    let ids = run_job(&state, &req, &user, *id, r).await?;
    Ok(HttpResponse::Accepted().json(json!({"job_ids": ids})))
}

// ---------------------------------------------------------------- pages

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
    Ok(super::html(
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
    Ok(super::html(status, views::repositories::detail_page(&v)))
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

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_REPOSITORIES, api_list);
    super::route(cfg, Post, routes::API_REPOSITORIES, api_create);
    super::route(cfg, Get, routes::API_REPOSITORY, api_get);
    super::route(cfg, Patch, routes::API_REPOSITORY, api_update);
    super::route(cfg, Delete, routes::API_REPOSITORY, api_delete);
    super::route(cfg, Post, routes::API_REPOSITORY_JOBS, api_jobs);
    super::route(cfg, Get, routes::REPOSITORIES_PAGE, list_page);
    super::route(cfg, Post, routes::REPOSITORIES_PAGE, create_submit);
    super::route(cfg, Get, routes::REPOSITORY_PAGE, detail_page);
    super::route(cfg, Post, routes::REPOSITORY_PAGE, update_submit);
    super::route(cfg, Post, routes::REPOSITORY_DELETE, delete_submit);
    super::route(cfg, Post, routes::REPOSITORY_JOBS, jobs_submit);
}
