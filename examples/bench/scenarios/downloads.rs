//! 4. Binary serving: a 20 MB agent binary staged with `restic-manager
//! agent-binary add`, fetched by 100 concurrent clients from
//! `GET /agent/binary` (with an agent secret): aggregate throughput and the
//! server's peak RSS growth (sampled every 10 ms). Baseline, same run: the
//! same file from `python3 -m http.server`. Each run starts both servers
//! afresh so growth is measured from a cold process.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::{
    Ctx, checks, mb,
    procs::{self, Server},
    report::{Goal, Row},
    say, seed, sys,
};

struct Measured {
    mb_per_s: f64,
    growth: u64,
}

async fn download_all(
    url: &str,
    bearer: Option<&str>,
    n: usize,
    size: u64,
    pid: u32,
) -> Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()?;
    let before = sys::rss_bytes(pid)?;
    let sampler = sys::PeakRss::start(pid, Duration::from_millis(10))?;
    let gate = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, gate, url) = (client.clone(), gate.clone(), url.to_string());
        let bearer = bearer.map(|b| format!("Bearer {b}"));
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let mut req = client.get(&url);
            if let Some(b) = bearer {
                req = req.header("Authorization", b);
            }
            let r = req.send().await.with_context(|| format!("GET {url}"))?;
            let status = r.status().as_u16();
            if status != 200 {
                let body = r.text().await.unwrap_or_default();
                return Err(checks::http_error(&format!("GET {url}"), status, &body));
            }
            let mut got = 0u64;
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                got += chunk.context("reading the download")?.len() as u64;
            }
            anyhow::Ok(got)
        }));
    }
    gate.wait().await;
    let t0 = Instant::now();
    let mut total = 0u64;
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await??;
        checks::check_download(i, got, size)?;
        total += got;
    }
    let secs = t0.elapsed().as_secs_f64();
    let peak = sampler.stop().await;
    Ok(Measured {
        mb_per_s: mb(total) / secs,
        growth: peak.saturating_sub(before),
    })
}

/// One download checked byte for byte against the staged file.
async fn verify(url: &str, bearer: &str, sha: &str, version: &str) -> Result<()> {
    let r = reqwest::Client::new()
        .get(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .send()
        .await?;
    let status = r.status().as_u16();
    let header = |h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (h_sha, h_version) = (header("X-Agent-Sha256"), header("X-Agent-Version"));
    let body = r.bytes().await?;
    checks::expect_success("GET /agent/binary", status, "")?;
    let got = hex::encode(Sha256::digest(&body));
    ensure!(
        got == sha,
        "downloaded binary has sha256 {got}, staged {sha}"
    );
    ensure!(h_sha == sha, "X-Agent-Sha256 says {h_sha}, staged {sha}");
    ensure!(
        h_version == version,
        "X-Agent-Version says {h_version}, staged {version}"
    );
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.opts.runs_or(5);
    let n = ctx.opts.downloads;
    let size = ctx.opts.download_mb as u64 * 1_000_000;
    let dir = ctx.dir("downloads")?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let file = www.join("restic-manager-agent");
    crate::write_random_file(&file, size as usize)?;
    let sha = hex::encode(Sha256::digest(std::fs::read(&file)?));
    let db = seed::open(&dir, None).await?;
    let agents = seed::hosts(&db, 1, |_| ctx.version.clone()).await?;
    db.close().await?;
    procs::stage_binary(&ctx.bins, &dir, None, &file, &ctx.version)?;
    let secret = agents[0].secret.clone();

    let (mut ours, mut py) = (Vec::new(), Vec::new());
    // Correct bytes first (hashing 2 GB in the timed runs would load the CPU).
    let server = Server::start(&ctx.bins, &dir, None, &[]).await?;
    let path = "/agent/binary?os=linux&arch=x86_64";
    verify(
        &format!("{}{path}", server.url),
        &secret,
        &sha,
        &ctx.version,
    )
    .await?;
    server.proc.kill();
    for run in 0..runs {
        let mut server = Server::start(&ctx.bins, &dir, None, &[]).await?;
        let url = format!("{}{path}", server.url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = download_all(&url, Some(&secret), n, size, server.pid()).await?;
        server.proc.check_alive()?;
        server.proc.kill();

        let (p, base) = procs::python_http(&www, &dir).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = download_all(
            &format!("{base}/restic-manager-agent"),
            None,
            n,
            size,
            p.pid(),
        )
        .await?;
        p.kill();
        say!(
            "downloads run {}/{runs}: {:.0} MB/s, RSS +{:.1} MB (python {:.0} MB/s, +{:.1} MB)",
            run + 1,
            m.mb_per_s,
            mb(m.growth),
            b.mb_per_s,
            mb(b.growth)
        );
        ours.push(m);
        py.push(b);
    }
    let section = format!("4. downloads, {n} × {} MB", ctx.opts.download_mb);
    let col = |v: &[Measured], f: fn(&Measured) -> f64| v.iter().map(f).collect::<Vec<_>>();
    Ok(vec![
        Row::new(
            &section,
            "aggregate throughput",
            "MB/s",
            col(&ours, |m| m.mb_per_s),
        )
        .baseline("python3 -m http.server", col(&py, |m| m.mb_per_s))
        .goal(Goal::RatioAtLeast(0.5)),
        Row::new(
            &section,
            "server RSS growth (peak)",
            "MB",
            col(&ours, |m| mb(m.growth)),
        )
        .baseline("python3 -m http.server", col(&py, |m| mb(m.growth)))
        .goal(Goal::Below(50.0))
        .note(format!(
            "flat: well under the {} MB served at once",
            n as u64 * size / 1_000_000
        )),
    ])
}
