//! 7. A scheduling wave: N hosts (simulated agents on real WebSockets that
//! report restic and answer each `command.restic` backup with
//! `job.started` and a successful `job.finished`) covered by one plan
//! through a label, due in the same minute.
//!
//! - `splay_secs` 0: from the due instant (the plan's minute, on the
//!   server's UTC clock) to the last `command.restic` received by an agent.
//!   Baseline: the same number of job rows inserted by this tool straight
//!   into the same database, one INSERT per row in one transaction (the
//!   floor any scheduler pays to queue them).
//! - `splay_secs` 3600: how the runs spread over the hour. The server's
//!   clock cannot be moved outside its tests, so this reads the next run
//!   the scheduler stored for every (plan, host) (`plan_schedules`, splay
//!   included) once the plan is created, and buckets them per minute: the
//!   scheduler fires each row at exactly that time.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use restic_manager::store::jobs::JobKind;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};
use serde_json::{Value, json};

use crate::{
    Ctx, checks,
    procs::Server,
    report::{Goal, Row},
    say, seed,
    sim::{Ev, Fleet, SimCfg},
};

pub const LABEL: &str = "bench-wave";
const CONNECT_LIMIT: Duration = Duration::from_secs(300);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// POSTs JSON as the admin; the parsed answer.
pub async fn post(c: &reqwest::Client, url: &str, body: Value) -> Result<Value> {
    let r = c
        .post(url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    checks::expect_success(&format!("POST {url}"), status, &text)?;
    serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON: {text}"))
}

/// A local repository (scope per host: no concurrency limit between hosts).
pub async fn repository(server: &Server, c: &reqwest::Client) -> Result<i64> {
    let v = post(
        c,
        &format!("{}/api/repositories", server.url),
        json!({"name": "bench", "url": "/srv/restic-bench", "password": "bench-repository-password"}),
    )
    .await?;
    v["id"].as_i64().context("POST /api/repositories: no id")
}

/// A plan over every host labelled [`LABEL`]; returns its id.
pub async fn plan(
    server: &Server,
    c: &reqwest::Client,
    repo: i64,
    name: &str,
    schedule: &str,
    splay_secs: i64,
) -> Result<i64> {
    let v = post(
        c,
        &format!("{}/api/plans", server.url),
        json!({
            "name": name, "repository_id": repo, "paths": ["/etc"],
            "schedule": schedule, "timezone": "UTC", "splay_secs": splay_secs,
            "labels": [LABEL],
        }),
    )
    .await?;
    v["id"].as_i64().context("POST /api/plans: no id")
}

pub async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let r = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(r.try_get_by_index(0)?)
}

