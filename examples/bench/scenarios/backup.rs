//! 9. Agent overhead on a backup: one generated tree (about 20,000 files,
//! 1 GB, fixed seed) backed up to a fresh local repository by bare `restic
//! backup` and by a backup job through the release server and the release
//! agent (`POST /api/plans/{id}/run` to the job's end as the API reports
//! it), alternating, `runs` each after one untimed warm-up that fills the
//! page cache. Figures: wall time (ratio to bare restic, target ≤ 1.05) and
//! the agent's own CPU while the job runs (restic's is its own process and
//! not counted; target < 2% of a core). Each run is checked: the job
//! succeeded, and both repositories hold one snapshot of every file.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent::config::AgentConfig;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    Ctx, checks,
    procs::{self, Server},
    report::{Goal, Row},
    say, seed,
    sys::CpuMeter,
};

/// The generated tree's shape: most files small, a few large, as a home
/// or /etc-plus-data directory looks.
pub struct TreeSpec {
    pub files: usize,
    pub bytes: u64,
}

impl TreeSpec {
    /// Sizes of every file, deterministic for a spec: 99% small files of
    /// 1–16 KiB, the rest share what is left of `bytes` equally.
    pub fn sizes(&self) -> Vec<u64> {
        let large = (self.files / 100).max(1);
        let small = self.files.saturating_sub(large);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut sizes = Vec::with_capacity(self.files);
        let mut used = 0u64;
        for _ in 0..small {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = 1024 + x % (15 * 1024);
            sizes.push(s);
            used += s;
        }
        let rest = self.bytes.saturating_sub(used);
        let each = rest / large as u64;
        for i in 0..large {
            // The last large file takes the remainder: the total is exact.
            let s = if i + 1 == large {
                rest - each * (large as u64 - 1)
            } else {
                each
            };
            sizes.push(s);
        }
        sizes
    }
}

/// Writes the tree under `root` (100 files per directory), each file's
/// content its own pseudo-random stream (nothing deduplicates).
fn write_tree(root: &Path, spec: &TreeSpec) -> Result<()> {
    use std::io::Write as _;
    let mut buf = vec![0u8; 1 << 20];
    for (i, size) in spec.sizes().into_iter().enumerate() {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let path = dir.join(format!("f{i:05}.bin"));
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0x1000_0000_01B3);
        let mut left = size as usize;
        while left > 0 {
            let n = left.min(buf.len());
            for chunk in buf[..n].chunks_mut(8) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.flush()?;
    }
    Ok(())
}

/// `restic` with a repository and password file; stdout discarded.
fn restic(bin: &Path, repo: &Path, pw: &Path, cache: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin)
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", pw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {} {args:?}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "restic {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Files in the repository's only snapshot, as restic itself counts them.
fn snapshot_files(bin: &Path, repo: &Path, pw: &Path, cache: &Path) -> Result<u64> {
    let out = Command::new(bin)
        .arg(format!("--cache-dir={}", cache.display()))
        .args(["snapshots", "--json"])
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", pw)
        .stdin(Stdio::null())
        .output()
        .context("running restic snapshots")?;
    ensure!(
        out.status.success(),
        "restic snapshots failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    ensure!(
        snaps.len() == 1,
        "{} holds {} snapshots, wanted 1",
        repo.display(),
        snaps.len()
    );
    let id = snaps[0]["short_id"].as_str().context("snapshot id")?;
    let out = Command::new(bin)
        .arg(format!("--cache-dir={}", cache.display()))
        .args(["ls", "--json", id])
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", pw)
        .stdin(Stdio::null())
        .output()
        .context("running restic ls")?;
    ensure!(out.status.success(), "restic ls failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"file\""))
        .count() as u64)
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> Result<Value> {
    let r = c.post(&url).json(&body).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    checks::expect_success(&format!("POST {url}"), status, &text)?;
    Ok(serde_json::from_str(&text)?)
}

