//! `GET /metrics`: the fleet in the Prometheus (OpenMetrics) text format,
//! computed at scrape time from the database with a few bounded queries, so
//! a restart resets nothing. Readable with `Authorization: Bearer
//! <--metrics-token>` (compared in constant time) or any logged-in session;
//! otherwise 401.
use actix_web::{HttpRequest, HttpResponse, http::header, web};
use prometheus_client::{
    encoding::text::encode,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppError;
use crate::{
    routes,
    state::AppState,
    store::{
        self,
        health::BackupState,
        hosts::{HostFilter, Status},
    },
    version,
};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// OpenMetrics, which Prometheus negotiates and parses.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the request carries the configured metrics token.
fn bearer_ok(state: &AppState, req: &HttpRequest) -> bool {
    let Some(want) = state.settings.metrics_token.as_deref() else {
        return false;
    };
    let Some(got) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
    else {
        return false;
    };
    // Equal-length digests: the comparison leaks neither content nor length.
    let (a, b) = (Sha256::digest(got.trim()), Sha256::digest(want));
    a.as_slice().ct_eq(b.as_slice()).into()
}

async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, AppError> {
    if !bearer_ok(&state, &req) && super::session_user(&req).await?.is_none() {
        return Err(AppError::Unauthenticated(
            "unauthorized",
            "send Authorization: Bearer <the server's --metrics-token>, or log in".into(),
        ));
    }
    let body = render(&state).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}

fn family<M: prometheus_client::metrics::TypedMetric + Default + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, M>
where
    Family<Labels, M>: prometheus_client::registry::Metric,
{
    let f = Family::<Labels, M>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The whole exposition, from the database and the hub.
pub async fn render(state: &AppState) -> Result<String, AppError> {
    let db = &state.db;
    let now = state.clock.now_ms();
    let mut r = Registry::with_prefix("restic_manager");

    let hosts = family::<Gauge>(&mut r, "hosts", "Hosts by online state");
    let all = store::hosts::count(db, &HostFilter::default()).await?;
    let online = store::hosts::count(
        db,
        &HostFilter {
            status: Some(Status::Online),
            ..Default::default()
        },
    )
    .await?;
    hosts
        .get_or_create(&vec![("state", "online".into())])
        .set(n(online));
    hosts
        .get_or_create(&vec![("state", "offline".into())])
        .set(n(all.saturating_sub(online)));

    let by_backup = family::<Gauge>(
        &mut r,
        "hosts_backup_state",
        "Hosts by backup state (failing, stale, pending, ok, unprotected)",
    );
    let counts = store::health::counts(db, state.settings.staleness(now)).await?;
    for b in BackupState::ALL {
        by_backup
            .get_or_create(&vec![("state", b.as_str().into())])
            .set(n(counts.get(&b).copied().unwrap_or(0)));
    }

    gauge(
        &mut r,
        "hosts_behind",
        "Hosts whose agent version differs from the server's",
        n(store::hosts::behind_count(db, version::VERSION).await?),
    );
    gauge(
        &mut r,
        "agents_connected",
        "Agents connected to this server now",
        n(state.hub.connected() as u64),
    );

    let jobs = family::<Gauge>(&mut r, "jobs", "Jobs recorded, by kind and status");
    for (kind, status, count) in store::health::jobs_by_kind_status(db).await? {
        jobs.get_or_create(&vec![("kind", kind), ("status", status)])
            .set(count);
    }

    let last_success = family::<Gauge>(
        &mut r,
        "backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup of a plan on a host",
    );
    let duration = family::<FloatGauge>(
        &mut r,
        "backup_last_duration_seconds",
        "Duration of the last successful backup of a plan on a host",
    );
    let added = family::<Gauge>(
        &mut r,
        "backup_last_data_added_bytes",
        "Data the last successful backup of a plan on a host added to its repository",
    );
    for p in store::health::named_pairs(db, None).await? {
        let labels: Labels = vec![("host", p.host_name), ("plan", p.plan_name)];
        if let Some(t) = p.pair.last_success_at {
            last_success.get_or_create(&labels).set(t / 1000);
        }
        if let Some(ms) = p.pair.last_duration_ms {
            duration.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
        if let Some(b) = p.pair.last_data_added {
            added.get_or_create(&labels).set(b);
        }
    }

    let mut out = String::new();
    encode(&mut out, &r)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("encoding metrics: {e}")))?;
    Ok(out)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::route(cfg, routes::Method::Get, routes::METRICS, metrics);
}
