//! Opens the database (SQLite with WAL and foreign keys, or Postgres) and
//! applies pending migrations. The only place that knows connection options.
use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::config::{Settings, redact_url};

/// Connects and migrates; creates the data dir for SQLite.
pub async fn open(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    if settings.is_sqlite() {
        crate::config::create_private_dir(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
    }
    let db = connect(&settings.database_url).await?;
    Migrator::up(&db, None)
        .await
        .context("applying database migrations")?;
    Ok(db)
}

pub async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        // One writer at a time is SQLite's rule anyway; a small pool keeps
        // readers concurrent under WAL without piling up lock waits.
        opts.max_connections(8).min_connections(1);
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
        });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    Database::connect(opts)
        .await
        .with_context(|| format!("connecting to the database at {}", redact_url(url)))
}