/// Polls the job until it ends; its final object.
async fn wait_job(c: &reqwest::Client, server: &Server, id: i64, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let r = c
            .get(format!("{}/api/jobs/{id}", server.url))
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        checks::expect_success("GET /api/jobs/{id}", status, &text)?;
        let j: Value = serde_json::from_str(&text)?;
        if matches!(
            j["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(j);
        }
        if Instant::now() > deadline {
            bail!("job {id} did not end within {limit:?}: {j}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job_id(v: &Value) -> Result<i64> {
    v["job_ids"][0]
        .as_i64()
        .with_context(|| format!("no job id in {v}"))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = ctx.opts.runs_or(5);
    let restic_bin = which(&ctx.opts.restic)?;
    let dir = ctx.dir("backup")?;
    let spec = TreeSpec {
        files: ctx.opts.backup_files,
        bytes: ctx.opts.backup_mb * 1_000_000,
    };
    let tree = dir.join("tree");
    let t = Instant::now();
    write_tree(&tree, &spec)?;
    say!(
        "backup: wrote {} files, {} MB in {:.1} s",
        spec.files,
        spec.bytes / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let tree_str = tree.to_str().context("scratch path is not UTF-8")?;
    let password = "bench-repository-password";
    let pw = dir.join("password");
    std::fs::write(&pw, password)?;
    let cache = dir.join("cli-cache");

    // Warm-up, untimed: the tree into the page cache, restic off the disk.
    let warm = dir.join("repo-warmup");
    restic(&restic_bin, &warm, &pw, &cache, &["init"])?;
    restic(
        &restic_bin,
        &warm,
        &pw,
        &cache,
        &["backup", "--json", "--", tree_str],
    )?;
    std::fs::remove_dir_all(&warm)?;

    let db = seed::open(&dir, None).await?;
    let hosts = seed::hosts(&db, 1, |_| String::new()).await?;
    db.close().await?;
    let host = &hosts[0];
    let server = Server::start(&ctx.bins, &dir, None, &[]).await?;
    let admin = server.admin().await?;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let agent_bin = bin_dir.join("restic-manager-agent");
    std::fs::copy(&ctx.bins.agent, &agent_bin)?;
    let config = dir.join("agent.toml");
    AgentConfig {
        server_url: server.url.clone(),
        host_id: host.host_id,
        secret: host.secret.clone(),
        restic_path: Some(restic_bin.clone()),
        restic_cache_dir: Some(dir.join("agent-cache")),
    }
    .save(&config)?;
    let mut agent = procs::agent(&agent_bin, &config, &dir)?;
    super::footprint::wait_online(&server, &admin, &mut agent, host.host_id, &ctx.version).await?;

    let (mut ours, mut bare, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let limit = Duration::from_secs(1800);
    for run in 0..runs {
        // Bare restic.
        let repo = dir.join(format!("repo-bare-{run}"));
        restic(&restic_bin, &repo, &pw, &cache, &["init"])?;
        let t = Instant::now();
        restic(
            &restic_bin,
            &repo,
            &pw,
            &cache,
            &["backup", "--json", "--host=bench-00000", "--", tree_str],
        )?;
        let b = t.elapsed().as_secs_f64();
        let files = snapshot_files(&restic_bin, &repo, &pw, &cache)?;
        ensure!(
            files == spec.files as u64,
            "bare restic's snapshot holds {files} files, wanted {}",
            spec.files
        );
        std::fs::remove_dir_all(&repo)?;

        // The same through the server and the agent.
        let repo = dir.join(format!("repo-agent-{run}"));
        let r = post(
            &admin,
            format!("{}/api/repositories", server.url),
            json!({"name": format!("bench-{run}"), "url": repo, "password": password}),
        )
        .await?;
        let repo_id = r["id"].as_i64().context("repository id")?;
        let init = post(
            &admin,
            format!("{}/api/repositories/{repo_id}/jobs", server.url),
            json!({"kind": "init", "host_id": host.host_id}),
        )
        .await?;
        let j = wait_job(&admin, &server, job_id(&init)?, limit).await?;
        ensure!(j["status"] == "succeeded", "init failed: {j}");
        let plan = post(
            &admin,
            format!("{}/api/plans", server.url),
            json!({
                "name": format!("bench-{run}"),
                "repository_id": repo_id,
                "paths": [tree_str],
                // Never due while the benchmark runs: only "run now" starts it.
                "schedule": "0 0 1 1 *",
                "hosts": [host.host_id],
                "forget_after_backup": false,
            }),
        )
        .await?;
        let plan_id = plan["id"].as_i64().context("plan id")?;
        let meter = CpuMeter::start(agent.pid())?;
        let t = Instant::now();
        let started = post(
            &admin,
            format!("{}/api/plans/{plan_id}/run", server.url),
            json!({"host_id": host.host_id}),
        )
        .await?;
        let j = wait_job(&admin, &server, job_id(&started)?, limit).await?;
        let ours_secs = t.elapsed().as_secs_f64();
        let agent_cpu = meter.percent_of_core()?;
        agent.check_alive()?;
        ensure!(j["status"] == "succeeded", "the backup job failed: {j}");
        let files = snapshot_files(&restic_bin, &repo, &pw, &cache)?;
        ensure!(
            files == spec.files as u64,
            "the agent's snapshot holds {files} files, wanted {}",
            spec.files
        );
        std::fs::remove_dir_all(&repo)?;
        say!(
            "backup run {}/{runs}: bare restic {b:.2} s, through the agent {ours_secs:.2} s (agent CPU {agent_cpu:.2}% of a core)",
            run + 1
        );
        bare.push(b);
        ours.push(ours_secs);
        cpu.push(agent_cpu);
    }
    agent.kill();
    let section = format!(
        "9. backup, {} files / {} MB",
        spec.files,
        spec.bytes / 1_000_000
    );
    Ok(vec![
        Row::new(&section, "wall time through server + agent", "s", ours)
            .baseline("bare restic backup", bare)
            .goal(Goal::RatioAtMost(1.05))
            .note("POST …/run to the job's end as the API reports it"),
        Row::new(&section, "agent CPU while restic runs", "% of a core", cpu)
            .goal(Goal::Below(2.0))
            .note("the agent process only; restic is its own process"),
    ])
}

/// `name` as a path: itself if it has a slash, else looked up on PATH.
fn which(name: &Path) -> Result<PathBuf> {
    if name.components().count() > 1 {
        ensure!(name.is_file(), "{} does not exist", name.display());
        return Ok(name.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{} is not on PATH: install restic (apt-get install restic) or pass --restic PATH",
                name.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_has_the_asked_files_and_bytes() {
        let spec = TreeSpec {
            files: 20_000,
            bytes: 1_000_000_000,
        };
        let sizes = spec.sizes();
        assert_eq!(sizes.len(), 20_000);
        assert_eq!(sizes.iter().sum::<u64>(), 1_000_000_000);
        assert_eq!(sizes, spec.sizes(), "deterministic");
        assert!(
            sizes[..19_800]
                .iter()
                .all(|&s| (1024..16 * 1024).contains(&s))
        );
    }

    #[test]
    fn a_small_tree_is_written_as_specified() {
        let d = tempfile::tempdir().unwrap();
        let spec = TreeSpec {
            files: 250,
            bytes: 3_000_000,
        };
        write_tree(d.path(), &spec).unwrap();
        let mut n = 0;
        let mut total = 0;
        for e in walk(d.path()) {
            n += 1;
            total += std::fs::metadata(e).unwrap().len();
        }
        assert_eq!((n, total), (250, 3_000_000));
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
