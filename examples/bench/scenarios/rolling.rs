//! 3. Rolling update overhead: 1,000 simulated agents at an old version;
//! a fleet update started through the API (server run with
//! `--update-min-healthy 0`); each agent answers `command.update` by closing
//! and saying hello again at once at the server's version with an update
//! report, like an agent that restarted instantly. Per-host overhead: from
//! host k's success hello being acknowledged to host k+1 receiving its
//! `command.update`, timed by the agents themselves. Baseline, same run:
//! the agents' own restart (command received → acknowledged again), the
//! part no server can remove.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    Ctx,
    checks::{self, Back, UpdateStep},
    procs::{self, Server},
    report::{Goal, Row},
    say, seed,
    sim::{Ev, Fleet, SimCfg},
    stats::Latency,
};

const OLD: &str = "v0.0.1-bench-old";
/// The run fails if no host makes progress for this long.
const STALL: Duration = Duration::from_secs(30);

struct Measured {
    overhead: Latency,
    restart: Latency,
    /// Sum of the agents' restarts: the total a server with no overhead
    /// would take.
    restart_sum_s: f64,
    total_s: f64,
}

async fn one_run(ctx: &Ctx, run: usize) -> Result<Measured> {
    let n = ctx.opts.fleet;
    let dir = ctx.dir(&format!("rolling-{run}"))?;
    let db = seed::open(&dir, None).await?;
    let agents = seed::hosts(&db, n, |_| OLD.to_string()).await?;
    db.close().await?;
    let bin = dir.join("fake-agent");
    crate::write_random_file(&bin, 64 * 1024)?;
    procs::stage_binary(&ctx.bins, &dir, None, &bin, &ctx.version)?;
    let server = Server::start(&ctx.bins, &dir, None, &["--update-min-healthy", "0"]).await?;
    let cfg = SimCfg {
        ws_url: server.ws_url(),
        server: format!("127.0.0.1:{}", server.port).parse()?,
        version: OLD.into(),
        expect_server_version: Some(ctx.version.clone()),
        check_host_id: true,
        obey_updates: true,
        restic: false,
        backup: None,
    };
    let mut fleet = Fleet::launch(Arc::new(cfg), &agents);
    fleet
        .wait_round(0, Duration::from_secs(120), "connecting the fleet")
        .await?;
    let admin = server.admin().await?;

    let t0 = Instant::now();
    let r = admin
        .post(format!("{}/api/fleet/update", server.url))
        .json(&serde_json::json!({ "confirm_count": n }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    checks::expect_success("POST /api/fleet/update", status, &body)?;
    let run_id = serde_json::from_str::<serde_json::Value>(&body)?["fleet_update_id"]
        .as_i64()
        .context("no fleet_update_id in the answer")?;

    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
    let mut steps: Vec<Option<UpdateStep>> = vec![None; n];
    let mut back = 0usize;
    let mut last_back = t0;
    while back < n {
        let Some(ev) = fleet.next_event(STALL).await else {
            bail!(
                "fleet update stalled: {back} of {n} hosts back at {} after {:.1} s; server log:\n{}",
                ctx.version,
                t0.elapsed().as_secs_f64(),
                procs::tail(&server.proc.log, 20)
            );
        };
        match ev {
            Ev::Command { idx, at } => {
                ensure!(
                    steps[idx].is_none(),
                    "host #{idx} was sent command.update twice"
                );
                steps[idx] = Some(UpdateStep {
                    host: idx,
                    command_at: ms(at),
                    back: None,
                });
            }
            Ev::Acked {
                idx,
                hello_at,
                at,
                version,
                ..
            } if version == ctx.version => {
                let s = steps[idx]
                    .as_mut()
                    .with_context(|| format!("host #{idx} came back updated without a command"))?;
                ensure!(s.back.is_none(), "host #{idx} came back twice");
                s.back = Some(Back {
                    hello_at: ms(hello_at),
                    acked_at: ms(at),
                });
                back += 1;
                last_back = at;
            }
            Ev::Acked { idx, version, .. } => {
                bail!("host #{idx} reconnected at {version}, not {}", ctx.version)
            }
            Ev::Lost { idx, why } => bail!("host #{idx} failed during the update: {why}"),
            Ev::Restic { idx, .. } | Ev::Answered { idx, .. } => {
                bail!("host #{idx} got an unexpected command.restic")
            }
        }
    }
    let total_s = last_back.duration_since(t0).as_secs_f64();
    let steps: Vec<UpdateStep> = steps.into_iter().flatten().collect();
    let overheads = checks::rolling_overheads(&steps, n)?;
    let restarts: Vec<f64> = steps
        .iter()
        .filter_map(|s| s.back.map(|b| b.acked_at - s.command_at))
        .collect();

    // The server agrees: the run completed, every host succeeded.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = admin
            .get(format!("{}/api/fleet-updates/{run_id}", server.url))
            .send()
            .await?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        checks::expect_success("GET /api/fleet-updates/{id}", status, &body)?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        match v["fleet_update"]["status"].as_str() {
            Some("completed") => {
                let hosts = v["hosts"].as_array().context("no hosts in the run")?;
                let ok = hosts.iter().filter(|h| h["status"] == "succeeded").count();
                ensure!(
                    hosts.len() == n && ok == n,
                    "fleet update completed with {ok} of {n} hosts succeeded"
                );
                break;
            }
            Some("running") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => bail!(
                "fleet update ended as {other:?}: {}",
                v["fleet_update"]["halted_reason"]
            ),
        }
    }
    fleet.shutdown().await;
    server.proc.kill();
    Ok(Measured {
        overhead: Latency::of(&overheads).context("no overheads")?,
        restart: Latency::of(&restarts).context("no restarts")?,
        restart_sum_s: restarts.iter().sum::<f64>() / 1e3,
        total_s,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.opts.runs_or(3);
    let n = ctx.opts.fleet;
    let mut ms = Vec::new();
    for run in 0..runs {
        let m = one_run(ctx, run).await?;
        say!(
            "rolling {n} hosts run {}/{runs}: overhead p50 {:.2} ms p99 {:.2} ms (restart p50 {:.2} p99 {:.2}), total {:.1} s",
            run + 1,
            m.overhead.p50,
            m.overhead.p99,
            m.restart.p50,
            m.restart.p99,
            m.total_s
        );
        ms.push(m);
    }
    let section = format!("3. rolling update, {n} agents");
    let col = |f: fn(&Measured) -> f64| ms.iter().map(f).collect::<Vec<_>>();
    Ok(vec![
        Row::new(
            &section,
            "per-host overhead p50",
            "ms",
            col(|m| m.overhead.p50),
        )
        .baseline("agent restart", col(|m| m.restart.p50)),
        Row::new(
            &section,
            "per-host overhead p99",
            "ms",
            col(|m| m.overhead.p99),
        )
        .baseline("agent restart", col(|m| m.restart.p99))
        .goal(Goal::Below(50.0)),
        Row::new(&section, "total time", "s", col(|m| m.total_s))
            .baseline("sum of agent restarts", col(|m| m.restart_sum_s))
            .note(format!(
                "POST → last host back; a 5 s sweep would take {} s",
                5 * n
            )),
    ])
}