/// Waits until the scheduler stored a next run for `n` hosts of `plan_id`.
pub async fn wait_planned(db: &DatabaseConnection, plan_id: i64, n: usize) -> Result<Duration> {
    let t = Instant::now();
    let sql = format!("SELECT COUNT(*) FROM plan_schedules WHERE plan_id = {plan_id}");
    loop {
        let got = scalar(db, &sql).await? as usize;
        if got == n {
            return Ok(t.elapsed());
        }
        ensure!(
            got < n,
            "plan {plan_id} has {got} stored runs for {n} hosts"
        );
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the scheduler stored {got} of {n} runs of plan {plan_id} in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cron expression for the UTC minute starting at `t` (ms).
pub fn cron_at(t: i64) -> String {
    let mins = t.div_euclid(60_000);
    format!("{} {} * * *", mins % 60, (mins / 60) % 24)
}

/// The first minute boundary at least `lead` ms from now.
pub fn due_minute(now: i64, lead: i64) -> i64 {
    (now + lead).div_euclid(60_000) * 60_000 + 60_000
}

struct Measured {
    /// Due instant → last command.restic received, s.
    last_dispatch_s: f64,
    /// Due instant → last job.finished answered by the server (all jobs ended).
    all_done_s: f64,
    /// POST /api/plans → all N runs stored, s.
    planned_s: f64,
    /// The raw-insert baseline, s.
    raw_s: f64,
    busiest: f64,
    average: f64,
    splay_planned_s: f64,
}

/// A restic fleet ready for work: `n` hosts labelled [`LABEL`] seeded, the
/// server started, every simulated agent connected (answering each backup
/// at once, or with `backup`'s load first), an admin client and a local
/// repository.
pub struct ResticFleet {
    pub server: Server,
    pub db: DatabaseConnection,
    pub fleet: Fleet,
    pub agents: Vec<seed::Seeded>,
    pub admin: reqwest::Client,
    pub repo: i64,
}

pub async fn restic_fleet(
    ctx: &Ctx,
    dir: &Path,
    n: usize,
    backup: Option<Arc<crate::load::Load>>,
) -> Result<ResticFleet> {
    let db = seed::open(dir, None).await?;
    let agents = seed::hosts(&db, n, |_| ctx.version.clone()).await?;
    seed::label_all(&db, LABEL).await?;
    db.close().await?;
    let server = Server::start(&ctx.bins, dir, None, &[]).await?;
    let db = Database::connect(restic_manager::config::default_database_url(dir).as_str()).await?;
    let cfg = SimCfg {
        ws_url: server.ws_url(),
        server: format!("127.0.0.1:{}", server.port).parse()?,
        version: ctx.version.clone(),
        expect_server_version: Some(ctx.version.clone()),
        check_host_id: true,
        obey_updates: false,
        restic: true,
        backup,
    };
    let mut fleet = Fleet::launch(Arc::new(cfg), &agents);
    fleet
        .wait_round(0, CONNECT_LIMIT, &format!("connecting {n} agents"))
        .await?;
    let admin = server.admin().await?;
    let repo = repository(&server, &admin).await?;
    Ok(ResticFleet {
        server,
        db,
        fleet,
        agents,
        admin,
        repo,
    })
}

async fn one_run(ctx: &Ctx, run: usize, n: usize) -> Result<Measured> {
    let dir = ctx.dir(&format!("wave-{run}"))?;
    let ResticFleet {
        mut server,
        db,
        mut fleet,
        agents,
        admin: c,
        repo,
    } = restic_fleet(ctx, &dir, n, None).await?;

    // splay 0: one minute for everyone.
    // Created this long before its minute, so the scheduler has stored
    // every host's run before it is due (checked below).
    let due = due_minute(now_ms(), ctx.opts.wave_lead_secs as i64 * 1000);
    let plan_id = plan(&server, &c, repo, "wave", &cron_at(due), 0).await?;
    let planned = wait_planned(&db, plan_id, n).await?;
    let (anchor_ms, anchor) = (now_ms(), Instant::now());
    ensure!(
        anchor_ms < due,
        "the scheduler stored the {n} runs {:.1} s after the plan was created, past its due minute: \
         raise --wave-lead-secs",
        planned.as_secs_f64()
    );
    let next_runs = scalar(
        &db,
        &format!(
            "SELECT COUNT(*) FROM plan_schedules WHERE plan_id = {plan_id} AND next_run_at = {due}"
        ),
    )
    .await?;
    ensure!(
        next_runs as usize == n,
        "{next_runs} of {n} runs stored for the due minute"
    );
    let due_at = anchor + Duration::from_millis((due - anchor_ms) as u64);
    say!(
        "wave run {}: {n} runs stored in {:.2} s; due in {:.1} s",
        run + 1,
        planned.as_secs_f64(),
        (due - anchor_ms) as f64 / 1e3
    );
    let mut dispatches = Vec::with_capacity(n);
    let mut finished = 0usize;
    let mut last_finished = due_at;
    let deadline = Instant::now() + Duration::from_millis((due - anchor_ms) as u64 + 300_000);
    while dispatches.len() < n || finished < n {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "wave: {} of {n} jobs dispatched and {finished} answered 5 minutes after the due minute",
            dispatches.len()
        );
        match fleet.next_event(left).await {
            Some(Ev::Restic {
                idx,
                job_id,
                kind,
                at,
            }) => {
                ensure!(
                    kind == agent::wire::JobKind::Backup,
                    "agent #{idx} got a {kind:?} job, not a backup"
                );
                dispatches.push(checks::Dispatch {
                    host: idx,
                    job_id,
                    after_due_ms: if at >= due_at {
                        at.duration_since(due_at).as_secs_f64() * 1e3
                    } else {
                        -(due_at.duration_since(at).as_secs_f64() * 1e3)
                    },
                });
            }
            Some(Ev::Answered { at, .. }) => {
                finished += 1;
                last_finished = last_finished.max(at);
            }
            Some(Ev::Lost { idx, why }) => bail!("wave: agent #{idx} failed: {why}"),
            Some(other) => bail!("wave: unexpected {other:?}"),
            None => {}
        }
    }
    let last_dispatch_ms = checks::check_wave(&dispatches, n)?;
    // The server agrees: N scheduled backups of the plan, one per host, all
    // succeeded.
    let sql = format!(
        "SELECT COUNT(*), COUNT(DISTINCT host_id) FROM jobs WHERE plan_id = {plan_id} \
         AND kind = 'backup' AND actor_kind = 'schedule'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobs WHERE plan_id = {plan_id} AND status = 'succeeded'"
            ),
        )
        .await?;
        if ok as usize == n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the server recorded {ok} of {n} backups as succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("no count")?;
    let (jobs, hosts): (i64, i64) = (r.try_get_by_index(0)?, r.try_get_by_index(1)?);
    ensure!(
        jobs as usize == n && hosts as usize == n,
        "the server queued {jobs} backups on {hosts} hosts for {n} hosts"
    );
    let all_done_s = last_finished.duration_since(due_at).as_secs_f64();

    // splay 3600: where the scheduler put each host's run in the hour.
    let t0 = due_minute(now_ms(), 2 * 3_600_000);
    let posted_splay = Instant::now();
    let splay_plan = plan(&server, &c, repo, "wave-splay", &cron_at(t0), 3600).await?;
    wait_planned(&db, splay_plan, n).await?;
    let splay_planned_s = posted_splay.elapsed().as_secs_f64();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT next_run_at FROM plan_schedules WHERE plan_id = {splay_plan}"),
        ))
        .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for r in rows {
        runs.push(r.try_get_by_index::<i64>(0)?);
    }
    let hist = checks::splay_histogram(&runs, t0, 3_600_000, 60_000, n)?;
    server.proc.check_alive()?;
    fleet.check_quiet("after the wave")?;
    fleet.shutdown().await;
    server.proc.kill();

    let raw_s = raw_inserts(&db, &agents, repo, plan_id).await?;
    db.close().await?;
    Ok(Measured {
        last_dispatch_s: last_dispatch_ms / 1e3,
        all_done_s,
        planned_s: planned.as_secs_f64(),
        raw_s,
        busiest: hist.busiest as f64,
        average: hist.average,
        splay_planned_s,
    })
}

