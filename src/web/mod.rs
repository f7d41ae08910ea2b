//! HTTP handlers, one file per resource, plus what they share: the session
//! extractor, the cross-site guard and the extractor error handlers.
pub mod agent_binary;
pub mod agent_ws;
pub mod alerts;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod enroll;
pub mod error;
pub mod fleet;
pub mod forms;
pub mod host_update;
pub mod hosts;
pub mod job_events;
pub mod jobs;
pub mod metrics;
pub mod notifications;
pub mod plans;
pub mod repositories;
pub mod restore;
pub mod users;
pub mod version;

use std::future::{Ready, ready};

use actix_web::{
    FromRequest, HttpRequest, HttpResponse,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, header},
    middleware::Next,
    web,
};
use futures_util::future::LocalBoxFuture;

pub use error::{AppError, PageError};

use crate::{
    routes,
    state::AppState,
    store::{
        self,
        users::{Role, User},
    },
};

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|err, _req| {
                AppError::BadRequest(
                    "invalid_json",
                    format!("request body is not valid JSON for this endpoint: {err}"),
                )
                .into()
            }),
    )
    .app_data(
        web::FormConfig::default()
            .limit(64 * 1024)
            .error_handler(|err, _req| {
                PageError(AppError::BadRequest(
                    "invalid_form",
                    format!("the form could not be read: {err}"),
                ))
                .into()
            }),
    )
    .app_data(web::PathConfig::default().error_handler(|_err, req| {
        // An id that is not a number names no object: answer as for an
        // unknown number, with the resource's own code.
        let e = match req.match_pattern().as_deref().and_then(path_resource) {
            Some(what) => AppError::not_found(what),
            None => AppError::NotFound(
                "not_found",
                "no such page or object: check the address".into(),
            ),
        };
        if is_api(req) {
            e.into()
        } else {
            PageError(e).into()
        }
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, req| {
        let e = AppError::BadRequest("invalid_query", format!("bad query parameters: {err}"));
        if is_api(req) {
            e.into()
        } else {
            PageError(e).into()
        }
    }));
    version::configure(cfg);
    assets::configure(cfg);
    auth::configure(cfg);
    hosts::configure(cfg);
    host_update::configure(cfg);
    fleet::configure(cfg);
    jobs::configure(cfg);
    job_events::configure(cfg);
    repositories::configure(cfg);
    restore::configure(cfg);
    plans::configure(cfg);
    users::configure(cfg);
    audit::configure(cfg);
    alerts::configure(cfg);
    metrics::configure(cfg);
    notifications::configure(cfg);
    enroll::configure(cfg);
    agent_binary::configure(cfg);
    agent_ws::configure(cfg);
}

/// Registers `handler` for `method path`. Every route goes through here:
/// `path` must be a pattern constant of `routes` listed in `routes::ALL`
/// with this method, so the role table there stays complete.
pub(crate) fn route<F, Args>(
    cfg: &mut web::ServiceConfig,
    method: routes::Method,
    path: &'static str,
    handler: F,
) where
    F: actix_web::Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    assert!(
        routes::find(method, path).is_some(),
        "{} {path} is not in routes::ALL: add it there with its least role",
        method.as_str()
    );
    let m = match method {
        routes::Method::Get => Method::GET,
        routes::Method::Post => Method::POST,
        routes::Method::Patch => Method::PATCH,
        routes::Method::Delete => Method::DELETE,
    };
    cfg.route(path, web::method(m).to(handler));
}

/// The kind of object a route pattern's `{id}` names (as
/// `AppError::not_found` spells it), from its first segment after `/api` or
/// `/settings`.
fn path_resource(pattern: &str) -> Option<&'static str> {
    let rest = pattern.strip_prefix("/api").unwrap_or(pattern);
    let rest = rest.strip_prefix("/settings").unwrap_or(rest);
    let first = rest.trim_start_matches('/').split('/').next()?;
    Some(match first {
        "hosts" => "host",
        "jobs" => "job",
        "repositories" => "repository",
        "plans" => "plan",
        "users" => "user",
        "alerts" => "alert",
        "notifications" => "notification target",
        "fleet-updates" | "fleet-update" => "fleet update",
        _ => return None,
    })
}

