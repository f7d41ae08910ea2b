//! The audit log, for admins: `GET /api/audit` and the `/audit` page.
use actix_web::{HttpResponse, web};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, CurrentUser, PageError};
use crate::{
    clock, routes,
    state::AppState,
    store::{self, Page, audit::AuditFilter, users::Role},
    views::{self, audit::AuditView},
};

#[derive(Deserialize)]
pub struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl AuditQuery {
    /// Actions and actor names are short and printable; anything else could
    /// match nothing (and a NUL fails the query on Postgres).
    fn filter(&self) -> Result<AuditFilter, AppError> {
        for (field, v) in [("action", &self.action), ("actor", &self.actor)] {
            if v.as_deref()
                .is_some_and(|v| v.chars().count() > 128 || v.chars().any(char::is_control))
            {
                return Err(AppError::BadRequest(
                    "invalid_query",
                    format!("{field} is at most 128 printable characters"),
                ));
            }
        }
        Ok(AuditFilter {
            action: self.action.clone(),
            actor: self.actor.clone(),
        })
    }
}

async fn api_audit(
    state: web::Data<AppState>,
    user: CurrentUser,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, AppError> {
    user.require(Role::Admin)?;
    let rows = store::audit::list(&state.db, &q.filter()?, Page::new(q.limit, q.offset)).await?;
    Ok(HttpResponse::Ok().json(
        rows.iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "at": clock::rfc3339(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "target_kind": e.target_kind,
                    "target_id": e.target_id,
                    "details": e.details,
                    "client_addr": e.client_addr,
                })
            })
            .collect::<Vec<_>>(),
    ))
}

async fn audit_page(
    state: web::Data<AppState>,
    user: CurrentUser,
    q: web::Query<AuditQuery>,
) -> Result<Markup, PageError> {
    user.require(Role::Admin)?;
    let filter = q.filter()?;
    let page = Page::new(q.limit, q.offset);
    let entries = store::audit::list(&state.db, &filter, page).await?;
    let total = store::audit::count(&state.db, &filter).await?;
    let v = AuditView {
        user: &user,
        entries: &entries,
        action: q.action.as_deref().unwrap_or(""),
        actor: q.actor.as_deref().unwrap_or(""),
        offset: page.offset,
        limit: page.limit,
        total,
    };
    Ok(views::audit::audit_page(&v))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_AUDIT, api_audit);
    super::route(cfg, Get, routes::AUDIT_PAGE, audit_page);
}
