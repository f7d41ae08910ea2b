//! Data retention through the real thing: a server with a real agent and
//! real restic makes jobs, the injectable clock moves them past their
//! retention, and the purge (`retention::purge_now`, what the daily worker
//! runs) removes what is old and keeps what users see: live jobs, each
//! host's latest job (its last backup), new jobs with their logs, open
//! alerts, fresh tokens. The settings page shows the settings and the last
//! purge; SQLite's file shrinks; a database made before incremental vacuum
//! is converted at start; a bad `--retention-days` stops the binary with a
//! message naming the bad part. Runs on Postgres too with TEST_DATABASE_URL.
use std::{path::Path, time::Duration};

use restic_manager::{config::Settings, retention, routes};
use serde_json::{Value, json};

use crate::{
    common::*,
    restic::{Api, Lab, restic_bin},
};

const DAY_MS: i64 = 86_400_000;
/// Never falls due during a test (29 February).
const NEVER_SOON: &str = "0 3 29 2 *";

fn long_sessions(s: &mut Settings) {
    // The clock moves more than a year ahead; the admin's session must
    // outlive it.
    s.session_idle = Duration::from_secs(1000 * 86_400);
    s.session_absolute = Duration::from_secs(1000 * 86_400);
}

/// Runs raw SQL that answers one id (`RETURNING id`).
async fn insert_id(app: &TestApp, sql: &str) -> i64 {
    app.query_one(&format!("{sql} RETURNING CAST(id AS TEXT)"))
        .await
        .unwrap_or_else(|| panic!("{sql} returned no id"))
        .parse()
        .unwrap()
}

/// A job row as the server writes them, with `lines` log lines.
#[allow(clippy::too_many_arguments)]
async fn job_row(
    app: &TestApp,
    host: i64,
    kind: &str,
    status: &str,
    repo: i64,
    created: i64,
    finished: Option<i64>,
    lines: i64,
) -> i64 {
    let fin = finished.map_or("NULL".to_string(), |f| f.to_string());
    let id = insert_id(
        app,
        &format!(
            "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at, \
             started_at, finished_at, repository_id, log_lines) VALUES \
             ({host}, '{kind}', '{status}', 'system', 'test', {created}, {created}, {fin}, {repo}, {lines})"
        ),
    )
    .await;
    log_rows(app, id, 0, lines, created, 40).await;
    id
}

/// `n` log lines of `len` bytes each for job `id`, positions from `from`.
async fn log_rows(app: &TestApp, id: i64, from: i64, n: i64, ts: i64, len: usize) {
    let payload = "x".repeat(len);
    let mut pos = from;
    while pos < from + n {
        let end = (pos + 500).min(from + n);
        let values: Vec<String> = (pos..end)
            .map(|p| format!("({id}, {}, {p}, {ts}, 'stdout', '{payload}')", p + 1))
            .collect();
        app.query(&format!(
            "INSERT INTO job_logs (job_id, pos, seq, ts, stream, payload) VALUES {}",
            values.join(",")
        ))
        .await;
        pos = end;
    }
}

async fn count_where(app: &TestApp, table: &str, cond: &str) -> i64 {
    app.query_one(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM {table} WHERE {cond}"
    ))
    .await
    .unwrap()
    .parse()
    .unwrap()
}

async fn status_of(c: &reqwest::Client, app: &TestApp, path: &str) -> u16 {
    c.get(app.at(path)).send().await.unwrap().status().as_u16()
}

async fn log_count(api: &Api<'_>, job: i64) -> usize {
    api.get(&routes::api_job_logs(job))
        .await
        .as_array()
        .unwrap()
        .len()
}

