//! 8. History at scale: H hosts (10,000) covered by one plan, J finished
//! backup jobs (1,000,000: 100 a host, a day apart) and S indexed snapshots
//! (300,000: the last 30 of each host), seeded straight into the database
//! with set-based INSERT … SELECT (generate_series on Postgres, a recursive
//! CTE on SQLite) after the server created the repository and the plan
//! through its API; the plan's health columns say 10% of the hosts are
//! stale and 5% failing. Then p50/p99 (one logged-in client, sequential
//! requests) of the dashboard `/` (backup columns and health tiles),
//! `/?backup=stale`, a host page (its jobs and snapshots) and
//! `/api/snapshots?host_id=`, each beside the raw SQL its handler runs,
//! interleaved request by request; and the database size per job and per
//! snapshot (SQLite: growth of the file; Postgres: `pg_total_relation_size`
//! of the table over its rows). Last, with the server stopped, the daily
//! retention purge (`retention::purge_now`) once with jobs and logs kept 30
//! days: its duration and the rows it removed (destructive, so one run).
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{
    Ctx, checks,
    procs::Server,
    report::{Goal, Row},
    say, seed,
    stats::Latency,
};

use super::{
    history_seed::{Shape, seed_health, seed_jobs, seed_snapshots},
    wave::{self, LABEL},
};

pub(super) const DAY: i64 = 86_400_000;

pub(super) async fn exec(db: &DatabaseConnection, sql: &str) -> Result<u64> {
    Ok(db
        .execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .with_context(|| format!("running {}", &sql[..sql.len().min(120)]))?
        .rows_affected())
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let r = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(r.try_get_by_index(0)?)
}

/// SQLite: the file's size after a checkpoint; Postgres: the database's.
async fn size(db: &DatabaseConnection, sqlite_file: Option<&std::path::Path>) -> Result<u64> {
    match sqlite_file {
        Some(p) => {
            db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await?;
            Ok(std::fs::metadata(p)
                .with_context(|| format!("reading {}", p.display()))?
                .len())
        }
        None => Ok(scalar(db, "SELECT pg_database_size(current_database())").await? as u64),
    }
}

const PAIRS: &str = "SELECT ps.plan_id, ps.host_id, ps.next_run_at, ps.covered_since, \
     ps.last_finished_at, ps.last_status, ps.last_success_at, ps.last_duration_ms, ps.last_data_added \
     FROM plan_schedules ps JOIN plans p ON p.id = ps.plan_id WHERE p.enabled = TRUE AND ps.host_id IN ({ids}) \
     ORDER BY ps.host_id, ps.plan_id";
const HOST_COLUMNS: &str = "id, name, hostname, os, arch, agent_version, online, last_seen_at, \
     secret_hash, created_at, labels, restic_version, restic_capable";

/// The raw SQL of each measured item, as its handler runs it (same
/// queries, same order; no session check, no ORM, no HTML).
struct Raw {
    behind: String,
    stale: String,
    counts: String,
}

impl Raw {
    fn new(version: &str, cutoff: i64) -> Raw {
        // One grouped pass over the covering rows (store::health).
        let grouped = format!(
            "SELECT ps.host_id, MAX(CASE WHEN ps.last_status = 'failed' THEN 1 ELSE 0 END) AS failing, \
             MAX(CASE WHEN ps.covered_since < {cutoff} AND (ps.last_success_at IS NULL \
             OR ps.last_success_at < {cutoff}) THEN 1 ELSE 0 END) AS stale, \
             MAX(CASE WHEN ps.last_finished_at IS NULL THEN 1 ELSE 0 END) AS pending \
             FROM plan_schedules ps JOIN plans p ON p.id = ps.plan_id \
             WHERE p.enabled = TRUE GROUP BY ps.host_id"
        );
        Raw {
            behind: format!(
                "agent_version <> '' AND agent_version <> '{}'",
                version.replace('\'', "''")
            ),
            counts: format!(
                "SELECT t.backup_state, COUNT(*) AS n FROM (SELECT CASE WHEN g.host_id IS NULL \
                 THEN 'unprotected' WHEN g.failing = 1 THEN 'failing' WHEN g.stale = 1 THEN 'stale' \
                 WHEN g.pending = 1 THEN 'pending' ELSE 'ok' END AS backup_state \
                 FROM hosts LEFT JOIN ({grouped}) g ON g.host_id = hosts.id) t GROUP BY t.backup_state"
            ),
            stale: format!(
                "(hosts.id IN (SELECT g.host_id FROM ({grouped}) g WHERE g.failing = 0 AND g.stale = 1))"
            ),
        }
    }
}