/// The baseline: N job rows like the scheduler's, one INSERT each, in one
/// transaction, straight into the same database (after the server stopped).
async fn raw_inserts(
    db: &DatabaseConnection,
    agents: &[seed::Seeded],
    repo: i64,
    plan_id: i64,
) -> Result<f64> {
    let backend = db.get_database_backend();
    let now = now_ms();
    let t = Instant::now();
    let txn = db.begin().await?;
    for a in agents {
        let sql = format!(
            "INSERT INTO jobs (host_id, kind, status, actor_kind, actor_name, created_at, \
             log_bytes, log_lines, log_truncated, repository_id, plan_id, warning, options, scope) \
             VALUES ({}, '{}', 'queued', 'schedule', 'schedule', {now}, 0, 0, FALSE, {repo}, {plan_id}, \
             FALSE, '{{\"paths\":[\"/etc\"]}}', 'r{repo}h{}')",
            a.host_id,
            JobKind::Backup.as_str(),
            a.host_id
        );
        txn.execute_raw(Statement::from_string(backend, sql))
            .await?;
    }
    txn.commit().await?;
    Ok(t.elapsed().as_secs_f64())
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.opts.wave_hosts;
    let runs = ctx.opts.runs_or(3);
    let mut ms = Vec::new();
    for run in 0..runs {
        let m = one_run(ctx, run, n).await?;
        say!(
            "wave run {}/{runs}: last dispatch {:.2} s after the due minute (raw inserts {:.2} s), \
             all {n} finished at {:.2} s; splay 3600: busiest minute {} runs, average {:.1}",
            run + 1,
            m.last_dispatch_s,
            m.raw_s,
            m.all_done_s,
            m.busiest,
            m.average
        );
        ms.push(m);
    }
    let col = |f: &dyn Fn(&Measured) -> f64| ms.iter().map(f).collect::<Vec<_>>();
    let section = format!("7. scheduling wave, {n} hosts, SQLite");
    Ok(vec![
        Row::new(
            &section,
            "splay 0: due minute → last job dispatched",
            "s",
            col(&|m| m.last_dispatch_s),
        )
        .baseline(&format!("{n} raw INSERTs"), col(&|m| m.raw_s))
        .goal(Goal::Below(10.0)),
        Row::new(
            &section,
            "splay 0: due minute → last agent answered (job.started + job.finished sent)",
            "s",
            col(&|m| m.all_done_s),
        ),
        Row::new(
            &section,
            "splay 0: plan created → all next runs stored",
            "s",
            col(&|m| m.planned_s),
        ),
        Row::new(
            &section,
            "splay 3600: busiest minute",
            "runs",
            col(&|m| m.busiest),
        )
        .baseline("average minute", col(&|m| m.average))
        .goal(Goal::RatioAtMost(1.5))
        .note("next runs as stored by the scheduler, per minute of the hour"),
        Row::new(
            &section,
            "splay 3600: plan created → all next runs stored",
            "s",
            col(&|m| m.splay_planned_s),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_minute_leaves_the_lead_and_its_cron_names_it() {
        // 12:34:50.000 UTC on some day, 40 s lead → 12:36:00.
        let day = 19_000 * 86_400_000i64;
        let t = day + (12 * 3600 + 34 * 60 + 50) * 1000;
        let due = due_minute(t, 40_000);
        assert_eq!(due, day + (12 * 3600 + 36 * 60) * 1000);
        assert_eq!(cron_at(due), "36 12 * * *");
        assert!(due - t >= 40_000);
        // On a boundary: the next one after the lead.
        let t = day + (12 * 3600 + 35 * 60) * 1000 - 40_000;
        assert_eq!(due_minute(t, 40_000), day + (12 * 3600 + 36 * 60) * 1000);
    }
}
