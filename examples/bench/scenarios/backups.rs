//! 10. Many backups at once: N simulated agents (real WebSockets, restic
//! reported in the hello, as in section 7) covered by one plan through a
//! label; `POST /api/plans/{id}/run` queues one backup on each. Every
//! agent answers its `command.restic` with `job.started`, then, once every
//! viewer is listening, for `--backups-secs` seconds one `log.stream` line
//! every 50 ms (20 a second) and one `job.progress` a second, then a
//! successful `job.finished` with a backup result. The agents' schedules
//! are spread evenly over the first second (agent k of N starts k/N s in),
//! as backups started together drift apart.
//!
//! V viewers (one admin session) follow one job's page stream
//! (`/jobs/{id}/events`): the server publishes each `job.progress` of a
//! running job as a `progress` event (the rendered progress bar; not
//! coalesced: each report is one event) and stored lines as `line` events.
//! Progress reports are numbered in `files_done` ("7 of 60 files" on the
//! bar), lines by the marker in their text (`sse::line_text`); the watched
//! agent notes when it hands each to its socket, the viewers when they
//! parse it: one process, one clock. Server CPU over the backups (go → all
//! N recorded as succeeded), its peak RSS (sampled every 100 ms).
//!
//! Nothing lost, or no figure: every viewer gets every progress report and
//! every line of its job, in order, and the `end`; the server records all N
//! backups as succeeded, each with exactly 20 × secs stored log lines and
//! an indexed snapshot.
//!
//! No same-run baseline: the bare relay of section 5 relays one agent's
//! lines to every viewer (it knows no jobs, no dispatch, no database), so it
//! would not measure the same work; the target is absolute (p99 < 1 s).
use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use agent::wire;
use anyhow::{Context, Result, bail, ensure};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::wave;
use crate::{
    Ctx, checks,
    load::{LINES_PER_SEC, Load, WATCHED},
    mb,
    report::{Goal, Row},
    say,
    sim::{Ev, Fleet},
    sse,
    stats::Latency,
    sys::{CpuMeter, PeakRss},
};

/// One session's live streams are capped by the server.
const MAX_VIEWERS: usize = restic_manager::web::job_events::MAX_STREAMS_PER_USER;

/// What one viewer of the watched job saw.
struct Viewed {
    progress: Vec<u64>,
    lines: Vec<u64>,
    progress_ms: Vec<f64>,
    line_ms: Vec<f64>,
    ended: bool,
}

async fn viewer(
    client: reqwest::Client,
    url: String,
    ready: mpsc::Sender<()>,
    load: Arc<Load>,
) -> Result<Viewed> {
    let r = sse::open(&client, &url).await?;
    let (mut progress, mut lines) = (Vec::new(), Vec::new());
    let (mut progress_ms, mut line_ms) = (Vec::new(), Vec::new());
    let ended = sse::follow(
        r,
        ready,
        || load.now_ns(),
        |e, now| {
            let ms = |at: u64| now.saturating_sub(at) as f64 / 1e6;
            match e.event.as_str() {
                "line" => {
                    let seq = sse::line_seq(&e.data).with_context(|| {
                        format!("a line event without a benchmark line: {:?}", e.data)
                    })?;
                    line_ms.push(ms(sse::sent_at(&load.line_sent, seq, "line")?));
                    lines.push(seq);
                }
                "progress" => {
                    let p = sse::progress_seq(&e.data).with_context(|| {
                        format!("a progress event without its number: {:?}", e.data)
                    })?;
                    progress_ms.push(ms(sse::sent_at(&load.progress_sent, p, "progress report")?));
                    progress.push(p);
                }
                _ => {}
            }
            Ok(())
        },
    )
    .await?;
    Ok(Viewed {
        progress,
        lines,
        progress_ms,
        line_ms,
        ended,
    })
}

struct Measured {
    progress: Latency,
    line: Latency,
    cpu: f64,
    client_cpu: f64,
    rss_idle: u64,
    rss_peak: u64,
    /// Last `job.finished` sent → all N recorded as succeeded, s.
    drain_s: f64,
    worst_lag_ms: f64,
}

/// Waits for one `command.restic` backup per agent; their job ids by agent.
async fn dispatched(fleet: &mut Fleet, n: usize) -> Result<Vec<i64>> {
    let mut jobs = vec![0i64; n];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "{got} of {n} backups dispatched in 120 s");
        match fleet.next_event(left).await {
            Some(Ev::Restic {
                idx, job_id, kind, ..
            }) => {
                ensure!(
                    kind == wire::JobKind::Backup,
                    "agent #{idx} got a {kind:?} job"
                );
                ensure!(jobs[idx] == 0, "agent #{idx} got two jobs");
                jobs[idx] = job_id;
                got += 1;
            }
            Some(Ev::Lost { idx, why }) => bail!("agent #{idx} failed: {why}"),
            Some(other) => bail!("unexpected {other:?} before the backups started"),
            None => {}
        }
    }
    Ok(jobs)
}