pub fn is_api(req: &HttpRequest) -> bool {
    req.path().starts_with("/api/")
}

pub fn is_htmx(req: &HttpRequest) -> bool {
    req.headers().contains_key("HX-Request")
}

/// Client address for audit and throttling: the TCP peer, or behind a
/// `--trusted-proxies` proxy the rightmost untrusted `X-Forwarded-For`
/// address (`net::client_ip`). No peer's forwarded headers are believed
/// unless it is listed.
pub fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip());
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.trusted_proxies.as_slice())
        .unwrap_or(&[]);
    let forwarded = req
        .headers()
        .get_all("X-Forwarded-For")
        .filter_map(|v| v.to_str().ok());
    crate::net::client_ip(peer, forwarded, trusted)
}

/// Requests per client address to the agent endpoints. A wrapper with the
/// limiter's type spelled out: naming it through governor's defaults inside
/// `AppState` trips a rustc internal error in the async tasks that hold it.
pub struct AgentRequestLimiter(
    governor::RateLimiter<
        std::net::IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<std::net::IpAddr>,
        governor::clock::QuantaClock,
        governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    >,
);

impl AgentRequestLimiter {
    pub fn per_minute(n: u32) -> Self {
        let n = std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        AgentRequestLimiter(governor::RateLimiter::keyed(governor::Quota::per_minute(n)))
    }

    /// Ok, or how long until `ip` may ask again.
    fn check(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        if self.0.len() > 10_000 {
            self.0.retain_recent();
        }
        self.0.check_key(&ip).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::QuantaClock::default(),
            ))
        })
    }
}

/// Refuses a request to an agent endpoint (`/agent/*`, reachable without a
/// login) when its client address has made too many lately: a flood of
/// guesses or downloads from one place cannot take the server's time.
pub fn agent_request_allowed(req: &HttpRequest) -> Result<(), AppError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(());
    };
    let Some(ip) = client_ip(req) else {
        return Ok(());
    };
    match state.agent_requests.check(ip) {
        Ok(()) => Ok(()),
        Err(wait) => {
            let secs = wait.as_secs().max(1);
            tracing::warn!(%ip, path = req.path(), "agent endpoint rate limit reached");
            Err(AppError::TooManyRequests(
                "rate_limited",
                format!("too many requests from this address: try again in {secs} seconds"),
                secs,
            ))
        }
    }
}

/// The client's address as the audit log stores it (empty when unknown).
pub fn client_addr(req: &HttpRequest) -> String {
    client_ip(req).map(|i| i.to_string()).unwrap_or_default()
}

/// The session token this request carries, if any.
pub fn session_token(req: &HttpRequest) -> Option<String> {
    req.cookie(routes::SESSION_COOKIE)
        .map(|c| c.value().to_string())
}

/// The audit actor of a user's request.
pub fn actor(user: &User, req: &HttpRequest) -> crate::audit::Actor {
    crate::audit::Actor::user(user, client_addr(req))
}

/// The origin (`scheme://host`) this request was addressed to.
pub fn request_origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// Base URL agents should use: `--public-url`, else this request's origin.
pub fn public_url(state: &AppState, req: &HttpRequest) -> String {
    state
        .settings
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| request_origin(req))
}

/// Refuses state-changing browser requests that come from another site.
/// `Sec-Fetch-Site` when the browser sends it, else `Origin` against the
/// request's own origin. Clients that send neither (agents, curl) pass: they
/// carry no ambient cookie authority a page could abuse.
pub async fn cross_site_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let headers = req.headers();
        let fetch_site = headers.get("Sec-Fetch-Site").and_then(|v| v.to_str().ok());
        let refused = match fetch_site {
            Some(site) => !matches!(site, "same-origin" | "none"),
            None => match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
                Some("null") => true,
                Some(origin) => origin != request_origin(req.request()),
                None => false,
            },
        };
        if refused {
            tracing::warn!(path = req.path(), "refused a cross-site request");
            return Err(if req.path().starts_with("/api/") {
                AppError::CrossSite.into()
            } else {
                PageError(AppError::CrossSite).into()
            });
        }
    }
    next.call(req).await
}

