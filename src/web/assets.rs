//! Static assets embedded in the binary, served under a content-hashed URL
//! (`/assets/<hash>/<name>`) with a year-long immutable cache.
use std::{collections::HashMap, sync::OnceLock};

use actix_web::{HttpResponse, http::header, web};
use sha2::{Digest, Sha256};

struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    hash: String,
}

const FILES: &[(&str, &[u8], &str)] = &[
    (
        "app.css",
        include_bytes!("../../assets/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "htmx.min.js",
        include_bytes!("../../assets/vendor/htmx.min.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "htmx-ext-sse.js",
        include_bytes!("../../assets/vendor/htmx-ext-sse.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_bytes!("../../assets/favicon.svg"),
        "image/svg+xml",
    ),
];

/// The agent install script; `__SERVER_URL__` is replaced when served.
pub const INSTALL_SH: &str = include_str!("../../assets/install.sh");

fn table() -> &'static HashMap<&'static str, Asset> {
    static T: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    T.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, bytes, ct)| {
                let hash = hex::encode(&Sha256::digest(bytes)[..6]);
                (
                    *name,
                    Asset {
                        bytes,
                        content_type: ct,
                        hash,
                    },
                )
            })
            .collect()
    })
}

/// Content hash of an embedded asset, for its URL.
pub fn hash_of(name: &str) -> &'static str {
    table()
        .get(name)
        .map(|a| a.hash.as_str())
        .unwrap_or("missing")
}

async fn asset(path: web::Path<(String, String)>) -> HttpResponse {
    let (hash, name) = path.into_inner();
    match table().get(name.as_str()) {
        Some(a) => {
            // A stale hash (page cached across an upgrade) still gets the
            // file, just without the long cache.
            let cache = if a.hash == hash {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, a.content_type))
                .insert_header((header::CACHE_CONTROL, cache))
                .body(a.bytes)
        }
        None => HttpResponse::NotFound().finish(),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routes::{self, Method::*};
    super::route(cfg, Get, routes::ASSET, asset);
}
