//! `GET /agent/binary?os=&arch=`: streams the staged agent binary with its
//! SHA-256 and version in headers. Only for an agent secret or an unexpired,
//! unused enrollment token (a download does not use the token up).
use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use super::{AppError, enroll::token_error};
use crate::{agent_binaries, auth, routes, state::AppState, store};

use agent::wire::{SHA256_HEADER, VERSION_HEADER};

#[derive(Deserialize)]
pub struct BinaryQuery {
    os: String,
    arch: String,
}

pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The id of the host behind an agent secret: from the in-memory cache of
/// known secrets (`agents::secret_cache`), else the database (compared in
/// constant time), which then fills the cache.
pub async fn host_for_secret(state: &AppState, secret: &str) -> Result<Option<i64>, AppError> {
    let digest = crate::agents::secret_cache::digest(secret);
    if let Some(id) = state.agent_secrets.get(&digest) {
        return Ok(Some(id));
    }
    let generation = state.agent_secrets.generation();
    let hash = hex::encode(digest);
    let found = store::hosts::find_by_secret_hash(&state.db, &hash)
        .await?
        .filter(|(_, stored)| auth::hashes_equal(stored, &hash))
        .map(|(h, _)| h.id);
    if let Some(id) = found {
        state.agent_secrets.insert(generation, digest, id);
    }
    Ok(found)
}

async fn agent_binary(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<BinaryQuery>,
) -> Result<HttpResponse, AppError> {
    super::agent_request_allowed(&req)?;
    let Some(token) = bearer(&req) else {
        return Err(AppError::Unauthenticated(
            "unauthorized",
            "send `Authorization: Bearer <agent secret or enrollment token>`".into(),
        ));
    };
    if host_for_secret(&state, token).await?.is_none() {
        store::enrollment::check(&state.db, token, state.clock.now_ms())
            .await
            .map_err(token_error)?;
    }
    let (os, arch) = agent_binaries::check_platform(&q.os, &q.arch).ok_or_else(|| {
        AppError::BadRequest(
            "unsupported_platform",
            format!(
                "no agent builds for that platform: os must be one of {:?}, arch one of {:?}",
                agent_binaries::ALLOWED_OS,
                agent_binaries::ALLOWED_ARCH
            ),
        )
    })?;
    let b = store::agent_binaries::get(&state.db, os, arch)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(
                "no_binary",
                format!("no agent binary is staged for {os}/{arch}: run `restic-manager agent-binary add PATH --os {os} --arch {arch}` on the server"),
            )
        })?;
    let path = agent_binaries::staged_path(&state.settings.data_dir, &b);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        AppError::Internal(anyhow::anyhow!(
            "opening staged binary {}: {e}",
            path.display()
        ))
    })?;
    // A file that changed size since it was staged is not what was recorded.
    let on_disk = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if on_disk != b.size as u64 {
        tracing::error!(path = %path.display(), recorded = b.size, on_disk, "staged agent binary changed on disk");
        return Err(AppError::Conflict(
            "binary_changed",
            format!(
                "the staged agent binary for {os}/{arch} changed on disk since it was staged: stage it again with `restic-manager agent-binary add`"
            ),
        ));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((SHA256_HEADER, b.sha256.clone()))
        .insert_header((VERSION_HEADER, b.version.clone()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", b.file_name),
        ))
        .no_chunking(b.size as u64)
        .streaming(ReaderStream::with_capacity(file, 64 * 1024)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::AGENT_BINARY, agent_binary);
}
