//! Puts the fleet in the database before the server starts: N hosts with
//! known agent secrets (stored hashed, as enrollment would leave them),
//! written in multi-row inserts through the server's own entities and
//! migrations. Enrolling 10,000 hosts through the API would only measure
//! enrollment; this is what the database looks like after it.
use std::path::Path;

use anyhow::{Context, Result, ensure};
use restic_manager::{
    auth,
    config::Settings,
    entities::hosts,
    store::jobs::{ActorKind, JobKind, NewJob},
};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryOrder,
    QuerySelect,
};

/// One seeded host as the simulated agent knows it.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub host_id: i64,
    pub secret: String,
}

pub fn host_name(i: usize) -> String {
    format!("bench-{i:05}")
}

pub fn secret(i: usize) -> String {
    format!("bench-agent-secret-{i:05}-not-for-production")
}

/// Opens (creating and migrating) the database the server will use.
pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<DatabaseConnection> {
    let mut s = Settings::with_data_dir(data_dir.to_path_buf());
    if let Some(u) = database_url {
        s.database_url = u.to_string();
    }
    restic_manager::db::open(&s)
        .await
        .context("opening the benchmark database")
}

/// Inserts `n` hosts (`bench-00000`…) reporting `version_of(i)`; returns
/// them in index order with their ids and secrets.
pub async fn hosts(
    db: &DatabaseConnection,
    n: usize,
    version_of: impl Fn(usize) -> String,
) -> Result<Vec<Seeded>> {
    let now = chrono::Utc::now().timestamp_millis();
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(500) {
        let rows = chunk.iter().map(|&i| hosts::ActiveModel {
            name: Set(host_name(i)),
            hostname: Set(format!("{}.bench.internal", host_name(i))),
            os: Set("linux".into()),
            arch: Set("x86_64".into()),
            agent_version: Set(version_of(i)),
            online: Set(false),
            last_seen_at: Set(Some(now - 60_000)),
            secret_hash: Set(Some(auth::token_hash(&secret(i)))),
            created_at: Set(now - 86_400_000),
            ..Default::default()
        });
        hosts::Entity::insert_many(rows)
            .exec(db)
            .await
            .context("inserting benchmark hosts")?;
    }
    let rows: Vec<(i64, String)> = hosts::Entity::find()
        .select_only()
        .column(hosts::Column::Id)
        .column(hosts::Column::Name)
        .order_by_asc(hosts::Column::Name)
        .into_tuple()
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(n);
    for (i, (id, name)) in rows.into_iter().enumerate() {
        ensure!(
            name == host_name(i),
            "seeded host {i} reads back as {name:?}: the database was not empty"
        );
        out.push(Seeded {
            host_id: id,
            secret: secret(i),
        });
    }
    ensure!(out.len() == n, "seeded {} hosts, wanted {n}", out.len());
    Ok(out)
}

/// Gives every host the label `label` (plans cover hosts by label).
pub async fn label_all(db: &DatabaseConnection, label: &str) -> Result<()> {
    let labels = serde_json::to_string(&[label])?;
    hosts::Entity::update_many()
        .col_expr(
            hosts::Column::Labels,
            sea_orm::sea_query::Expr::value(labels),
        )
        .exec(db)
        .await
        .context("labelling the benchmark hosts")?;
    Ok(())
}

/// A queued backup job on `host_id` (the live-log scenario streams into it).
pub async fn job(db: &DatabaseConnection, host_id: i64) -> Result<i64> {
    let j = NewJob {
        host_id,
        kind: JobKind::Backup,
        actor_kind: ActorKind::User,
        actor_id: None,
        actor_name: "bench".into(),
        target_version: None,
        deadline_at: None,
    };
    Ok(
        restic_manager::store::jobs::create(db, &j, chrono::Utc::now().timestamp_millis())
            .await?
            .id,
    )
}

/// A fresh Postgres database next to the one `admin_url` names; returns its URL.
pub async fn postgres_database(admin_url: &str) -> Result<(String, String)> {
    let admin = Database::connect(admin_url).await.with_context(|| {
        format!(
            "Postgres is unreachable at {}: start it (`pg_ctlcluster 15 main start`), \
             pass --pg-url, or skip it with --skip-postgres",
            restic_manager::config::redact_url(admin_url)
        )
    })?;
    let name = format!(
        "rm_bench_{}_{}",
        chrono::Utc::now().timestamp(),
        std::process::id()
    );
    let url = restic_manager::db::testing::create_database(&admin, admin_url, &name).await?;
    Ok((url, name))
}

pub async fn drop_postgres_database(admin_url: &str, name: &str) {
    if let Ok(admin) = Database::connect(admin_url).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}
