//! Upgrading a database made by the previous release: rows survive every
//! migration, and the rules the schema enforces still hold afterwards
//! (SQLite rebuilds the jobs table to widen its CHECK constraints).
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::common::*;

async fn exec(db: &DatabaseConnection, sql: &str) -> Result<(), sea_orm::DbErr> {
    db.execute_unprepared(sql).await.map(|_| ())
}

async fn one(db: &DatabaseConnection, sql: &str) -> String {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .unwrap()
        .expect("a row");
    row.try_get_by_index::<String>(0).unwrap()
}

#[tokio::test]
async fn upgrading_from_the_update_release_keeps_jobs_logs_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let db = restic_manager::db::connect(&url).await.unwrap();
    // The schema of the self-update release (migrations 1–6), with data.
    Migrator::up(&db, Some(6)).await.unwrap();
    exec(
        &db,
        "INSERT INTO hosts (name, created_at) VALUES ('web-1', 1)",
    )
    .await
    .unwrap();
    exec(
        &db,
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at, \
         target_version, deadline_at) VALUES (1, 'update', 'running', 'user', 'admin', 2, 'v2', 99)",
    )
    .await
    .unwrap();
    exec(
        &db,
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) \
         VALUES (1, 'backup', 'succeeded', 'system', '', 3)",
    )
    .await
    .unwrap();
    for (pos, text) in [(1, "downloading"), (2, "verified")] {
        exec(
            &db,
            &format!(
                "INSERT INTO job_logs (job_id, pos, seq, ts, stream, payload) \
                 VALUES (1, {pos}, {pos}, 5, 'system', '{text}')"
            ),
        )
        .await
        .unwrap();
    }
    exec(
        &db,
        "INSERT INTO fleet_updates (started_at, started_by, target_version, status) \
         VALUES (1, 'admin', 'v2', 'running')",
    )
    .await
    .unwrap();
    exec(
        &db,
        "INSERT INTO fleet_update_hosts (fleet_update_id, host_id, position, hostname, \
         from_version, status, job_id) VALUES (1, 1, 0, 'web-1', 'v1', 'running', 1)",
    )
    .await
    .unwrap();

    Migrator::up(&db, None).await.unwrap();

    // Every row and its values are still there.
    assert_eq!(
        one(
            &db,
            "SELECT kind || ' ' || status || ' ' || target_version FROM jobs WHERE id = 1"
        )
        .await,
        "update running v2"
    );
    assert_eq!(
        one(
            &db,
            "SELECT CAST(COUNT(*) AS TEXT) FROM job_logs WHERE job_id = 1"
        )
        .await,
        "2"
    );
    assert_eq!(
        one(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM jobs").await,
        "2"
    );
    assert_eq!(
        one(&db, "SELECT CAST(job_id AS TEXT) FROM fleet_update_hosts").await,
        "1"
    );
    // New kinds and the skipped status are allowed; nonsense still is not.
    exec(
        &db,
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) \
         VALUES (1, 'snapshots', 'skipped', 'schedule', '', 4)",
    )
    .await
    .unwrap();
    for bad in [
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) VALUES (1, 'bogus', 'queued', 'user', '', 5)",
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) VALUES (1, 'check', 'weird', 'user', '', 5)",
        // Still one live update per host.
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) VALUES (1, 'update', 'queued', 'user', '', 6)",
        // Still no job for a host that does not exist.
        "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at) VALUES (77, 'check', 'queued', 'user', '', 6)",
    ] {
        assert!(exec(&db, bad).await.is_err(), "accepted: {bad}");
    }
    // Foreign keys still cascade: removing the host removes its jobs and logs.
    exec(&db, "DELETE FROM fleet_update_hosts").await.unwrap();
    exec(&db, "DELETE FROM hosts WHERE id = 1").await.unwrap();
    assert_eq!(
        one(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM job_logs").await,
        "0"
    );
    assert_eq!(
        one(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM jobs").await,
        "0"
    );
}

#[tokio::test]
async fn backup_health_columns_are_filled_from_the_jobs_already_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let db = restic_manager::db::connect(&url).await.unwrap();
    // The plans release (migrations 1–8): a plan covering two hosts, with
    // backups on one of them.
    Migrator::up(&db, Some(8)).await.unwrap();
    for sql in [
        "INSERT INTO hosts (name, created_at) VALUES ('web-1', 1)",
        "INSERT INTO hosts (name, created_at) VALUES ('web-2', 1)",
        "INSERT INTO repositories (name, url_enc, url_masked, local, password_enc, \
         maintenance_schedule, created_at, updated_at) VALUES ('r', 'x', '/r', TRUE, 'x', '0 3 * * *', 1, 1)",
        "INSERT INTO plans (name, repository_id, paths, schedule, timezone, created_at, updated_at) \
         VALUES ('p', 1, '[\"/srv\"]', '@daily', 'UTC', 1, 1)",
        "INSERT INTO plan_schedules (plan_id, host_id, next_run_at, basis, covered_since) \
         VALUES (1, 1, 1000, 'b', 5)",
        "INSERT INTO plan_schedules (plan_id, host_id, next_run_at, basis, covered_since) \
         VALUES (1, 2, 1000, 'b', 5)",
    ] {
        exec(&db, sql).await.unwrap();
    }
    for (status, finished) in [
        ("succeeded", "10"),
        ("failed", "20"),
        ("cancelled", "30"),
        ("skipped", "40"),
        ("queued", "NULL"),
    ] {
        exec(
            &db,
            &format!(
                "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at, \
                 plan_id, repository_id, finished_at) \
                 VALUES (1, 'backup', '{status}', 'schedule', 'schedule', 1, 1, 1, {finished})"
            ),
        )
        .await
        .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let row = |host: i64| {
        let db = &db;
        async move {
            one(
                db,
                &format!(
                    "SELECT COALESCE(CAST(last_finished_at AS TEXT), '-') || ' ' || \
                     COALESCE(last_status, '-') || ' ' || COALESCE(CAST(last_success_at AS TEXT), '-') \
                     FROM plan_schedules WHERE host_id = {host}"
                ),
            )
            .await
        }
    };
    // The last succeeded-or-failed run counts; cancelled and skipped do not.
    assert_eq!(row(1).await, "20 failed 10");
    assert_eq!(row(2).await, "- - -");
}

/// The data directory (database, secret key, staged binaries) is created
/// private to the server's user, whatever the umask, and so are the
/// directories made inside it.
#[tokio::test]
async fn the_data_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.settings.data_dir), 0o700);
    crate::common::sim::stage_binary(&app, "v1").await;
    assert_eq!(
        mode(&restic_manager::agent_binaries::binaries_dir(
            &app.settings.data_dir
        )),
        0o700
    );
}
