//! Notification settings (admin only): webhook targets — add, remove, send
//! a test — and recent deliveries. The page never shows a secret back.
use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, Htmx, PageError};
use crate::{
    alerts::notify,
    audit, routes,
    state::AppState,
    store::{
        self,
        notifications::{self as targets, NewTarget},
        users::Role,
    },
    views::{self, notifications::NotificationsView},
};

/// Deliveries shown on the page.
const RECENT: u64 = 50;

#[derive(Deserialize)]
pub struct NewTargetForm {
    name: String,
    url: String,
    #[serde(default)]
    secret: String,
}

/// What a form post did, for the page: a notice, or an error with what the
/// add form held (so it is not lost).
enum Outcome<'a> {
    None,
    Notice(String),
    Error(AppError, &'a str, &'a str),
}

async fn render(
    state: &AppState,
    user: &CurrentUser,
    partial: bool,
    outcome: Outcome<'_>,
) -> Result<HttpResponse, PageError> {
    let (status, error, notice, form_name, form_url) = match outcome {
        Outcome::None => (StatusCode::OK, None, None, "", ""),
        Outcome::Notice(n) => (StatusCode::OK, None, Some(n), "", ""),
        Outcome::Error(e @ AppError::Internal(_), ..) => return Err(PageError(e)),
        Outcome::Error(e, name, url) => (e.status_code(), Some(e.message()), None, name, url),
    };
    let list = targets::list_targets(&state.db).await?;
    let names: HashMap<i64, &str> = list.iter().map(|t| (t.id, t.name.as_str())).collect();
    let deliveries: Vec<_> = targets::recent_deliveries(&state.db, RECENT)
        .await?
        .into_iter()
        .map(|d| {
            let name = names.get(&d.target_id).copied().unwrap_or("?").to_string();
            (d, name)
        })
        .collect();
    let last_purge = if partial {
        None
    } else {
        crate::retention::last_purge(&state.db).await?
    };
    let v = NotificationsView {
        user,
        targets: &list,
        deliveries: &deliveries,
        error: error.as_deref(),
        notice: notice.as_deref(),
        form_name,
        form_url,
        now_ms: state.clock.now_ms(),
        retention: state.settings.retention,
        last_purge: last_purge.as_ref(),
    };
    let markup = if partial {
        views::notifications::deliveries_table(&v)
    } else {
        views::notifications::notifications_page(&v)
    };
    Ok(super::html(status, markup))
}

async fn notifications_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    htmx: Htmx,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    render(&state, &user, htmx.0, Outcome::None).await
}

async fn target_add(
    state: &AppState,
    req: &HttpRequest,
    user: &CurrentUser,
    form: &NewTargetForm,
) -> Result<targets::Target, AppError> {
    let secret = form.secret.trim();
    let t = targets::create_target(
        &state.db,
        &NewTarget {
            name: form.name.trim(),
            url: form.url.trim(),
            secret: (!secret.is_empty()).then_some(secret),
        },
        state.clock.now_ms(),
    )
    .await?;
    // Only the host of the URL: paths of webhook URLs often carry tokens.
    let host = reqwest::Url::parse(&t.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(target_id = t.id, by = %user.username, "notification target added");
    audit::record_logged(
state,
&super::actor(user, req),
audit::Entry::new("notification.target_add", "notification_target", t.id, json!({"name": t.name, "host": host, "secret": if t.has_secret() { "set" } else { "none" }})),
)
.await;
    Ok(t)
}

async fn target_add_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    form: web::Form<NewTargetForm>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let outcome = match target_add(&state, &req, &user, &form).await {
        Ok(t) => Outcome::Notice(format!("added webhook {}", t.name)),
        Err(e) => Outcome::Error(e, form.name.trim(), form.url.trim()),
    };
    render(&state, &user, false, outcome).await
}

async fn target_remove_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let outcome = match targets::delete_target(&state.db, *id).await {
        Ok(t) => {
            tracing::info!(target_id = t.id, by = %user.username, "notification target removed");
            audit::record_logged(
                &state,
                &super::actor(&user, &req),
                audit::Entry::new(
                    "notification.target_remove",
                    "notification_target",
                    t.id,
                    json!({"name": t.name}),
                ),
            )
            .await;
            Outcome::Notice(format!("removed webhook {}", t.name))
        }
        Err(e) => Outcome::Error(target_error(e), "", ""),
    };
    render(&state, &user, false, outcome).await
}

async fn target_test_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: CurrentUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    user.require(Role::Admin)?;
    let outcome = match notify::send_test(&state, *id).await {
        Ok(d) => {
            let name = targets::get_target(&state.db, d.target_id)
                .await
                .map(|t| t.name)
                .unwrap_or_default();
            audit::record_logged(
                &state,
                &super::actor(&user, &req),
                audit::Entry::new(
                    "notification.test",
                    "notification_target",
                    d.target_id,
                    json!({"name": name, "delivery_id": d.id}),
                ),
            )
            .await;
            Outcome::Notice(format!(
                "test notification queued for {name}: its delivery shows below"
            ))
        }
        Err(e) => Outcome::Error(target_error(e), "", ""),
    };
    render(&state, &user, false, outcome).await
}

fn target_error(e: store::StoreError) -> AppError {
    match e {
        store::StoreError::NotFound(_) => AppError::NotFound(
            "target_not_found",
            "no such notification target: it may have been removed".into(),
        ),
        other => other.into(),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::NOTIFICATIONS_PAGE, notifications_page);
    super::route(cfg, Post, routes::NOTIFICATIONS_PAGE, target_add_submit);
    super::route(
        cfg,
        Post,
        routes::NOTIFICATION_TARGET_DELETE,
        target_remove_submit,
    );
    super::route(
        cfg,
        Post,
        routes::NOTIFICATION_TARGET_TEST,
        target_test_submit,
    );
}
