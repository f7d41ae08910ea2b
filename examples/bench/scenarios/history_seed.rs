//! Seeding the history scenario (8): jobs, snapshots and the plan's health
//! columns, set-based (`INSERT … SELECT` over generate_series on Postgres,
//! a recursive CTE on SQLite).
use anyhow::{Result, ensure};
use sea_orm::{DatabaseBackend, DatabaseConnection};

use super::history::{DAY, exec};

/// `FROM …` giving `s.i` in `lo..hi`, per backend.
fn series(b: DatabaseBackend, lo: i64, hi: i64) -> (String, String) {
    match b {
        DatabaseBackend::Postgres => (
            String::new(),
            format!("generate_series(CAST({lo} AS BIGINT), {}) AS s(i)", hi - 1),
        ),
        _ => (
            format!(
                "WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM s WHERE i < {}) ",
                hi - 1
            ),
            "s".into(),
        ),
    }
}

/// 64 hex digits from an integer expression, per backend.
fn hex64(b: DatabaseBackend, e: &str) -> String {
    match b {
        DatabaseBackend::Postgres => format!("lpad(to_hex({e}), 64, '0')"),
        _ => format!("printf('%064x', {e})"),
    }
}

fn padded5(b: DatabaseBackend, e: &str) -> String {
    match b {
        DatabaseBackend::Postgres => format!("lpad(CAST({e} AS TEXT), 5, '0')"),
        _ => format!("printf('%05d', {e})"),
    }
}

pub struct Shape {
    pub hosts: i64,
    pub per_host: i64,
    pub snaps_per_host: i64,
    pub first_host: i64,
    pub first_job: i64,
    pub repo: i64,
    pub plan: i64,
    pub now: i64,
}

impl Shape {
    pub fn jobs(&self) -> i64 {
        self.hosts * self.per_host
    }
}

/// Job `i` (0-based) is host `i % H`'s backup number `i / H` (oldest first),
/// one a day ending yesterday; 2% of the older ones failed.
pub async fn seed_jobs(db: &DatabaseConnection, s: &Shape) -> Result<()> {
    let b = db.get_database_backend();
    let chunk = 100_000;
    let mut lo = 0;
    while lo < s.jobs() {
        let hi = (lo + chunk).min(s.jobs());
        let (with, from) = series(b, lo, hi);
        let (h, k) = (
            format!("(s.i % {})", s.hosts),
            format!("(s.i / {})", s.hosts),
        );
        let created = format!("({} - ({} - {k}) * {DAY} + {h} * 8)", s.now, s.per_host);
        let failed = format!(
            "({k} < {} AND ({k} + {h}) % 50 = 0)",
            s.per_host - s.snaps_per_host
        );
        let sql = format!(
            "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at, started_at, \
             finished_at, exit_code, error, log_bytes, log_lines, log_truncated, repository_id, plan_id, \
             warning, error_kind, result, options, scope) \
             {with}SELECT {fh} + {h}, 'backup', \
             CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END, 'schedule', 'schedule', \
             {created}, {created} + 500, {created} + 60500, \
             CASE WHEN {failed} THEN 1 ELSE 0 END, \
             CASE WHEN {failed} THEN 'Fatal: unable to open config file: Stat: permission denied' ELSE NULL END, \
             2400, 24, FALSE, {repo}, {plan}, FALSE, \
             CASE WHEN {failed} THEN 'restic_failed' ELSE NULL END, \
             CASE WHEN {failed} THEN NULL ELSE \
             '{{\"snapshot_id\":\"' || {hex} || '\",\"files_new\":12,\"files_changed\":3,\"files_unmodified\":20000,\
             \"data_added\":1048576,\"total_bytes_processed\":1000000000,\"duration_secs\":60.0}}' END, \
             '{{\"paths\":[\"/etc\"],\"tags\":[\"rm-plan:{plan}\"],\"host\":\"bench-' || {name} || '\"}}', \
             'r{repo}h' || CAST({fh} + {h} AS TEXT) FROM {from}",
            fh = s.first_host,
            repo = s.repo,
            plan = s.plan,
            hex = hex64(b, "s.i + 1"),
            name = padded5(b, h.as_str()),
        );
        let n = exec(db, &sql).await?;
        ensure!(
            n == (hi - lo) as u64,
            "inserted {n} jobs, wanted {}",
            hi - lo
        );
        lo = hi;
    }
    Ok(())
}

/// The last `snaps_per_host` backups of each host, indexed.
pub async fn seed_snapshots(db: &DatabaseConnection, s: &Shape) -> Result<()> {
    let b = db.get_database_backend();
    let first = (s.per_host - s.snaps_per_host) * s.hosts;
    let (with, from) = series(b, first, s.jobs());
    let h = format!("(s.i % {})", s.hosts);
    let k = format!("(s.i / {})", s.hosts);
    let time = format!(
        "({} - ({} - {k}) * {DAY} + {h} * 8 + 60500)",
        s.now, s.per_host
    );
    let hex = hex64(b, "s.i + 1");
    let sql = format!(
        "INSERT INTO snapshots (repository_id, scope_host_id, host_id, snapshot_id, short_id, time, \
         hostname, paths, tags, plan_id, job_id, files_new, files_changed, data_added, \
         total_bytes_processed, duration_ms) \
         {with}SELECT {repo}, {fh} + {h}, {fh} + {h}, {hex}, substr({hex}, 1, 8), {time}, \
         'bench-' || {name} || '.bench.internal', '[\"/etc\"]', '[\"rm-plan:{plan}\"]', {plan}, \
         {fj} + s.i, 12, 3, 1048576, 1000000000, 60000 FROM {from}",
        repo = s.repo,
        fh = s.first_host,
        fj = s.first_job,
        plan = s.plan,
        name = padded5(b, h.as_str()),
    );
    let n = exec(db, &sql).await?;
    ensure!(
        n == (s.hosts * s.snaps_per_host) as u64,
        "inserted {n} snapshots, wanted {}",
        s.hosts * s.snaps_per_host
    );
    Ok(())
}

/// What the jobs say about each host, in the plan's health columns: host
/// index % 10 = 0 stale (last success 10 days ago), % 20 = 5 failing (the
/// last run failed), the rest ok.
pub async fn seed_health(db: &DatabaseConnection, s: &Shape) -> Result<()> {
    let i = format!("(host_id - {})", s.first_host);
    let sql = format!(
        "UPDATE plan_schedules SET covered_since = {cov}, \
         last_finished_at = CASE WHEN {i} % 10 = 0 THEN {stale} ELSE {yesterday} END, \
         last_status = CASE WHEN {i} % 20 = 5 THEN 'failed' ELSE 'succeeded' END, \
         last_success_at = CASE WHEN {i} % 10 = 0 THEN {stale} WHEN {i} % 20 = 5 THEN {before} ELSE {yesterday} END, \
         last_duration_ms = 60000, last_data_added = 1048576 WHERE plan_id = {plan}",
        cov = s.now - s.per_host * DAY - DAY,
        stale = s.now - 10 * DAY,
        yesterday = s.now - DAY + 60_500,
        before = s.now - 2 * DAY,
        plan = s.plan,
    );
    let n = exec(db, &sql).await?;
    ensure!(
        n == s.hosts as u64,
        "health set on {n} of {} hosts",
        s.hosts
    );
    Ok(())
}
