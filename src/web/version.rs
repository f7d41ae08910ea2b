//! `GET /api/version`: the server's build version and commit (public).
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::{routes, version};

async fn version_get() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": version::VERSION, "commit": version::COMMIT}))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::Method::*;
    super::route(cfg, Get, routes::API_VERSION, version_get);
}
