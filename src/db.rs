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
    if settings.is_sqlite() {
        ensure_incremental_vacuum(&db).await?;
    }
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
            // No `auto_vacuum` here: setting it makes every new connection
            // open a write transaction (SQLite writes the header's
            // incremental-vacuum flag), so a pooled connection opened while
            // another holds the write lock would wait for it, even to read.
            // `ensure_incremental_vacuum` sets it once, at start.
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

/// `PRAGMA auto_vacuum` reads 2 for INCREMENTAL.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Reads an integer pragma (`PRAGMA auto_vacuum`, `PRAGMA freelist_count`…).
pub async fn sqlite_pragma(db: &DatabaseConnection, name: &str) -> anyhow::Result<i64> {
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("PRAGMA {name}"),
        ))
        .await
        .with_context(|| format!("reading PRAGMA {name}"))?
        .with_context(|| format!("PRAGMA {name} answered nothing"))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Puts a SQLite database in incremental auto-vacuum mode, so the
/// retention purge can give freed pages back to the file system: a new
/// (empty) database at once, one made before this mode was used by a
/// one-time full `VACUUM` (an existing file keeps its mode until then).
async fn ensure_incremental_vacuum(db: &DatabaseConnection) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    let mode = sqlite_pragma(db, "auto_vacuum").await?;
    if mode == AUTO_VACUUM_INCREMENTAL {
        return Ok(());
    }
    tracing::info!(
        auto_vacuum = mode,
        "switching the SQLite database to incremental vacuum: rewriting it once with VACUUM (may take a while for a large database)"
    );
    let started = std::time::Instant::now();
    // The pragma is per connection and VACUUM applies the one of the
    // connection it runs on: both go in one batch.
    db.execute_unprepared("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
        .await
        .context("VACUUM to switch the database to incremental vacuum")?;
    let now = sqlite_pragma(db, "auto_vacuum").await?;
    tracing::info!(
        auto_vacuum = now,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "SQLite database rewritten"
    );
    Ok(())
}

/// Test support shared by the unit tests and the integration harness
/// (`tests/common`): a fresh database per test, a new Postgres database when
/// `TEST_DATABASE_URL` is set (CI sets it), else SQLite in a directory the
/// test owns. Not used by the server itself.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use anyhow::Context;
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

    /// Per-test Postgres databases are named `rm_t_<unix seconds>_<random>`;
    /// ones older than this are left-overs of earlier runs and are dropped.
    const STALE_TEST_DB_SECS: u64 = 3600;

    /// A fresh, empty Postgres database for this test when
    /// `TEST_DATABASE_URL` is set, else `None` (use SQLite).
    pub async fn fresh_postgres_url() -> anyhow::Result<Option<String>> {
        let Some(base) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "rm_t_{now}_{}",
            crate::auth::random_token()[..10]
                .to_lowercase()
                .replace(['-', '_'], "x")
        );
        let admin = Database::connect(base.as_str())
            .await
            .context("TEST_DATABASE_URL is set but Postgres is unreachable")?;
        drop_stale_databases(&admin, now).await;
        create_database(&admin, &base, &name).await.map(Some)
    }

    /// Creates Postgres database `name` through `admin`, connected at
    /// `admin_url`, and returns the new database's URL.
    pub async fn create_database(
        admin: &DatabaseConnection,
        admin_url: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name} (the role needs CREATEDB)"))?;
        let (prefix, _) = admin_url
            .rsplit_once('/')
            .context("the Postgres URL names no database")?;
        Ok(format!("{prefix}/{name}"))
    }

    /// A database URL for one test: [`fresh_postgres_url`], else a SQLite
    /// file in `sqlite_dir`.
    pub async fn fresh_url(sqlite_dir: &Path) -> anyhow::Result<String> {
        Ok(match fresh_postgres_url().await? {
            Some(url) => url,
            None => format!("sqlite://{}/t.db?mode=rwc", sqlite_dir.display()),
        })
    }

    /// [`fresh_url`], connected as the server connects and migrated.
    pub async fn fresh_database(sqlite_dir: &Path) -> anyhow::Result<DatabaseConnection> {
        let db = super::connect(&fresh_url(sqlite_dir).await?).await?;
        Migrator::up(&db, None)
            .await
            .context("applying database migrations")?;
        Ok(db)
    }

    /// Best effort: tests never drop their own database (the server may
    /// still hold connections), so old ones are swept here instead.
    async fn drop_stale_databases(admin: &DatabaseConnection, now: u64) {
        let Ok(rows) = admin
            .query_all_raw(Statement::from_string(
                admin.get_database_backend(),
                "SELECT datname FROM pg_database WHERE datname LIKE 'rm\\_t\\_%'",
            ))
            .await
        else {
            return;
        };
        for row in rows {
            let Ok(name) = row.try_get_by_index::<String>(0) else {
                continue;
            };
            let created = name
                .strip_prefix("rm_t_")
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok());
            if created.is_some_and(|c| c + STALE_TEST_DB_SECS < now)
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    }
}
