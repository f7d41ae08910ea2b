//! `POST /agent/enroll`: trades a one-time enrollment token for the host's
//! agent secret, and `GET /agent/install.sh`, the script that does it all.
use actix_web::{HttpRequest, HttpResponse, http::header, web};
use sea_orm::TransactionTrait;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, assets::INSTALL_SH, public_url};
use crate::{
    audit::{self, Actor},
    auth, routes,
    state::AppState,
    store,
};

#[derive(Deserialize)]
pub struct EnrollBody {
    token: String,
    #[serde(default)]
    hostname: String,
}

/// Token errors answer 401 (the token is the credential here).
pub fn token_error(e: store::StoreError) -> AppError {
    match e {
        store::StoreError::Invalid(code, msg) => AppError::Unauthenticated(code, msg),
        other => other.into(),
    }
}

async fn agent_enroll(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<EnrollBody>,
) -> Result<HttpResponse, AppError> {
    super::agent_request_allowed(&req)?;
    let now = state.clock.now_ms();
    // Checked read-only first: a wrong, used or expired token (what a
    // guesser sends) costs no write transaction.
    if let Err(e) = store::enrollment::check(&state.db, body.token.trim(), now).await {
        tracing::warn!(error = %e, "enrollment refused");
        return Err(token_error(e));
    }
    let secret = auth::new_agent_secret();
    let txn = state.db.begin().await?;
    let host_id = match store::enrollment::redeem(&txn, body.token.trim(), now).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "enrollment refused");
            return Err(token_error(e));
        }
    };
    store::hosts::set_secret_hash(&txn, host_id, &auth::token_hash(&secret)).await?;
    txn.commit().await?;
    // A re-enrolled host's old secret stops working, and its connection
    // (which used it) is dropped.
    state.agent_secrets.forget_host(host_id);
    state.hub.disconnect(host_id, "host re-enrolled");
    let hostname = crate::text::one_line(&body.hostname, 64);
    tracing::info!(host_id, %hostname, "agent enrolled");
    audit::record_logged(
        &state,
        &Actor::named("agent", super::client_addr(&req)),
        audit::Entry::new(
            "host.enroll",
            "host",
            host_id,
            serde_json::json!({"hostname": hostname}),
        ),
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({"host_id": host_id, "secret": secret})))
}

/// The URL is pasted into shell code, and without `--public-url` it comes
/// from the request's Host header: allow only what a URL needs.
pub fn safe_for_script(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 512
        && url
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:/-_[]%".contains(c))
}

async fn install_sh(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    super::agent_request_allowed(&req)?;
    let url = public_url(&state, &req);
    if !safe_for_script(&url) {
        return Err(AppError::BadRequest(
            "invalid_host",
            "this request's Host header cannot be used in a script: set --public-url on the server"
                .into(),
        ));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(INSTALL_SH.replace("__SERVER_URL__", &url)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Post, routes::AGENT_ENROLL, agent_enroll);
    super::route(cfg, Get, routes::AGENT_INSTALL_SH, install_sh);
}

#[cfg(test)]
mod tests {
    use super::safe_for_script;

    #[test]
    fn script_urls_refuse_shell_metacharacters() {
        assert!(safe_for_script("http://127.0.0.1:8080"));
        assert!(safe_for_script("https://backup.example.com/rm"));
        for bad in [
            "http://x\"; rm -rf /",
            "http://x$(id)",
            "http://x`id`",
            "ftp://x",
            "http://a b",
        ] {
            assert!(!safe_for_script(bad), "{bad}");
        }
    }

    #[test]
    fn the_install_script_uses_the_wire_paths() {
        // The script is shell text, not Rust: this keeps it on the paths
        // both sides take from agent::wire.
        let script = super::INSTALL_SH;
        let binary = format!("$SERVER_URL{}?", agent::wire::BINARY_PATH);
        let own = format!("__SERVER_URL__{}", agent::wire::INSTALL_SH_PATH);
        assert!(
            script.contains(&binary),
            "install.sh downloads from {binary}"
        );
        assert!(script.contains(&own), "install.sh names {own}");
    }
}
