//! 6. Agent footprint: size of the release `restic-manager-agent` (checked
//! stripped), and its resident memory once connected and idle
//! (`restic-manager-agent run` against the release server, median of 5
//! samples over 2 s, after 3 s of quiet). Baseline, same run: this tool as
//! a bare agent (tokio with two workers, one tokio-tungstenite connection,
//! hello, nothing else). The agent runs from a copy in the scratch
//! directory so its self-update files never land in target/.
use std::time::{Duration, Instant};

use agent::config::AgentConfig;
use anyhow::{Context, Result, bail, ensure};

use crate::{
    Ctx, checks, mb,
    procs::{self, Proc, Server},
    report::{Goal, Row},
    say, seed,
    stats::median,
};

/// Waits until the server shows host `id` online at `version`.
pub(crate) async fn wait_online(
    server: &Server,
    admin: &reqwest::Client,
    agent: &mut Proc,
    id: i64,
    version: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        agent.check_alive()?;
        let r = admin
            .get(format!("{}/api/hosts/{id}", server.url))
            .send()
            .await?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        checks::expect_success("GET /api/hosts/{id}", status, &body)?;
        let h: serde_json::Value = serde_json::from_str(&body)?;
        if h["online"] == true && h["agent_version"] == version {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} never came online at {version} (host {id}: {h}); its log:\n{}",
                agent.name,
                procs::tail(&agent.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn idle_rss(p: &mut Proc) -> Result<f64> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        p.check_alive()?;
        samples.push(mb(p.rss()?));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    median(&samples).context("no samples")
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.opts.runs_or(3);
    let bytes = std::fs::read(&ctx.bins.agent)?;
    let size = bytes.len() as u64;
    let stripped = checks::is_stripped(&bytes);
    let server_size = std::fs::metadata(&ctx.bins.server)?.len();

    let dir = ctx.dir("footprint")?;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let agent_bin = bin_dir.join("restic-manager-agent");
    std::fs::copy(&ctx.bins.agent, &agent_bin)?;
    let db = seed::open(&dir, None).await?;
    let hosts = seed::hosts(&db, 2 * runs, |_| String::new()).await?;
    db.close().await?;
    let server = Server::start(&ctx.bins, &dir, None, &[]).await?;
    let admin = server.admin().await?;

    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let h = &hosts[run];
        let config = dir.join(format!("agent-{run}.toml"));
        AgentConfig {
            server_url: server.url.clone(),
            host_id: h.host_id,
            secret: h.secret.clone(),
            ..AgentConfig::default()
        }
        .save(&config)?;
        let mut p = procs::agent(&agent_bin, &config, &dir)?;
        wait_online(&server, &admin, &mut p, h.host_id, &ctx.version).await?;
        let rss = idle_rss(&mut p).await?;
        p.kill();

        let h = &hosts[runs + run];
        let mut b = procs::baseline_agent(&ctx.bins, &dir, &server.ws_url(), &h.secret)?;
        wait_online(&server, &admin, &mut b, h.host_id, "baseline").await?;
        let b_rss = idle_rss(&mut b).await?;
        b.kill();
        say!(
            "footprint run {}/{runs}: agent idle RSS {rss:.1} MB (bare agent {b_rss:.1} MB)",
            run + 1
        );
        ours.push(rss);
        bare.push(b_rss);
    }
    ensure!(ours.len() == runs, "missing samples");
    let section = "6. agent footprint";
    Ok(vec![
        Row::new(section, "agent binary size", "MB", vec![mb(size)])
            .goal(Goal::Below(10.0))
            .note(if stripped {
                "stripped; for scale, the server binary is ".to_string()
                    + &format!("{:.1} MB", mb(server_size))
            } else {
                "NOT stripped".to_string()
            }),
        Row::new(section, "agent idle RSS, connected", "MB", ours)
            .baseline("bare tokio-tungstenite agent", bare)
            .goal(Goal::Below(15.0)),
    ])
}
