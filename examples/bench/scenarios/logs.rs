//! 5. Live logs: one job, one simulated agent sending `log.stream` lines at
//! 1,000 lines/s over its WebSocket, 100 viewers on the job's SSE stream
//! (`/jobs/{id}/events`, one admin session). Delivery latency: from the
//! agent handing a line to its socket to a viewer reading it, every line,
//! every viewer (the sender and the viewers share one clock). Server CPU
//! over the stream. Baseline, same run: this tool's bare relay (WebSocket
//! in, broadcast, plain SSE out; no database, no HTML).
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agent::wire::{
    self, FinishedStatus, JobFinished, JobStarted, LogStream, LogStreamKind, Message as _,
};
use anyhow::{Context, Result};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Ctx, checks,
    procs::{self, Proc, Server},
    report::{Goal, Row},
    say, seed, sim, sse,
    stats::Latency,
    sys::CpuMeter,
};

struct Target<'a> {
    proc: &'a mut Proc,
    ws: sim::Ws,
    job_id: i64,
    viewer_url: String,
    client: reqwest::Client,
}

struct Viewed {
    seqs: Vec<u64>,
    latencies_ms: Vec<f64>,
    ended: bool,
}

async fn viewer(
    client: reqwest::Client,
    url: String,
    ready: mpsc::Sender<()>,
    epoch: Instant,
    sent: Arc<Vec<AtomicU64>>,
) -> Result<Viewed> {
    let r = sse::open(&client, &url).await?;
    let (mut seqs, mut latencies_ms) = (Vec::new(), Vec::new());
    let clock = || epoch.elapsed().as_nanos() as u64;
    let ended = sse::follow(r, ready, clock, |e, now| {
        if e.event == "line" {
            let seq = sse::line_seq(&e.data)
                .with_context(|| format!("a line event without a benchmark line: {:?}", e.data))?;
            let at = sse::sent_at(&sent, seq, "line")?;
            seqs.push(seq);
            latencies_ms.push(now.saturating_sub(at) as f64 / 1e6);
        }
        Ok(())
    })
    .await?;
    Ok(Viewed {
        seqs,
        latencies_ms,
        ended,
    })
}

/// Streams the log to all viewers; returns pooled latency and CPU %.
/// Latency of every line at every viewer, the server's CPU and this
/// tool's own (the load generator shares the machine's cores).
struct Streamed {
    lat: Latency,
    cpu: f64,
    client_cpu: f64,
    /// Lines per second end to end: all lines / (first sent → last viewer done).
    delivered_per_s: f64,
}