async fn run_backup(api: &Api<'_>, plan: i64, host: i64) -> Value {
    let r = api
        .post(&routes::api_plan_run(plan), json!({"host_id": host}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["job_ids"][0]
        .as_i64()
        .unwrap();
    api.finished(id).await
}

async fn settings_page(app: &TestApp, c: &reqwest::Client) -> Page {
    let r = c
        .get(app.at(routes::NOTIFICATIONS_PAGE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    Page::from(r).await
}

#[tokio::test]
async fn purge_removes_what_is_old_and_keeps_what_users_see() {
    let lab = Lab::new();
    let app = TestApp::spawn_with(long_sessions).await;
    let api = Api::new(&app).await;
    let admin = &api.c;

    // Before any purge the settings page shows the defaults and says so.
    let page = settings_page(&app, admin).await;
    for (name, days) in [
        ("job-logs", "90"),
        ("jobs", "400"),
        ("audit", "400"),
        ("alerts", "90"),
    ] {
        assert_eq!(
            page.attr(
                &format!("[data-testid=retention-row][data-name={name}]"),
                "data-days"
            )
            .as_deref(),
            Some(days),
            "{name}"
        );
    }
    assert!(
        page.one("[data-testid=last-purge]").contains("not run yet"),
        "{}",
        page.one("[data-testid=last-purge]")
    );

    // A real host backs up twice with real restic.
    let cfg = app.enrolled_host("web").await;
    let web = cfg.host_id;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let data = lab.data("data", 0);
    let repo = {
        let r = api
            .post(
                routes::API_REPOSITORIES,
                json!({"name": "repo", "url": lab.path("repo").to_str().unwrap(), "password": "pw",
                       "maintenance_schedule": NEVER_SOON}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    };
    let r = api
        .post(
            routes::API_PLANS,
            json!({"name": "nightly", "repository_id": repo, "paths": [&data], "schedule": NEVER_SOON,
                   "hosts": [web]}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let plan = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let init = api.job(repo, "init", web).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let a = run_backup(&api, plan, web).await;
    assert_eq!(a["status"], "succeeded", "{a}");
    let b = run_backup(&api, plan, web).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    let b_finished = b["finished_at"].clone();
    eventually("the host shows the second backup", || async {
        (api.get(&routes::api_host(web)).await["last_backup_at"] == b_finished).then_some(())
    })
    .await;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    assert!(log_count(&api, b).await > 0, "a real backup logs lines");
    // Each backup's snapshot is indexed with its job (maybe just after the
    // job ends).
    eventually("both snapshots are indexed", || async {
        (count_where(&app, "snapshots", &format!("job_id IN ({a}, {b})")).await == 2).then_some(())
    })
    .await;
    let snapshots_before = app.count("snapshots").await;
    assert_eq!(
        count_where(&app, "snapshots", &format!("job_id = {a}")).await,
        1,
        "backup {a} made a snapshot that names it"
    );

    // More than 400 days pass.
    app.clock.advance(Duration::from_secs(401 * 86_400));
    let now = app.clock.now_ms();
    let host_before = api.get(&routes::api_host(web)).await;
    assert_eq!(host_before["last_backup_status"], "succeeded");
    assert!(host_before["last_backup_at"].is_string(), "{host_before}");

    // An offline host with jobs made directly: two old checks, a job still
    // queued since then (and a newer one), a recent failure with logs.
    let (idle, _) = app.add_host_direct("idle").await;
    let old_check = job_row(
        &app,
        idle,
        "check",
        "succeeded",
        repo,
        now - 450 * DAY_MS,
        Some(now - 450 * DAY_MS),
        3,
    )
    .await;
    let last_check = job_row(
        &app,
        idle,
        "check",
        "succeeded",
        repo,
        now - 440 * DAY_MS,
        Some(now - 440 * DAY_MS),
        3,
    )
    .await;
    let live = job_row(
        &app,
        idle,
        "check",
        "queued",
        repo,
        now - 450 * DAY_MS,
        None,
        0,
    )
    .await;
    job_row(
        &app,
        idle,
        "check",
        "queued",
        repo,
        now - 5 * DAY_MS,
        None,
        0,
    )
    .await;
    let recent = job_row(
        &app,
        idle,
        "check",
        "failed",
        repo,
        now - 10 * DAY_MS,
        Some(now - 10 * DAY_MS),
        2,
    )
    .await;
    let mid = job_row(
        &app,
        idle,
        "unlock",
        "succeeded",
        repo,
        now - 100 * DAY_MS,
        Some(now - 100 * DAY_MS),
        4,
    )
    .await;
    job_row(
        &app,
        idle,
        "unlock",
        "succeeded",
        repo,
        now - DAY_MS,
        Some(now - DAY_MS),
        1,
    )
    .await;

    // An old fleet run updated idle with an update job that a later one
    // on the same host superseded.
    let old_update = job_row(
        &app,
        idle,
        "update",
        "succeeded",
        0,
        now - 450 * DAY_MS,
        Some(now - 450 * DAY_MS),
        2,
    )
    .await;
    job_row(
        &app,
        idle,
        "update",
        "succeeded",
        0,
        now - 300 * DAY_MS,
        Some(now - 300 * DAY_MS),
        0,
    )
    .await;
    let run = insert_id(
        &app,
        &format!(
            "INSERT INTO fleet_updates (started_at, started_by, target_version, status, completed_at) \
             VALUES ({t}, 'admin', 'v2', 'completed', {t})",
            t = now - 450 * DAY_MS
        ),
    )
    .await;
    app.query(&format!(
        "INSERT INTO fleet_update_hosts (fleet_update_id, host_id, position, hostname, from_version, status, job_id) \
         VALUES ({run}, {idle}, 0, 'idle', 'v1', 'succeeded', {old_update})"
    ))
    .await;

    // Audit rows: one old, one recent (the real ones from the setup are
    // 401 days old by now).
    for at in [now - 401 * DAY_MS, now - 10 * DAY_MS] {
        app.query(&format!(
            "INSERT INTO audit_log (at, actor, action) VALUES ({at}, 'tester', 'test.retention')"
        ))
        .await;
    }
    // Alerts with deliveries to a disabled target: one resolved long ago,
    // one resolved lately, one open for long; plus an old test send.
    let target = insert_id(
        &app,
        &format!(
            "INSERT INTO notification_targets (name, url, enabled, created_at) \
             VALUES ('hook', 'http://127.0.0.1:9/x', false, {now})"
        ),
    )
    .await;
    let alert = |key: &str, raised: i64, resolved: Option<i64>| {
        let resolved = resolved.map_or("NULL".to_string(), |r| r.to_string());
        format!(
            "INSERT INTO alerts (kind, dedup_key, host_id, severity, message, count, raised_at, last_seen_at, resolved_at) \
             VALUES ('test', '{key}', {idle}, 'warning', 'test alert', 1, {raised}, {raised}, {resolved})"
        )
    };
    let old_alert = insert_id(
        &app,
        &alert("t:old", now - 120 * DAY_MS, Some(now - 100 * DAY_MS)),
    )
    .await;
    let new_alert = insert_id(
        &app,
        &alert("t:new", now - 20 * DAY_MS, Some(now - 10 * DAY_MS)),
    )
    .await;
    let open_alert = insert_id(&app, &alert("t:open", now - 200 * DAY_MS, None)).await;
    let delivery = |alert: Option<i64>, event: &str, at: i64| {
        let alert = alert.map_or("NULL".to_string(), |a| a.to_string());
        format!(
            "INSERT INTO notification_deliveries (target_id, alert_id, event, payload, status, attempts, \
             next_attempt_at, created_at, updated_at) \
             VALUES ({target}, {alert}, '{event}', '{{}}', 'delivered', 1, {at}, {at}, {at})"
        )
    };
    for (a, ev, at) in [
        (Some(old_alert), "raised", now - 120 * DAY_MS),
        (Some(old_alert), "resolved", now - 100 * DAY_MS),
        (None, "test", now - 100 * DAY_MS),
        (Some(new_alert), "raised", now - 20 * DAY_MS),
        (Some(open_alert), "raised", now - 200 * DAY_MS),
    ] {
        app.query(&delivery(a, ev, at)).await;
    }
    // Enrollment tokens: web's (used 401 days ago) and one expired two
    // days ago are spent; idle's (just made), one used an hour ago and one
    // fresh stay.
    let token = |hash: &str, expires: i64, used: Option<i64>| {
        let used = used.map_or("NULL".to_string(), |u| u.to_string());
        format!(
            "INSERT INTO enrollment_tokens (host_id, token_hash, created_at, expires_at, used_at) \
             VALUES ({idle}, '{hash}', {now}, {expires}, {used})"
        )
    };
    app.query(&token("expired", now - 2 * DAY_MS, None)).await;
    app.query(&token("just-used", now + DAY_MS, Some(now - 3_600_000)))
        .await;
    app.query(&token("fresh", now + DAY_MS, None)).await;

    let report = retention::purge_now(app.state()).await.unwrap();
    let p = report.purged;

    // Old jobs are gone, on their page and in the API.
    for gone in [a, old_check] {
        assert_eq!(
            status_of(admin, &app, &routes::api_job(gone)).await,
            404,
            "job {gone}"
        );
        assert_eq!(
            status_of(admin, &app, &routes::job(gone)).await,
            404,
            "job {gone}"
        );
    }
    assert_eq!(
        count_where(&app, "job_logs", &format!("job_id IN ({a}, {old_check})")).await,
        0
    );
    // Each host's latest of each kind stays, so its last backup reads the
    // same; their logs went with the job-logs period.
    for kept in [b, init, last_check] {
        assert_eq!(
            status_of(admin, &app, &routes::api_job(kept)).await,
            200,
            "job {kept}"
        );
        assert_eq!(
            log_count(&api, kept).await,
            0,
            "old logs of job {kept} are gone"
        );
    }
    let b_page = Page::from(admin.get(app.at(&routes::job(b))).send().await.unwrap()).await;
    assert!(
        b_page.has("[data-testid=log-purged]"),
        "the job page says its log was purged"
    );
    let host_after = api.get(&routes::api_host(web)).await;
    for k in ["last_backup_at", "last_backup_status", "backup_state"] {
        assert_eq!(host_after[k], host_before[k], "{k}");
    }
    let host_page = Page::from(admin.get(app.at(&routes::host(web))).send().await.unwrap()).await;
    host_page.assert_html();
    // The live job and the recent ones stay with their logs.
    let l = api.get(&routes::api_job(live)).await;
    assert_eq!(l["status"], "queued", "{l}");
    assert_eq!(log_count(&api, recent).await, 2);
    assert_eq!(log_count(&api, mid).await, 0, "logs older than 90 days go");
    assert_eq!(
        status_of(admin, &app, &routes::api_job(mid)).await,
        200,
        "a job of 100 days stays"
    );
    // The fleet run keeps its host row, without the purged job's link.
    assert_eq!(
        status_of(admin, &app, &routes::api_job(old_update)).await,
        404
    );
    let fleet = api.get(&routes::api_fleet_run(run)).await;
    assert_eq!(fleet["hosts"][0]["status"], "succeeded", "{fleet}");
    assert_eq!(fleet["hosts"][0]["job_id"], Value::Null, "{fleet}");
    assert_eq!(status_of(admin, &app, routes::FLEET_UPDATE_PAGE).await, 200);
    // The snapshot of the purged backup stays, without its job.
    assert_eq!(app.count("snapshots").await, snapshots_before);
    assert_eq!(
        count_where(&app, "snapshots", &format!("job_id = {a}")).await,
        0
    );

    // Audit: the old rows are gone, the recent one stays.
    assert_eq!(
        count_where(&app, "audit_log", &format!("at < {}", now - 400 * DAY_MS)).await,
        0
    );
    assert_eq!(
        count_where(&app, "audit_log", "action = 'test.retention'").await,
        1
    );
    assert!(p.audit >= 2, "{p:?}");
    // Alerts: only the one resolved long ago goes, with its deliveries and
    // the old test send; the open one keeps its delivery.
    assert_eq!((p.alerts, p.deliveries), (1, 3), "{p:?}");
    let alerts: Vec<i64> = app
        .query("SELECT CAST(id AS TEXT) FROM alerts WHERE kind = 'test' ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(alerts, vec![new_alert, open_alert]);
    assert_eq!(
        count_where(
            &app,
            "notification_deliveries",
            &format!("alert_id = {open_alert}")
        )
        .await,
        1
    );
    let active = api
        .get(&format!("{}?state=active&limit=1000", routes::API_ALERTS))
        .await;
    assert!(
        active
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == open_alert),
        "the open alert is still listed: {active}"
    );
    // Tokens: the spent ones go, the fresh and just-used stay.
    assert_eq!(p.enrollment_tokens, 2, "{p:?}");
    assert_eq!(
        count_where(&app, "enrollment_tokens", &format!("host_id = {web}")).await,
        0
    );
    let hashes: Vec<String> = app
        .query(&format!(
            "SELECT token_hash FROM enrollment_tokens WHERE host_id = {idle} ORDER BY token_hash"
        ))
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(
        hashes.contains(&"fresh".to_string()) && hashes.contains(&"just-used".to_string()),
        "{hashes:?}"
    );
    assert!(p.jobs >= 3 && p.job_logs >= 3 + 3 + 3 + 4 + 2, "{p:?}");

    // The settings page shows the purge with its counts.
    let page = settings_page(&app, admin).await;
    assert!(
        page.has("[data-testid=last-purge-at]"),
        "{}",
        page.one("[data-testid=last-purge]")
    );
    for (kind, n) in [
        ("job_logs", p.job_logs),
        ("jobs", p.jobs),
        ("audit", p.audit),
        ("alerts", p.alerts),
        ("deliveries", p.deliveries),
        ("enrollment_tokens", p.enrollment_tokens),
    ] {
        assert_eq!(
            page.one(&format!("[data-testid=purged][data-kind={kind}]")),
            n.to_string(),
            "{kind}"
        );
    }
    // Viewers do not see settings.
    let viewer = app
        .as_role(restic_manager::store::users::Role::Viewer)
        .await;
    assert_eq!(
        status_of(&viewer, &app, routes::NOTIFICATIONS_PAGE).await,
        403
    );

    // A new backup keeps its logs through the next purge, which takes the
    // backup that was the latest until now.
    let c = run_backup(&api, plan, web).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    let c_finished = c["finished_at"].clone();
    let c = c["id"].as_i64().unwrap();
    let c_lines = log_count(&api, c).await;
    assert!(c_lines > 0);
    // Backup health follows the job's end (just after it).
    let host_now = eventually("the host shows the new backup", || async {
        let h = api.get(&routes::api_host(web)).await;
        (h["last_backup_at"] == c_finished).then_some(h)
    })
    .await;
    retention::purge_now(app.state()).await.unwrap();
    assert_eq!(log_count(&api, c).await, c_lines);
    assert_eq!(status_of(admin, &app, &routes::api_job(b)).await, 404);
    let host_after = api.get(&routes::api_host(web)).await;
    for k in ["last_backup_at", "last_backup_status", "backup_state"] {
        assert_eq!(host_after[k], host_now[k], "{k}");
    }
    drop(agent);
}

/// Bytes of the database file (SQLite) after the write-ahead log is in it.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn a_purge_of_many_rows_goes_in_batches_and_shrinks_the_sqlite_file() {
    let app = TestApp::spawn_with(|s| s.retention.jobs = 0).await;
    let (host, _) = app.add_host_direct("big").await;
    let now = app.clock.now_ms();
    let old = now - 100 * DAY_MS;
    let job = job_row(&app, host, "check", "succeeded", 0, old, Some(old), 0).await;
    // About 6 MB of log lines, more than a few batches.
    log_rows(&app, job, 0, 6_000, old, 1000).await;
    let keep = job_row(&app, host, "check", "failed", 0, now, Some(now), 0).await;
    log_rows(&app, keep, 0, 10, now, 1000).await;
    let db_file = app.settings.data_dir.join("restic-manager.db");
    if app.is_sqlite() {
        assert_eq!(
            restic_manager::db::sqlite_pragma(app.db(), "auto_vacuum")
                .await
                .unwrap(),
            2,
            "a new database is made with incremental vacuum"
        );
        use sea_orm::ConnectionTrait;
        app.db()
            .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .unwrap();
    }
    let before = app.is_sqlite().then(|| file_len(&db_file));

    let report = retention::purge_now(app.state()).await.unwrap();
    assert_eq!(report.purged.job_logs, 6_000);
    assert_eq!(report.purged.jobs, 0, "jobs=0 keeps jobs forever");
    assert_eq!(
        count_where(&app, "job_logs", &format!("job_id = {job}")).await,
        0
    );
    assert_eq!(
        count_where(&app, "job_logs", &format!("job_id = {keep}")).await,
        10
    );
    assert_eq!(app.count("jobs").await, 2);
    if let Some(before) = before {
        let after = file_len(&db_file);
        assert!(
            after < before / 2,
            "the database file shrinks after the purge: {before} -> {after} bytes"
        );
    }
}

/// The purge walks the jobs by id windows: jobs whose ids are windows
/// apart (a history with gaps, ids far beyond the first) all go, and the
/// newest of their kind stays.
#[tokio::test]
async fn a_purge_reaches_jobs_whose_ids_lie_windows_apart() {
    let app = TestApp::spawn().await;
    let (host, _) = app.add_host_direct("gaps").await;
    let old = app.clock.now_ms() - 500 * DAY_MS;
    let first = job_row(&app, host, "check", "succeeded", 0, old, Some(old), 3).await;
    let window = restic_manager::store::retention::WINDOW;
    let mut ids = vec![first];
    for (step, gap) in [(1, 2 * window + 500), (2, 5 * window + 7)] {
        let id = first + gap;
        let t = old + step * DAY_MS;
        use sea_orm::ConnectionTrait;
        app.db()
            .execute_unprepared(&format!(
                "INSERT INTO jobs (id, host_id, kind, status, actor_kind, actor_name, created_at, \
             started_at, finished_at, repository_id, log_lines) VALUES \
             ({id}, {host}, 'check', 'succeeded', 'system', 'test', {t}, {t}, {t}, 0, 3)"
            ))
            .await
            .unwrap();
        log_rows(&app, id, 0, 3, t, 40).await;
        ids.push(id);
    }
    let report = retention::purge_now(app.state()).await.unwrap();
    assert_eq!(report.purged.jobs, 2, "{report:?}");
    let left = count_where(&app, "jobs", &format!("host_id = {host}")).await;
    assert_eq!(left, 1);
    assert_eq!(
        count_where(&app, "jobs", &format!("id = {}", ids[2])).await,
        1,
        "the newest check stays"
    );
    assert_eq!(
        count_where(
            &app,
            "job_logs",
            &format!("job_id IN ({}, {})", ids[0], ids[1])
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_existing_sqlite_database_is_switched_to_incremental_vacuum_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    {
        // A database as an earlier version made it: auto_vacuum NONE.
        let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
        use sea_orm::ConnectionTrait;
        db.execute_unprepared(
            "PRAGMA auto_vacuum = NONE; CREATE TABLE leftover (x INTEGER); VACUUM;",
        )
        .await
        .unwrap();
        assert_eq!(
            restic_manager::db::sqlite_pragma(&db, "auto_vacuum")
                .await
                .unwrap(),
            0
        );
        db.close().await.unwrap();
    }
    let u = url.clone();
    let app = TestApp::spawn_with(move |s| s.database_url = u).await;
    assert_eq!(
        restic_manager::db::sqlite_pragma(app.db(), "auto_vacuum")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        app.count("leftover").await,
        0,
        "the data survives the rewrite"
    );
}

#[test]
fn a_bad_retention_days_stops_the_server_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |flag: Option<&str>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_restic-manager"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"]);
        cmd.env_remove("RM_RETENTION_DAYS");
        if let Some(f) = flag {
            cmd.args(["--retention-days", f]);
        }
        if let Some(e) = env {
            cmd.env("RM_RETENTION_DAYS", e);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for (flag, env, says) in [
        (Some("jobs=400,logs=3"), None, "unknown kind `logs`"),
        (
            Some("jobs=-1"),
            None,
            "`jobs=-1`: days must be a whole number",
        ),
        (
            None,
            Some("audit=abc"),
            "`audit=abc`: days must be a whole number",
        ),
        (Some("alerts"), None, "`alerts` is not `what=days`"),
    ] {
        let (ok, stderr) = run(flag, env);
        assert!(!ok, "{flag:?} {env:?} started");
        assert!(stderr.contains("--retention-days"), "{stderr}");
        assert!(stderr.contains(says), "{flag:?} {env:?}: {stderr}");
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_restic-manager"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--retention-days") && help.contains("RM_RETENTION_DAYS"),
        "{help}"
    );
}

#[tokio::test]
async fn the_worker_purges_on_its_own_shortly_after_start() {
    let app = TestApp::spawn_with(|s| {
        s.retention_first_delay = Duration::from_millis(300);
        s.retention_interval = Duration::from_millis(300);
    })
    .await;
    let (host, _) = app.add_host_direct("h").await;
    let now = app.clock.now_ms();
    app.query(&format!(
        "INSERT INTO enrollment_tokens (host_id, token_hash, created_at, expires_at) \
         VALUES ({host}, 'spent', {}, {})",
        now - 3 * DAY_MS,
        now - 2 * DAY_MS
    ))
    .await;
    eventually("a purge by the worker removes the spent token", || async {
        (count_where(&app, "enrollment_tokens", "token_hash = 'spent'").await == 0).then_some(())
    })
    .await;
    // The purge is recorded once it is done.
    let report = eventually("the purge is recorded", || async {
        retention::last_purge(app.db()).await.unwrap()
    })
    .await;
    assert!(report.at >= now - 60_000, "{report:?}");
    assert!(
        count_where(
            &app,
            "audit_log",
            "action = 'retention.purge' AND actor = 'system'"
        )
        .await
            >= 1
    );
    assert_eq!(
        count_where(&app, "enrollment_tokens", &format!("host_id = {host}")).await,
        1,
        "the host's fresh token stays"
    );
}
