//! restic-manager server: builds the app from settings — database and
//! migrations, the agent hub, background workers, the HTTP server.
pub mod agent_binaries;
pub mod agents;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod entities;
pub mod error;
pub mod fleet;
pub mod hosts;
pub mod hub;
pub mod jobs;
pub mod net;
pub mod presence;
pub mod provisioning;
pub mod restic;
pub mod retention;
pub mod routes;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod updates;
pub mod users;
pub mod version;
pub mod views;
pub mod web;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::ServerHandle, middleware, web as aweb};
use anyhow::Context;

use crate::{auth::LoginThrottle, clock::Clock, config::Settings, hub::Hub, state::AppState};

/// A started server: its bound address and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, closes connections and waits for the server to end.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Installs the process-wide TLS crypto provider (ring) once; the workspace
/// links more than one rustls user, and rustls refuses to guess.
pub use agent::install_crypto_provider;

/// Starts the server with a fresh clock.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    start_with_clock(settings, Clock::default()).await
}

/// Starts everything and returns once the socket is bound.
pub async fn start_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Running> {
    install_crypto_provider();
    config::create_private_dir(&settings.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            settings.data_dir.display()
        )
    })?;
    let db = db::open(&settings).await?;
    let sealed_with = store::repositories::sealed_key_ids(&db).await?;
    let secrets = secrets::SecretKey::load_or_create(&settings.secret_key_file, &sealed_with)?;
    if let Some(other) = sealed_with.iter().find(|k| *k != secrets.id()) {
        anyhow::bail!(
            "the database holds repository secrets sealed with key {other}, but {} holds key {}: point --secret-key-file / RM_SECRET_KEY_FILE at the key this database was made with",
            settings.secret_key_file.display(),
            secrets.id()
        );
    }
    bootstrap_admin(&db, &settings, &clock).await?;
    store::hosts::mark_all_offline(&db).await?;
    if settings.stage_sibling_agent
        && let Err(e) = agent_binaries::stage_sibling(&db, &settings).await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not stage the agent binary beside the server"
        );
    }
    let hub = Arc::new(Hub::new());
    let presence = presence::spawn(
        db.clone(),
        hub.clone(),
        clock.clone(),
        settings.presence_flush_interval,
    );
    spawn_session_purger(db.clone(), clock.clone(), settings.session_idle);
    let alerts = alerts::Alerts::start(db.clone(), clock.clone(), &settings)?;
    // Loaded before anything can raise an alert, queue a job or accept an
    // agent.
    let marks = agents::marks::HostMarks::load(&db).await?;
    let agent_secrets = agents::secret_cache::SecretCache::load(&db).await?;
    let state = AppState {
        db,
        settings: Arc::new(settings.clone()),
        hub,
        presence,
        live: Arc::new(jobs::LiveJobs::default()),
        logs: Arc::default(),
        job_events: Arc::default(),
        deadlines: Arc::new(jobs::Deadlines::default()),
        updates: Arc::new(updates::Updates::default()),
        fleet: Arc::new(fleet::Fleet::default()),
        clock,
        throttle: Arc::new(LoginThrottle::new(5, Duration::from_secs(15 * 60))),
        alerts,
        secrets: Arc::new(secrets),
        restic: restic::Restic::new(),
        streams: Arc::default(),
        agent_requests: Arc::new(web::AgentRequestLimiter::per_minute(
            settings.agent_requests_per_min,
        )),
        marks: Arc::new(marks),
        agent_secrets: Arc::new(agent_secrets),
        write_gate: Arc::new(store::gate::WriteGate::new(settings.is_sqlite())),
    };
    alerts::spawn_sweeper(state.clone());
    restic::dispatch::spawn(state.clone());
    restic::scheduler::spawn(state.clone());
    jobs::deadlines::spawn_watcher(state.clone());
    fleet::spawn(state.clone());
    retention::spawn(state.clone());
    let app_state = aweb::Data::new(state.clone());
    let https = settings.https();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(middleware::from_fn(web::cross_site_guard))
            .wrap(middleware::from_fn(web::error::htmx_errors))
            .wrap(web::security_headers(https))
            .configure(web::configure)
            .default_service(aweb::to(not_found))
    })
    .workers(settings.workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(settings.listen)
    .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("server bound no address")?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%addr, version = version::VERSION, "restic-manager listening");
    Ok(Running {
        addr,
        state,
        handle,
        task,
    })
}

async fn not_found(
    req: actix_web::HttpRequest,
) -> Result<actix_web::HttpResponse, actix_web::Error> {
    let e = web::AppError::NotFound("not_found", "no such page: check the address".into());
    // Returned as errors, so an htmx request gets the banner (web::error).
    Err(if web::is_api(&req) {
        e.into()
    } else {
        web::PageError(e).into()
    })
}

/// Runs until SIGINT or SIGTERM, then shuts down cleanly.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(settings = ?settings, "starting");
    let running = start(settings).await?;
    agent::shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// On first start (no users) creates `admin` with `RM_BOOTSTRAP_ADMIN_PASSWORD`
/// or a random password printed once to stdout.
async fn bootstrap_admin(
    db: &sea_orm::DatabaseConnection,
    settings: &Settings,
    clock: &Clock,
) -> anyhow::Result<()> {
    if store::users::count(db).await? > 0 {
        return Ok(());
    }
    let (password, generated) = match &settings.bootstrap_admin_password {
        Some(p) => (p.clone(), false),
        None => (auth::random_token()[..20].to_string(), true),
    };
    provisioning::user_save(
        db,
        "admin",
        store::users::Role::Admin,
        &password,
        clock.now_ms(),
    )
    .await
    .context("creating the bootstrap admin")?;
    if generated {
        println!();
        println!("  Created the first user: admin");
        println!("  Password (shown once, change it under Users): {password}");
        println!();
    } else {
        tracing::info!("created the bootstrap admin from RM_BOOTSTRAP_ADMIN_PASSWORD");
    }
    Ok(())
}

fn spawn_session_purger(db: sea_orm::DatabaseConnection, clock: Clock, idle: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) =
                store::sessions::purge_expired(&db, clock.now_ms(), idle.as_millis() as i64).await
            {
                tracing::warn!(error = %e, "purging expired sessions failed");
            }
        }
    });
}
