//! `GET /api/version`: the server's build version and commit (public).
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::{routes, version};

async fn version_get() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": version::VERSION, "commit": version::COMMIT}))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(routes::API_VERSION, web::get().to(version_get));
}
