//! Dispatching an agent update to one host (admin): the JSON API and the
//! htmx form on the host page (a refusal is the page error, which htmx shows
//! as a banner).
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{AppError, CurrentUser, Htmx, PageError, client_ip, redirect};
use crate::{
    routes,
    state::AppState,
    store::{jobs::ActorKind, users::Role},
    updates::{self, DispatchError, Requester},
};

impl From<DispatchError> for AppError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::HostNotFound => AppError::not_found("host"),
            DispatchError::Store(s) => s.into(),
            other => AppError::Conflict(other.code(), other.to_string()),
        }
    }
}

fn requester(user: &CurrentUser, req: &HttpRequest) -> Requester {
    Requester {
        kind: ActorKind::User,
        user_id: Some(user.id),
        name: user.username.clone(),
        client_addr: client_ip(req).map(|i| i.to_string()).unwrap_or_default(),
    }
}

async fn api_host_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let job = updates::dispatch(&state, *id, &requester(&user, &req)).await?;
    Ok(HttpResponse::Ok().json(json!({"job_id": job.id})))
}

async fn host_update_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    htmx: Htmx,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let job = updates::dispatch(&state, *id, &requester(&user, &req))
        .await
        .map_err(AppError::from)?;
    Ok(redirect(htmx.0, &routes::job(job.id)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Post, routes::API_HOST_UPDATE, api_host_update);
    super::route(cfg, Post, routes::HOST_UPDATE, host_update_submit);
}