/// Security headers on every response; HSTS when the server is reached
/// over https (`Settings::https`).
pub fn security_headers(https: bool) -> actix_web::middleware::DefaultHeaders {
    let h = actix_web::middleware::DefaultHeaders::new();
    let h = if https {
        h.add((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"))
    } else {
        h
    };
    h
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "same-origin"))
        .add((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ))
}

/// A logged-in user, from the session cookie. Missing or expired session:
/// 401 JSON for the API, a redirect to the login page otherwise.
pub struct CurrentUser(pub User);

impl CurrentUser {
    pub fn require(&self, role: Role) -> Result<&User, AppError> {
        if self.0.role >= role {
            Ok(&self.0)
        } else {
            Err(AppError::Forbidden)
        }
    }
}

impl std::ops::Deref for CurrentUser {
    type Target = User;
    fn deref(&self) -> &User {
        &self.0
    }
}

pub async fn session_user(req: &HttpRequest) -> Result<Option<User>, AppError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(AppError::Internal(anyhow::anyhow!("app state missing")));
    };
    let Some(cookie) = req.cookie(routes::SESSION_COOKIE) else {
        return Ok(None);
    };
    let idle = state.settings.session_idle.as_millis() as i64;
    Ok(store::sessions::lookup(&state.db, cookie.value(), state.clock.now_ms(), idle).await?)
}

impl FromRequest for CurrentUser {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match session_user(&req).await {
                Ok(Some(u)) => Ok(CurrentUser(u)),
                Ok(None) if is_api(&req) => Err(AppError::Unauthorized.into()),
                Ok(None) => {
                    // For an htmx partial, come back to the page it was on
                    // (HX-Current-URL), not to the fragment's own URL.
                    let target = htmx_page_path(&req).unwrap_or_else(|| {
                        req.uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_else(|| "/".into())
                    });
                    let location =
                        format!("{}?next={}", routes::LOGIN, urlencoding::encode(&target));
                    let resp = if is_htmx(&req) {
                        HttpResponse::Unauthorized()
                            .insert_header(("HX-Redirect", location))
                            .finish()
                    } else {
                        HttpResponse::SeeOther()
                            .insert_header((header::LOCATION, location))
                            .finish()
                    };
                    Err(
                        actix_web::error::InternalError::from_response("login required", resp)
                            .into(),
                    )
                }
                Err(e) if is_api(&req) => Err(e.into()),
                Err(e) => Err(PageError(e).into()),
            }
        })
    }
}

/// Path and query of the page an htmx request came from, if it is ours.
fn htmx_page_path(req: &HttpRequest) -> Option<String> {
    if !is_htmx(req) {
        return None;
    }
    let current = req.headers().get("HX-Current-URL")?.to_str().ok()?;
    let rest = current.strip_prefix(&request_origin(req))?;
    rest.starts_with('/').then(|| rest.to_string())
}

/// The logged-in user if any (login page, error pages).
pub struct MaybeUser(pub Option<User>);

impl FromRequest for MaybeUser {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Ok(MaybeUser(session_user(&req).await.ok().flatten())) })
    }
}

/// Whether the request came from htmx.
pub struct Htmx(pub bool);

impl FromRequest for Htmx {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Htmx(is_htmx(req))))
    }
}

/// An HTML page or fragment answered with `status`: the one place that
/// sets the HTML content type (a handler whose only answer is a 200 page
/// returns its `Markup`, which maud's actix responder serves the same way).
pub fn html(status: actix_web::http::StatusCode, markup: maud::Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(header::ContentType::html())
        .body(markup.into_string())
}

/// Redirect after a successful form post: `HX-Redirect` for htmx, 303 otherwise.
pub fn redirect(htmx: bool, to: &str) -> HttpResponse {
    if htmx {
        HttpResponse::Ok()
            .insert_header(("HX-Redirect", to))
            .finish()
    } else {
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, to))
            .finish()
    }
}
