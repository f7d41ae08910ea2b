//! Repositories: the JSON API and repository jobs (`init`, `check`,
//! `unlock`, `snapshots`, `stats`, `forget`, `prune`); their pages and
//! forms are in `pages`.
//! Secrets are write-only: no response here ever carries a password, an
//! `env` value or an unmasked URL.
mod pages;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser};
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
        jobs::{ActorKind, JobKind},
        repositories::Repository,
        users::{Role, User},
    },
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

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_REPOSITORIES, api_list);
    super::route(cfg, Post, routes::API_REPOSITORIES, api_create);
    super::route(cfg, Get, routes::API_REPOSITORY, api_get);
    super::route(cfg, Patch, routes::API_REPOSITORY, api_update);
    super::route(cfg, Delete, routes::API_REPOSITORY, api_delete);
    super::route(cfg, Post, routes::API_REPOSITORY_JOBS, api_jobs);
    pages::configure(cfg);
}