async fn query(db: &DatabaseConnection, sql: &str) -> Result<Vec<sea_orm::QueryResult>> {
    Ok(db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?)
}

/// A page of hosts, their plan rows, the tiles' counts.
async fn raw_dashboard(db: &DatabaseConnection, q: &Raw, filter: Option<&str>) -> Result<()> {
    let w = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    let hosts = query(
        db,
        &format!("SELECT {HOST_COLUMNS} FROM hosts{w} ORDER BY name LIMIT 100 OFFSET 0"),
    )
    .await?;
    let mut ids = Vec::with_capacity(hosts.len());
    for h in &hosts {
        ids.push(h.try_get_by_index::<i64>(0)?.to_string());
    }
    query(db, &PAIRS.replace("{ids}", &ids.join(","))).await?;
    query(db, &q.counts).await?;
    scalar(db, &format!("SELECT COUNT(*) FROM hosts{w}")).await?;
    scalar(db, "SELECT COUNT(*) FROM hosts").await?;
    scalar(db, "SELECT COUNT(*) FROM hosts WHERE online = TRUE").await?;
    scalar(
        db,
        &format!("SELECT COUNT(*) FROM hosts WHERE {}", q.behind),
    )
    .await?;
    Ok(())
}

const SNAPSHOTS: &str = "SELECT id, repository_id, scope_host_id, host_id, snapshot_id, short_id, time, \
     hostname, paths, tags, plan_id, job_id, files_new, files_changed, data_added, total_bytes_processed, \
     duration_ms FROM snapshots WHERE host_id = {h} ORDER BY time DESC, id DESC LIMIT {n} OFFSET 0";

async fn raw_host_page(db: &DatabaseConnection, host: i64) -> Result<()> {
    query(
        db,
        &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = {host}"),
    )
    .await?;
    query(
        db,
        &format!("SELECT * FROM jobs WHERE host_id = {host} ORDER BY id DESC LIMIT 10 OFFSET 0"),
    )
    .await?;
    query(
        db,
        &format!("SELECT id, name FROM hosts WHERE id IN ({host})"),
    )
    .await?;
    query(
        db,
        &format!(
            "SELECT * FROM jobs WHERE host_id = {host} AND kind = 'update' AND status IN ('queued', 'running') \
             ORDER BY id DESC LIMIT 1"
        ),
    )
    .await?;
    query(
        db,
        &SNAPSHOTS
            .replace("{h}", &host.to_string())
            .replace("{n}", "50"),
    )
    .await?;
    query(
        db,
        "SELECT * FROM repositories ORDER BY name LIMIT 1000 OFFSET 0",
    )
    .await?;
    Ok(())
}

const ITEMS: [&str; 4] = [
    "GET / (backup columns, health tiles)",
    "GET /?backup=stale",
    "GET /hosts/{id} (jobs, snapshots)",
    "GET /api/snapshots?host_id=",
];

async fn get(c: &reqwest::Client, url: &str) -> Result<String> {
    let r = c
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    checks::expect_success(&format!("GET {url}"), status, &body)?;
    Ok(body)
}

fn path(item: usize, host: i64) -> String {
    match item {
        0 => "/".into(),
        1 => "/?backup=stale".into(),
        2 => format!("/hosts/{host}"),
        _ => format!("/api/snapshots?host_id={host}"),
    }
}

async fn raw_for(db: &DatabaseConnection, q: &Raw, item: usize, host: i64) -> Result<()> {
    match item {
        0 => raw_dashboard(db, q, None).await,
        1 => raw_dashboard(db, q, Some(&q.stale)).await,
        2 => raw_host_page(db, host).await,
        _ => query(
            db,
            &SNAPSHOTS
                .replace("{h}", &host.to_string())
                .replace("{n}", "100"),
        )
        .await
        .map(|_| ()),
    }
}