async fn stream(ctx: &Ctx, t: Target<'_>) -> Result<Streamed> {
    let Target {
        proc,
        mut ws,
        job_id,
        viewer_url,
        client,
    } = t;
    let viewers = ctx.opts.viewers;
    let total = ctx.opts.lines_per_sec * ctx.opts.log_secs;
    let epoch = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..=total).map(|_| AtomicU64::new(0)).collect());
    let (ready_tx, mut ready_rx) = mpsc::channel(viewers);
    let tasks: Vec<_> = (0..viewers)
        .map(|_| {
            tokio::spawn(viewer(
                client.clone(),
                viewer_url.clone(),
                ready_tx.clone(),
                epoch,
                sent.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    sse::all_ready(&mut ready_rx, viewers).await?;
    let send = |m: String| Message::text(m);
    ws.send(send(
        JobStarted {
            job_id,
            kind: Some(wire::JobKind::Backup),
        }
        .envelope()
        .to_text(),
    ))
    .await?;
    let cpu = CpuMeter::start(proc.pid())?;
    let client_cpu = CpuMeter::start(std::process::id())?;
    let t0 = tokio::time::Instant::now();
    let per_line = Duration::from_secs(1).as_nanos() as f64 / ctx.opts.lines_per_sec as f64;
    let at = chrono::Utc::now().to_rfc3339();
    for seq in 1..=total {
        let due = t0 + Duration::from_nanos(((seq - 1) as f64 * per_line) as u64);
        tokio::time::sleep_until(due).await;
        let frame = LogStream {
            job_id,
            seq: seq as i64,
            stream: LogStreamKind::Stdout,
            data: sse::line_text(seq),
            at: at.clone(),
        }
        .envelope()
        .to_text();
        sent[seq as usize].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        ws.send(send(frame)).await?;
    }
    let behind = t0.elapsed().as_secs_f64() - ctx.opts.log_secs as f64;
    if behind > 1.0 {
        say!("warning: the sender ran {behind:.1} s behind its schedule");
    }
    ws.send(send(
        JobFinished {
            job_id,
            status: FinishedStatus::Succeeded,
            error: None,
            exit_code: Some(0),
            warning: false,
            error_kind: None,
            result: None,
        }
        .envelope()
        .to_text(),
    ))
    .await?;
    let mut all = Vec::with_capacity(viewers * total as usize);
    for (i, task) in tasks.into_iter().enumerate() {
        let v = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .with_context(|| {
                format!("viewer {i} did not finish within 60 s of the last line")
            })???;
        checks::check_viewer_lines(i, &v.seqs, total, v.ended)?;
        all.extend(v.latencies_ms);
    }
    let delivered_per_s = total as f64 / t0.elapsed().as_secs_f64();
    let cpu = cpu.percent_of_core()?;
    let client_cpu = client_cpu.percent_of_core()?;
    proc.check_alive()?;
    let _ = ws.close(None).await;
    Ok(Streamed {
        lat: Latency::of(&all).context("no latencies")?,
        cpu,
        client_cpu,
        delivered_per_s,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.opts.runs_or(5);
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let dir = ctx.dir(&format!("logs-{run}"))?;
        let db = seed::open(&dir, None).await?;
        let agents = seed::hosts(&db, 1, |_| ctx.version.clone()).await?;
        let job_id = seed::job(&db, agents[0].host_id).await?;
        db.close().await?;
        let mut server = Server::start(&ctx.bins, &dir, None, &[]).await?;
        let addr = format!("127.0.0.1:{}", server.port).parse()?;
        let mut ws = sim::connect(
            &server.ws_url(),
            addr,
            sim::source_addr(0),
            &agents[0].secret,
        )
        .await?;
        sim::hello(&mut ws, &ctx.version, "bench-logs", None, false).await?;
        let client = server.admin().await?;
        let viewer_url = format!("{}/jobs/{job_id}/events", server.url);
        let m = stream(
            ctx,
            Target {
                proc: &mut server.proc,
                ws,
                job_id,
                viewer_url,
                client,
            },
        )
        .await?;
        server.proc.kill();

        let (mut bp, ws_port, sse_port) = procs::baseline_server(&ctx.bins, &dir, &ctx.version)?;
        let ws_url = format!("ws://127.0.0.1:{ws_port}/agent/ws");
        let mut ws = sim::connect(
            &ws_url,
            format!("127.0.0.1:{ws_port}").parse()?,
            sim::source_addr(0),
            "x",
        )
        .await?;
        sim::hello(&mut ws, &ctx.version, "bench-logs", None, false).await?;
        let b = stream(
            ctx,
            Target {
                proc: &mut bp,
                ws,
                job_id,
                viewer_url: format!("http://127.0.0.1:{sse_port}/events"),
                client: reqwest::Client::new(),
            },
        )
        .await?;
        bp.kill();
        say!(
            "logs run {}/{runs}: p50 {:.2} ms p99 {:.2} ms, CPU {:.1}%, load generator {:.1}%, {:.0} lines/s delivered (bare relay p50 {:.2} p99 {:.2}, CPU {:.1}%, load generator {:.1}%, {:.0} lines/s)",
            run + 1,
            m.lat.p50,
            m.lat.p99,
            m.cpu,
            m.client_cpu,
            m.delivered_per_s,
            b.lat.p50,
            b.lat.p99,
            b.cpu,
            b.client_cpu,
            b.delivered_per_s
        );
        ours.push(m);
        bare.push(b);
    }
    let section = format!(
        "5. live logs, {} lines/s to {} viewers",
        ctx.opts.lines_per_sec, ctx.opts.viewers
    );
    let col = |v: &[Streamed], f: fn(&Streamed) -> f64| v.iter().map(f).collect::<Vec<_>>();
    Ok(vec![
        Row::new(
            &section,
            "delivery latency p50",
            "ms",
            col(&ours, |m| m.lat.p50),
        )
        .baseline("bare relay", col(&bare, |m| m.lat.p50))
        .note(format!("{} s per run", ctx.opts.log_secs)),
        Row::new(
            &section,
            "delivery latency p99",
            "ms",
            col(&ours, |m| m.lat.p99),
        )
        .baseline("bare relay", col(&bare, |m| m.lat.p99))
        .goal(Goal::Below(100.0)),
        Row::new(
            &section,
            "lines delivered per second, end to end",
            "lines/s",
            col(&ours, |m| m.delivered_per_s),
        )
        .baseline("bare relay", col(&bare, |m| m.delivered_per_s))
        .note("below the rate sent: the server falls behind"),
        Row::new(
            &section,
            "server CPU while streaming",
            "% of a core",
            col(&ours, |m| m.cpu),
        )
        .baseline("bare relay", col(&bare, |m| m.cpu)),
        Row::new(
            &section,
            "load generator CPU (this tool)",
            "% of a core",
            col(&ours, |m| m.client_cpu),
        )
        .baseline("bare relay", col(&bare, |m| m.client_cpu))
        .note("shares the 2 cores with the server"),
    ])
}
