//! 1. Connected agents: for each fleet size N, time to connect all N
//! (connect, hello, ack; 256 in flight), server RSS and idle CPU with N
//! connected, and hellos/s when all N drop and come back at once — the
//! release server beside this tool's bare tokio WebSocket server, same
//! clients, same run.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    Ctx, mb,
    procs::{self, Proc, Server},
    report::{Goal, Row},
    say, seed,
    sim::{Fleet, SimCfg},
    sys::CpuMeter,
};

/// What one fleet did against one server process.
#[derive(Clone, Copy, Debug)]
struct Measured {
    connect_s: f64,
    rss_before: u64,
    rss: u64,
    idle_cpu: f64,
    storm_per_s: f64,
}

const CONNECT_LIMIT: Duration = Duration::from_secs(180);

async fn measure(
    ctx: &Ctx,
    proc: &mut Proc,
    cfg: SimCfg,
    agents: &[seed::Seeded],
) -> Result<Measured> {
    let n = agents.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = proc.rss()?;
    let t0 = Instant::now();
    let mut fleet = Fleet::launch(Arc::new(cfg), agents);
    let last = fleet
        .wait_round(0, CONNECT_LIMIT, &format!("connecting {n} agents"))
        .await?;
    let connect_s = last.duration_since(t0).as_secs_f64();
    // Let the presence writer and logs settle before calling it idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.check_quiet("settling")?;
    proc.check_alive()?;
    let cpu = CpuMeter::start(proc.pid())?;
    tokio::time::sleep(Duration::from_secs(ctx.opts.idle_secs)).await;
    let idle_cpu = cpu.percent_of_core()?;
    let rss = proc.rss()?;
    fleet.check_quiet("idle")?;
    let t = Instant::now();
    let round = fleet.storm();
    let last = fleet
        .wait_round(
            round,
            CONNECT_LIMIT,
            &format!("reconnect storm of {n} agents"),
        )
        .await?;
    let storm_s = last.duration_since(t).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.check_quiet("after the storm")?;
    proc.check_alive()?;
    fleet.shutdown().await;
    Ok(Measured {
        connect_s,
        rss_before,
        rss,
        idle_cpu,
        storm_per_s: n as f64 / storm_s,
    })
}

fn col(v: &[Measured], f: impl Fn(&Measured) -> f64) -> Vec<f64> {
    v.iter().map(f).collect()
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in &ctx.opts.agents {
        let runs = ctx.opts.runs_or(if n >= 10_000 { 3 } else { 5 });
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let dir = ctx.dir(&format!("agents-{n}-{run}"))?;
            let db = seed::open(&dir, None).await?;
            let agents = seed::hosts(&db, n, |_| ctx.version.clone()).await?;
            db.close().await?;
            let mut server = Server::start(&ctx.bins, &dir, None, &[]).await?;
            let addr = format!("127.0.0.1:{}", server.port).parse()?;
            let cfg = SimCfg {
                ws_url: server.ws_url(),
                server: addr,
                version: ctx.version.clone(),
                expect_server_version: Some(ctx.version.clone()),
                check_host_id: true,
                obey_updates: false,
                restic: false,
                backup: None,
            };
            let m = measure(ctx, &mut server.proc, cfg, &agents).await?;
            server.proc.kill();

            let (mut bp, ws_port, _) = procs::baseline_server(&ctx.bins, &dir, &ctx.version)?;
            let cfg = SimCfg {
                ws_url: format!("ws://127.0.0.1:{ws_port}/agent/ws"),
                server: format!("127.0.0.1:{ws_port}").parse()?,
                version: ctx.version.clone(),
                expect_server_version: Some(ctx.version.clone()),
                check_host_id: false,
                obey_updates: false,
                restic: false,
                backup: None,
            };
            let b = measure(ctx, &mut bp, cfg, &agents).await?;
            bp.kill();
            say!(
                "agents N={n} run {}/{runs}: connect {:.2} s (bare {:.2}), RSS {:.1} MB (bare {:.1}), idle CPU {:.2}% (bare {:.2}), storm {:.0}/s (bare {:.0})",
                run + 1,
                m.connect_s,
                b.connect_s,
                mb(m.rss),
                mb(b.rss),
                m.idle_cpu,
                b.idle_cpu,
                m.storm_per_s,
                b.storm_per_s
            );
            ours.push(m);
            bare.push(b);
        }
        let per_conn = |m: &Measured| m.rss.saturating_sub(m.rss_before) as f64 / n as f64 / 1e3;
        let section = format!("1. agents N={n}");
        let big = n >= 10_000;
        rows.push(
            Row::new(
                &section,
                "time to connect all",
                "s",
                col(&ours, |m| m.connect_s),
            )
            .baseline("bare tokio WS", col(&bare, |m| m.connect_s)),
        );
        rows.push(
            Row::new(
                &section,
                "server RSS, all connected",
                "MB",
                col(&ours, |m| mb(m.rss)),
            )
            .baseline("bare tokio WS", col(&bare, |m| mb(m.rss)))
            .goal(if big { Goal::Below(300.0) } else { Goal::None }),
        );
        rows.push(
            Row::new(&section, "RSS per connection", "kB", col(&ours, per_conn))
                .baseline("bare tokio WS", col(&bare, per_conn)),
        );
        rows.push(
            Row::new(
                &section,
                "idle CPU, all connected",
                "% of a core",
                col(&ours, |m| m.idle_cpu),
            )
            .baseline("bare tokio WS", col(&bare, |m| m.idle_cpu))
            .goal(if big { Goal::Below(5.0) } else { Goal::None })
            .note(format!("{} s window", ctx.opts.idle_secs)),
        );
        rows.push(
            Row::new(
                &section,
                "reconnect storm",
                "hellos/s",
                col(&ours, |m| m.storm_per_s),
            )
            .baseline("bare tokio WS", col(&bare, |m| m.storm_per_s)),
        );
    }
    Ok(rows)
}
