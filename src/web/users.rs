//! User management (admin only): the JSON API and the settings page, both
//! thin wrappers over the services in `crate::users`.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, PageError};
use crate::{
    clock, routes,
    state::AppState,
    store::users::{self, Role, User},
    views,
};

fn user_json(u: &User) -> serde_json::Value {
    json!({"id": u.id, "username": u.username, "role": u.role, "created_at": clock::rfc3339(u.created_at)})
}

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    password: String,
    role: String,
}

async fn api_users_list(
    state: web::Data<AppState>,
    user: CurrentUser,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let list = users::list(&state.db).await?;
    Ok(HttpResponse::Ok().json(list.iter().map(user_json).collect::<Vec<_>>()))
}

async fn api_user_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let u = crate::users::add(
        &state,
        &super::actor(&user, &req),
        body.username.trim(),
        &body.password,
        &body.role,
    )
    .await?;
    Ok(HttpResponse::Created().json(user_json(&u)))
}

#[derive(Deserialize)]
pub struct RoleBody {
    role: String,
}

#[derive(Deserialize)]
pub struct PasswordBody {
    password: String,
}

async fn api_user_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Json<RoleBody>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let u = crate::users::change_role(&state, &super::actor(&user, &req), *id, &body.role).await?;
    Ok(HttpResponse::Ok().json(user_json(&u)))
}

async fn api_user_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    body: web::Json<PasswordBody>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    crate::users::reset_password(
        &state,
        &super::actor(&user, &req),
        *id,
        &body.password,
        super::session_token(&req).as_deref(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn api_user_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    crate::users::remove(&state, &super::actor(&user, &req), *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Renders the users page, with the outcome of a form post.
async fn render(
    state: &AppState,
    me: &User,
    outcome: Result<String, AppError>,
) -> Result<HttpResponse, PageError> {
    let (status, error, notice) = match outcome {
        Ok(n) => (StatusCode::OK, None, Some(n)),
        Err(e @ AppError::Internal(_)) => return Err(PageError(e)),
        Err(e) => (
            actix_web::ResponseError::status_code(&e),
            Some(e.message()),
            None,
        ),
    };
    let list = users::list(&state.db).await?;
    Ok(super::html(
        status,
        views::users::users_page(me, &list, error.as_deref(), notice.as_deref()),
    ))
}

async fn users_page(state: web::Data<AppState>, user: CurrentUser) -> Result<Markup, PageError> {
    user.require(Role::Admin)?;
    let list = users::list(&state.db).await?;
    Ok(views::users::users_page(&user, &list, None, None))
}

async fn users_add_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    form: web::Form<NewUser>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let r = crate::users::add(
        &state,
        &super::actor(&user, &req),
        form.username.trim(),
        &form.password,
        &form.role,
    )
    .await
    .map(|u| format!("added {} as {}", u.username, u.role.as_str()));
    render(&state, &user, r).await
}

async fn users_role_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    form: web::Form<RoleBody>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let r = crate::users::change_role(&state, &super::actor(&user, &req), *id, &form.role)
        .await
        .map(|u| format!("{} is now {}", u.username, u.role.as_str()));
    render(&state, &user, r).await
}

async fn users_password_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
    form: web::Form<PasswordBody>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let r = crate::users::reset_password(
        &state,
        &super::actor(&user, &req),
        *id,
        &form.password,
        super::session_token(&req).as_deref(),
    )
    .await
    .map(|u| format!("password of {} reset", u.username));
    render(&state, &user, r).await
}

async fn users_delete_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let r = crate::users::remove(&state, &super::actor(&user, &req), *id)
        .await
        .map(|u| format!("removed {}", u.username));
    render(&state, &user, r).await
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_USERS, api_users_list);
    super::route(cfg, Post, routes::API_USERS, api_user_create);
    super::route(cfg, Delete, routes::API_USER, api_user_delete);
    super::route(cfg, Post, routes::API_USER_ROLE, api_user_role);
    super::route(cfg, Post, routes::API_USER_PASSWORD, api_user_password);
    super::route(cfg, Get, routes::USERS_PAGE, users_page);
    super::route(cfg, Post, routes::USERS_PAGE, users_add_submit);
    super::route(cfg, Post, routes::USER_ROLE, users_role_submit);
    super::route(cfg, Post, routes::USER_PASSWORD, users_password_submit);
    super::route(cfg, Post, routes::USER_DELETE, users_delete_submit);
}