/// The server's record: all N backups of the plan succeeded (waited for);
/// returns how long that took.
async fn all_succeeded(
    db: &DatabaseConnection,
    plan_id: i64,
    n: usize,
    limit: Duration,
) -> Result<f64> {
    let t = Instant::now();
    let sql = format!(
        "SELECT COUNT(*) FROM jobs WHERE plan_id = {plan_id} AND kind = 'backup' AND status = 'succeeded'"
    );
    loop {
        let ok = wave::scalar(db, &sql).await? as usize;
        if ok == n {
            return Ok(t.elapsed().as_secs_f64());
        }
        ensure!(
            t.elapsed() < limit,
            "the server recorded {ok} of {n} backups as succeeded {limit:?} after the last job.finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every backup of the plan stored exactly `lines` log lines and has its
/// snapshot indexed.
async fn nothing_lost(db: &DatabaseConnection, plan_id: i64, n: usize, lines: u64) -> Result<()> {
    let of_plan = format!("SELECT id FROM jobs WHERE plan_id = {plan_id} AND kind = 'backup'");
    let total = wave::scalar(
        db,
        &format!("SELECT COUNT(*) FROM job_logs WHERE job_id IN ({of_plan})"),
    )
    .await?;
    let full = wave::scalar(
        db,
        &format!(
            "SELECT COUNT(*) FROM (SELECT job_id FROM job_logs WHERE job_id IN ({of_plan}) \
             GROUP BY job_id HAVING COUNT(*) = {lines}) AS t"
        ),
    )
    .await?;
    ensure!(
        full as usize == n && total as u64 == n as u64 * lines,
        "{full} of {n} backups stored all {lines} log lines ({total} lines stored, {} sent)",
        n as u64 * lines
    );
    let snaps = wave::scalar(
        db,
        &format!("SELECT COUNT(*) FROM snapshots WHERE job_id IN ({of_plan})"),
    )
    .await?;
    ensure!(
        snaps as usize == n,
        "{snaps} snapshots indexed for {n} backups"
    );
    Ok(())
}

async fn one_run(ctx: &Ctx, run: usize) -> Result<Measured> {
    let (n, secs, viewers) = (
        ctx.opts.backups_agents,
        ctx.opts.backups_secs,
        ctx.opts.backups_viewers,
    );
    let dir = ctx.dir(&format!("backups-{run}"))?;
    let (go_tx, go_rx) = watch::channel(false);
    let load = Arc::new(Load::new(secs, n, go_rx));
    let wave::ResticFleet {
        mut server,
        db,
        mut fleet,
        admin: c,
        repo,
        ..
    } = wave::restic_fleet(ctx, &dir, n, Some(load.clone())).await?;
    // Due hours away: only the run below starts these backups.
    let cron = wave::cron_at(wave::due_minute(wave::now_ms(), 6 * 3_600_000));
    let plan_id = wave::plan(&server, &c, repo, "backups", &cron, 0).await?;
    let v = wave::post(
        &c,
        &format!("{}/api/plans/{plan_id}/run", server.url),
        json!({}),
    )
    .await?;
    let queued: HashSet<i64> = v["job_ids"]
        .as_array()
        .context("POST /api/plans/{id}/run: no job_ids")?
        .iter()
        .filter_map(|j| j.as_i64())
        .collect();
    ensure!(
        queued.len() == n,
        "the plan's run queued {} backups for {n} hosts",
        queued.len()
    );
    let jobs = dispatched(&mut fleet, n).await?;
    ensure!(
        jobs.iter().all(|j| queued.contains(j)),
        "an agent got a job the run did not queue"
    );

    let url = format!("{}/jobs/{}/events", server.url, jobs[WATCHED]);
    let (ready_tx, mut ready_rx) = mpsc::channel(viewers.max(1));
    let tasks: Vec<_> = (0..viewers)
        .map(|_| {
            tokio::spawn(viewer(
                c.clone(),
                url.clone(),
                ready_tx.clone(),
                load.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    sse::all_ready(&mut ready_rx, viewers).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = server.proc.rss()?;
    let peak = PeakRss::start(server.pid(), Duration::from_millis(100))?;
    let cpu = CpuMeter::start(server.pid())?;
    let client_cpu = CpuMeter::start(std::process::id())?;
    go_tx.send(true)?;
    let mut answered = 0;
    // Agents slow down when the server stops reading their sockets.
    let deadline = Instant::now() + Duration::from_secs(3 * secs + 120);
    while answered < n {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "{answered} of {n} backups sent their end {} s after the go",
            3 * secs + 120
        );
        match fleet.next_event(left).await {
            Some(Ev::Answered { .. }) => answered += 1,
            Some(Ev::Lost { idx, why }) => bail!("agent #{idx} failed: {why}"),
            Some(other) => bail!("unexpected {other:?} during the backups"),
            None => {}
        }
    }
    let client_cpu = client_cpu.percent_of_core()?;
    // A server far behind has a backlog of up to the whole run to store.
    let drain_s = all_succeeded(&db, plan_id, n, Duration::from_secs(120 + 2 * secs)).await?;
    let cpu = cpu.percent_of_core()?;
    let rss_peak = peak.stop().await;
    let (mut progress_ms, mut line_ms) = (Vec::new(), Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let v = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .with_context(|| format!("viewer {i} did not see the job end within 60 s"))???;
        checks::check_viewer_seqs(i, "progress report", &v.progress, secs, v.ended)?;
        checks::check_viewer_lines(i, &v.lines, secs * LINES_PER_SEC, v.ended)?;
        progress_ms.extend(v.progress_ms);
        line_ms.extend(v.line_ms);
    }
    nothing_lost(&db, plan_id, n, secs * LINES_PER_SEC).await?;
    server.proc.check_alive()?;
    fleet.check_quiet("after the backups")?;
    fleet.shutdown().await;
    server.proc.kill();
    db.close().await?;
    Ok(Measured {
        progress: Latency::of(&progress_ms).context("no progress latencies")?,
        line: Latency::of(&line_ms).context("no line latencies")?,
        cpu,
        client_cpu,
        rss_idle,
        rss_peak,
        drain_s,
        worst_lag_ms: load.worst_lag_us.load(Ordering::Relaxed) as f64 / 1e3,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let (n, secs, viewers) = (
        ctx.opts.backups_agents,
        ctx.opts.backups_secs,
        ctx.opts.backups_viewers,
    );
    ensure!(
        n > 0 && secs > 0,
        "--backups-agents and --backups-secs must be at least 1"
    );
    ensure!(
        (1..=MAX_VIEWERS).contains(&viewers),
        "--backups-viewers must be 1 to {MAX_VIEWERS} (the viewers share one session)"
    );
    let runs = ctx.opts.runs_or(3);
    let mut ms = Vec::new();
    for run in 0..runs {
        let m = one_run(ctx, run).await?;
        say!(
            "backups run {}/{runs}: progress p50 {:.1} ms p99 {:.1} ms, lines p50 {:.1} ms p99 {:.1} ms, \
             server CPU {:.1}%, RSS {:.1} → {:.1} MB, all recorded {:.2} s after the last end, \
             load generator {:.1}% (worst lag {:.0} ms)",
            run + 1,
            m.progress.p50,
            m.progress.p99,
            m.line.p50,
            m.line.p99,
            m.cpu,
            mb(m.rss_idle),
            mb(m.rss_peak),
            m.drain_s,
            m.client_cpu,
            m.worst_lag_ms
        );
        ms.push(m);
    }
    let col = |f: &dyn Fn(&Measured) -> f64| ms.iter().map(f).collect::<Vec<_>>();
    let section = format!("10. many backups, {n} agents × {secs} s, {viewers} viewers");
    Ok(vec![
        Row::new(
            &section,
            "progress → viewer latency p50",
            "ms",
            col(&|m| m.progress.p50),
        )
        .note("every report at every viewer: none lost"),
        Row::new(
            &section,
            "progress → viewer latency p99",
            "ms",
            col(&|m| m.progress.p99),
        )
        .goal(Goal::Below(1000.0)),
        Row::new(
            &section,
            "log line → viewer latency p50",
            "ms",
            col(&|m| m.line.p50),
        )
        .note(format!(
            "{LINES_PER_SEC} lines/s per agent; every line at every viewer, all stored"
        )),
        Row::new(
            &section,
            "log line → viewer latency p99",
            "ms",
            col(&|m| m.line.p99),
        ),
        Row::new(
            &section,
            "server CPU during the backups",
            "% of a core",
            col(&|m| m.cpu),
        )
        .note("go → all recorded succeeded"),
        Row::new(
            &section,
            "server peak RSS during the backups",
            "MB",
            col(&|m| mb(m.rss_peak)),
        )
        .baseline("before, all connected", col(&|m| mb(m.rss_idle))),
        Row::new(
            &section,
            "last job.finished sent → all recorded succeeded",
            "s",
            col(&|m| m.drain_s),
        )
        .note("polled every 100 ms"),
        Row::new(
            &section,
            "load generator CPU (this tool)",
            "% of a core",
            col(&|m| m.client_cpu),
        )
        .note("shares the cores with the server"),
        Row::new(
            &section,
            "load generator: worst lag of a last line behind its schedule",
            "ms",
            col(&|m| m.worst_lag_ms),
        ),
    ])
}