/// The pages show what was seeded.
async fn validate(c: &reqwest::Client, base: &str, s: &Shape) -> Result<()> {
    let sel = |x: &str| scraper::Selector::parse(x).expect("static selector");
    let tile = |doc: &scraper::Html, state: &str| -> Result<String> {
        Ok(doc
            .select(&sel(&format!(
                "[data-testid=tile-backup-{state}] .tile-value"
            )))
            .next()
            .with_context(|| format!("GET / shows no {state} tile"))?
            .text()
            .collect::<String>()
            .trim()
            .to_string())
    };
    let home = scraper::Html::parse_document(&get(c, &format!("{base}/")).await?);
    let rows = home.select(&sel("tr[data-testid=host-row]")).count();
    ensure!(rows == 100, "GET / shows {rows} host rows, expected 100");
    let (stale, failing) = ((s.hosts + 9) / 10, (s.hosts + 14) / 20);
    let counts = checks::HealthCounts {
        stale: tile(&home, "stale")?,
        failing: tile(&home, "failing")?,
        unprotected: tile(&home, "unprotected")?,
    };
    checks::check_health_tiles(&counts, stale, failing, 0)?;
    let last = home.select(&sel("td[data-testid=last-backup]")).count();
    ensure!(last == 100, "GET / shows {last} last-backup cells");
    let page = scraper::Html::parse_document(&get(c, &format!("{base}/?backup=stale")).await?);
    let n = page.select(&sel("tr[data-testid=host-row]")).count();
    ensure!(
        n as i64 == stale.min(100),
        "GET /?backup=stale shows {n} rows"
    );
    let host = s.first_host + 1;
    let page = scraper::Html::parse_document(&get(c, &format!("{base}/hosts/{host}")).await?);
    let n = page
        .select(&sel("tr[data-testid=host-snapshot-row]"))
        .count();
    ensure!(
        n as i64 == s.snaps_per_host.min(50),
        "the host page shows {n} snapshots, {} were seeded",
        s.snaps_per_host
    );
    let api: Vec<serde_json::Value> =
        serde_json::from_str(&get(c, &format!("{base}/api/snapshots?host_id={host}")).await?)?;
    ensure!(
        api.len() as i64 == s.snaps_per_host.min(100)
            && api.iter().all(|x| x["host_id"].as_i64() == Some(host)),
        "GET /api/snapshots?host_id={host} returned {} snapshots, not {} of that host",
        api.len(),
        s.snaps_per_host
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn backend(ctx: &Ctx, name: &str, pg: Option<&str>) -> Result<Vec<Row>> {
    let o = &ctx.opts;
    let (hosts, per_host, snaps) = (
        o.history_hosts as i64,
        (o.history_jobs / o.history_hosts.max(1)) as i64,
        (o.history_snapshots / o.history_hosts.max(1)) as i64,
    );
    ensure!(
        per_host >= snaps && snaps >= 1,
        "--history-jobs must be at least --history-snapshots, both at least --history-hosts"
    );
    let runs = o.runs_or(5);
    let requests = o.dashboard_requests.max(1);
    let dir = ctx.dir(&format!("history-{name}"))?;
    let db = seed::open(&dir, pg).await?;
    let agents = seed::hosts(&db, hosts as usize, |_| ctx.version.clone()).await?;
    seed::label_all(&db, LABEL).await?;
    db.close().await?;
    let url = match pg {
        Some(u) => u.to_string(),
        None => restic_manager::config::default_database_url(&dir),
    };
    let sqlite_file = pg.is_none().then(|| dir.join("restic-manager.db"));
    let server = Server::start(&ctx.bins, &dir, pg, &[]).await?;
    let c = server.admin().await?;
    let repo = wave::repository(&server, &c).await?;
    let plan = wave::plan(&server, &c, repo, "history", "0 3 * * *", 0).await?;
    let db = Database::connect(url.as_str()).await?;
    wave::wait_planned(&db, plan, hosts as usize).await?;
    server.proc.kill();
    let first_host = agents.first().map(|a| a.host_id).context("no hosts")?;
    ensure!(
        agents.last().map(|a| a.host_id) == Some(first_host + hosts - 1),
        "host ids are not contiguous"
    );
    let first_job = scalar(&db, "SELECT COALESCE(MAX(id), 0) FROM jobs").await? + 1;
    let s = Shape {
        hosts,
        per_host,
        snaps_per_host: snaps,
        first_host,
        first_job,
        repo,
        plan,
        now: chrono::Utc::now().timestamp_millis(),
    };
    let size0 = size(&db, sqlite_file.as_deref()).await?;
    let t = Instant::now();
    seed_jobs(&db, &s).await?;
    let size1 = size(&db, sqlite_file.as_deref()).await?;
    seed_snapshots(&db, &s).await?;
    let size2 = size(&db, sqlite_file.as_deref()).await?;
    seed_health(&db, &s).await?;
    let (jobs_n, snaps_n) = (
        scalar(&db, "SELECT COUNT(*) FROM jobs").await?,
        scalar(&db, "SELECT COUNT(*) FROM snapshots").await?,
    );
    ensure!(
        jobs_n == s.jobs() && snaps_n == hosts * snaps,
        "seeded {jobs_n} jobs and {snaps_n} snapshots, wanted {} and {}",
        s.jobs(),
        hosts * snaps
    );
    let (per_job, per_snap) = match pg {
        None => (
            size1.saturating_sub(size0) as f64 / jobs_n as f64,
            size2.saturating_sub(size1) as f64 / snaps_n as f64,
        ),
        Some(_) => {
            // What autovacuum would have done by now.
            exec(&db, "ANALYZE").await?;
            (
                scalar(&db, "SELECT pg_total_relation_size('jobs')").await? as f64 / jobs_n as f64,
                scalar(&db, "SELECT pg_total_relation_size('snapshots')").await? as f64
                    / snaps_n as f64,
            )
        }
    };
    say!(
        "history {name}: seeded {jobs_n} jobs and {snaps_n} snapshots in {:.0} s; {:.0} B per job, {:.0} B per snapshot; database {:.0} MB",
        t.elapsed().as_secs_f64(),
        per_job,
        per_snap,
        crate::mb(size2)
    );

    let mut server = Server::start(&ctx.bins, &dir, pg, &[]).await?;
    let c = server.admin().await?;
    validate(&c, &server.url, &s).await?;
    let cutoff = s.now - 26 * 3_600_000;
    let q = Raw::new(&ctx.version, cutoff);
    let mut page = vec![(Vec::new(), Vec::new()); ITEMS.len()];
    let mut raw = vec![(Vec::new(), Vec::new()); ITEMS.len()];
    let mut req = 0i64;
    for round in 0..=runs {
        let reps = if round == 0 { 20 } else { requests };
        let mut p_samples = vec![Vec::with_capacity(reps); ITEMS.len()];
        let mut r_samples = vec![Vec::with_capacity(reps); ITEMS.len()];
        for _ in 0..reps {
            req += 1;
            // A different host each time, the same for the page and its SQL.
            let host = first_host + (req * 7919) % hosts;
            for item in 0..ITEMS.len() {
                let t = Instant::now();
                get(&c, &format!("{}{}", server.url, path(item, host))).await?;
                p_samples[item].push(ms(t.elapsed()));
                let t = Instant::now();
                raw_for(&db, &q, item, host).await?;
                r_samples[item].push(ms(t.elapsed()));
            }
        }
        server.proc.check_alive()?;
        if round == 0 {
            continue;
        }
        for item in 0..ITEMS.len() {
            let p = Latency::of(&p_samples[item]).context("no samples")?;
            let r = Latency::of(&r_samples[item]).context("no samples")?;
            say!(
                "history {name} run {round}/{runs}: {} p50 {:.2} ms p99 {:.2} ms (raw SQL p50 {:.2} p99 {:.2})",
                ITEMS[item],
                p.p50,
                p.p99,
                r.p50,
                r.p99
            );
            page[item].0.push(p.p50);
            page[item].1.push(p.p99);
            raw[item].0.push(r.p50);
            raw[item].1.push(r.p99);
        }
    }
    db.close().await?;
    server.proc.kill();
    let purge = purge(&dir, pg, s.jobs()).await?;
    let section = format!(
        "8. history, {hosts} hosts, {} jobs, {} snapshots, {name}",
        s.jobs(),
        hosts * snaps
    );
    let mut out = Vec::new();
    for item in 0..ITEMS.len() {
        out.push(
            Row::new(
                &section,
                &format!("{} p50", ITEMS[item]),
                "ms",
                page[item].0.clone(),
            )
            .baseline("raw SQL", raw[item].0.clone())
            .note(format!("{requests} requests/run")),
        );
        out.push(
            Row::new(
                &section,
                &format!("{} p99", ITEMS[item]),
                "ms",
                page[item].1.clone(),
            )
            .baseline("raw SQL", raw[item].1.clone())
            .goal(Goal::Below(50.0)),
        );
    }
    let how = if pg.is_some() {
        "pg_total_relation_size / rows"
    } else {
        "file growth / rows"
    };
    out.push(Row::new(&section, "database size per job", "B", vec![per_job]).note(how));
    out.push(Row::new(&section, "database size per snapshot", "B", vec![per_snap]).note(how));
    out.push(
        Row::new(
            &section,
            &format!("daily retention purge, jobs and logs kept {PURGE_DAYS} days"),
            "s",
            vec![purge.secs],
        )
        .note(format!(
            "{} of {} jobs removed, {} rows in all; one run",
            purge.jobs, purge.before, purge.rows
        )),
    );
    Ok(out)
}

/// Days of jobs the measured purge keeps: of 100 daily backups a host, the
/// older ~70% go.
const PURGE_DAYS: u32 = 30;

struct Purge {
    secs: f64,
    jobs: u64,
    rows: u64,
    before: i64,
}

/// Times the daily retention purge (`retention::purge_now`, what the
/// server's daily worker runs) once over the seeded database, in a server
/// started in this process (the one measured above is stopped) with
/// `--retention-days job-logs=30,jobs=30` and its own purge timer far off.
async fn purge(dir: &std::path::Path, pg: Option<&str>, jobs: i64) -> Result<Purge> {
    let mut settings = restic_manager::config::Settings::with_data_dir(dir.to_path_buf());
    if let Some(u) = pg {
        settings.database_url = u.to_string();
    }
    settings.listen = "127.0.0.1:0".parse()?;
    settings.stage_sibling_agent = false;
    settings.retention = format!("job-logs={PURGE_DAYS},jobs={PURGE_DAYS}")
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    settings.retention_first_delay = Duration::from_secs(30 * 86_400);
    let running = restic_manager::start(settings).await?;
    let count = || async { scalar(&running.state.db, "SELECT COUNT(*) FROM jobs").await };
    let before = count().await?;
    ensure!(
        before >= jobs,
        "{before} jobs before the purge, {jobs} seeded"
    );
    let t = Instant::now();
    let report = restic_manager::retention::purge_now(&running.state).await;
    let secs = t.elapsed().as_secs_f64();
    let after = count().await;
    running.stop().await;
    let report = report?;
    let gone = before - after?;
    ensure!(
        gone == report.purged.jobs as i64 && gone > 0,
        "the purge reported {} jobs, the table lost {gone}",
        report.purged.jobs
    );
    say!(
        "history: retention purge removed {gone} of {before} jobs ({} rows in all) in {secs:.1} s",
        report.purged.total()
    );
    Ok(Purge {
        secs,
        jobs: report.purged.jobs,
        rows: report.purged.total(),
        before,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = backend(ctx, "SQLite", None).await?;
    if ctx.opts.skip_postgres {
        say!("history: Postgres skipped (--skip-postgres)");
        return Ok(rows);
    }
    let (url, name) = seed::postgres_database(&ctx.opts.pg_url).await?;
    let r = backend(ctx, "Postgres", Some(&url)).await;
    seed::drop_postgres_database(&ctx.opts.pg_url, &name).await;
    rows.extend(r?);
    Ok(rows)
}
