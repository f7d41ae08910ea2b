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
use crate::{
    audit::{self, Actor},
    auth, routes,
    state::AppState,
    store::{self, users::User},
    views,
};

#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Checks credentials with throttling; opens a session on success.
async fn authenticate(
    state: &AppState,
    req: &HttpRequest,
    username: &str,
    password: &str,
) -> Result<(User, String), AppError> {
    let ip = client_ip(req);
    let locked = || {
        state.throttle.locked_for(username, ip).map(|secs| {
            AppError::TooManyRequests(
                "too_many_attempts",
                format!("too many failed logins: wait {secs} seconds and try again"),
                secs,
            )
        })
    };
    if let Some(e) = locked() {
        return Err(e);
    }
    let Some(turn) = auth::password_turn().await else {
        return Err(AppError::TooManyRequests(
            "server_busy",
            "too many logins at once: try again in a few seconds".into(),
            5,
        ));
    };
    // Attempts sent together waited for this turn: earlier ones may have
    // locked the login meanwhile.
    if let Some(e) = locked() {
        return Err(e);
    }
    // A name that could never be a user is not looked up (a NUL would even
    // fail the query on Postgres), but costs the same time.
    let found = match store::users::validate_username(username) {
        Ok(()) => store::users::find_for_login(&state.db, username).await?,
        Err(_) => None,
    };
    // Verify against a fixed hash when the user does not exist, so timing
    // does not reveal which usernames exist.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, dummy_hash().to_string()),
    };
    let (ok, turn) = verify(password.to_string(), hash, turn).await;
    let ok = ok && user.is_some();
    let Some(user) = user.filter(|_| ok) else {
        // Counted before the turn is given up, so the next in line sees it.
        state.throttle.record_failure(username, ip);
        drop(turn);
        // What was typed, made fit to log and store.
        let shown = crate::text::one_line(username, 64);
        tracing::info!(username = %shown, ip = ?ip, "failed login");
        audit::record(
            state,
            Some(req),
            Actor::Named(&shown),
            "login.failed",
            "user",
            &shown,
            serde_json::json!({}),
        )
        .await;
        return Err(AppError::BadCredentials(
            "wrong username or password".into(),
        ));
    };
    state.throttle.record_success(username);
    drop(turn);
    let now = state.clock.now_ms();
    let session = store::sessions::create(
        &state.db,
        user.id,
        &ip.map(|i| i.to_string()).unwrap_or_default(),
        now,
        state.settings.session_absolute.as_millis() as i64,
    )
    .await?;
    tracing::info!(username = %user.username, "login");
    audit::record(
        state,
        Some(req),
        Actor::User(&user),
        "login",
        "user",
        user.id,
        serde_json::json!({}),
    )
    .await;
    Ok((user, session.token))
}

/// argon2 is deliberately slow: it runs on the blocking pool, in `turn`.
async fn verify(password: String, hash: String, turn: auth::Turn) -> (bool, Option<auth::Turn>) {
    match auth::in_turn(turn, move || auth::verify_password(&password, &hash)).await {
        Some((ok, turn)) => (ok, Some(turn)),
        None => (false, None),
    }
}

fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| auth::hash_password("not-a-real-password").unwrap_or_default())
}

fn session_cookie(req: &HttpRequest, state: &AppState, token: String) -> Cookie<'static> {
    Cookie::build(routes::SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(req.connection_info().scheme() == "https")
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
    let (user, token) = authenticate(&state, &req, &body.username, &body.password).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&req, &state, token))
        .json(json!({"username": user.username, "role": user.role})))
}

async fn end_session(state: &AppState, req: &HttpRequest) -> Result<(), AppError> {
    if let Some(user) = super::session_user(req).await? {
        audit::record(
            state,
            Some(req),
            Actor::User(&user),
            "logout",
            "user",
            user.id,
            serde_json::json!({}),
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
    match authenticate(&state, &req, &form.username, &form.password).await {
        Ok((_, token)) => Ok(HttpResponse::SeeOther()
            .cookie(session_cookie(&req, &state, token))
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
