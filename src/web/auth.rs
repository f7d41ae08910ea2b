//! Login and logout, for the API (JSON) and for the browser (form + cookie).
use actix_web::http::StatusCode;
use actix_web::{
    HttpRequest, HttpResponse,
    cookie::{Cookie, SameSite, time::Duration as CookieDuration},
    http::header,
    web,
};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, MaybeUser, PageError, client_ip};
use crate::{audit, auth, routes, state::AppState, store, views};

#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

fn session_cookie(state: &AppState, token: String) -> Cookie<'static> {
    Cookie::build(routes::SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        // From the configuration, never from a forwarded header any peer
        // could send.
        .secure(state.settings.https())
        .max_age(CookieDuration::seconds(
            state.settings.session_absolute.as_secs() as i64,
        ))
        .finish()
}

fn removal_cookie() -> Cookie<'static> {
    let mut c = Cookie::build(routes::SESSION_COOKIE, "").path("/").finish();
    c.make_removal();
    c
}

async fn api_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, AppError> {
    let (user, token) =
        auth::authenticate(&state, client_ip(&req), &body.username, &body.password).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state, token))
        .json(json!({"username": user.username, "role": user.role})))
}

async fn end_session(state: &AppState, req: &HttpRequest) -> Result<(), AppError> {
    if let Some(user) = super::session_user(req).await? {
        audit::record_logged(
            state,
            &super::actor(&user, req),
            audit::Entry::new("logout", "user", user.id, serde_json::json!({})),
        )
        .await;
    }
    if let Some(c) = req.cookie(routes::SESSION_COOKIE) {
        store::sessions::delete(&state.db, c.value()).await?;
    }
    Ok(())
}

async fn api_logout(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    end_session(&state, &req).await?;
    Ok(HttpResponse::NoContent().cookie(removal_cookie()).finish())
}

async fn api_me(user: CurrentUser) -> HttpResponse {
    HttpResponse::Ok().json(json!({"id": user.id, "username": user.username, "role": user.role}))
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only same-site paths are allowed as a post-login target.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.contains(char::is_control) =>
        {
            n.to_string()
        }
        _ => routes::DASHBOARD.to_string(),
    }
}

async fn login_page(user: MaybeUser, q: web::Query<NextQuery>) -> HttpResponse {
    let next = safe_next(q.next.as_deref());
    if user.0.is_some() {
        return HttpResponse::SeeOther()
            .insert_header((header::LOCATION, next))
            .finish();
    }
    super::html(StatusCode::OK, views::login::login(&next, None, ""))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, PageError> {
    let next = safe_next(form.next.as_deref());
    match auth::authenticate(&state, client_ip(&req), &form.username, &form.password).await {
        Ok((_, token)) => Ok(HttpResponse::SeeOther()
            .cookie(session_cookie(&state, token))
            .insert_header((header::LOCATION, next))
            .finish()),
        Err(e @ (AppError::BadCredentials(_) | AppError::TooManyRequests(..))) => {
            let status = actix_web::ResponseError::status_code(&e);
            Ok(super::html(
                status,
                views::login::login(&next, Some(&e.message()), &form.username),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn logout_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    end_session(&state, &req).await?;
    Ok(HttpResponse::SeeOther()
        .cookie(removal_cookie())
        .insert_header((header::LOCATION, routes::LOGIN))
        .finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Post, routes::API_LOGIN, api_login);
    super::route(cfg, Post, routes::API_LOGOUT, api_logout);
    super::route(cfg, Get, routes::API_ME, api_me);
    super::route(cfg, Get, routes::LOGIN, login_page);
    super::route(cfg, Post, routes::LOGIN, login_submit);
    super::route(cfg, Post, routes::LOGOUT, logout_submit);
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn login_redirect_target_stays_on_this_site() {
        assert_eq!(safe_next(Some("/hosts/3")), "/hosts/3");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
