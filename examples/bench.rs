//! `just bench`: benchmarks of the release server over real sockets on
//! 127.0.0.1 — simulated agents on real WebSockets, the dashboard at 10,000
//! hosts, a rolling update, binary downloads, live logs, the agent's
//! footprint, a scheduling wave, history at scale, an agent's backup against
//! bare restic, many backups at once — each figure as median and spread over runs beside a
//! baseline measured in the same runs (see BENCHMARKS.md). It refuses to
//! print a number for work the server did not do: a missing ack, an HTTP
//! error, a short download or a lost log line ends it with an error.
//!
//! `cargo run --release --example bench -- --help`
// Module docs here wrap prose that starts with list-like text.
#![allow(clippy::doc_lazy_continuation)]
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

// The modules live in examples/bench/ (an example's root looks beside itself).
#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/checks.rs"]
mod checks;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scenarios/mod.rs"]
mod scenarios;
#[path = "bench/seed.rs"]
mod seed;
#[path = "bench/sim.rs"]
mod sim;
#[path = "bench/sse.rs"]
mod sse;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/sys.rs"]
mod sys;

/// Hidden modes: this tool re-runs itself as a baseline process.
pub const BASELINE_SERVER_MODE: &str = "__baseline-server";
pub const BASELINE_AGENT_MODE: &str = "__baseline-agent";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1: connected agents (connect time, RSS, idle CPU, reconnect storm)
    Agents,
    /// 2: dashboard latency at 10,000 hosts, SQLite and Postgres
    Dashboard,
    /// 3: rolling update overhead over 1,000 agents
    Rolling,
    /// 4: 100 concurrent downloads of a 20 MB agent binary
    Downloads,
    /// 5: live logs, 1,000 lines/s to 100 SSE viewers
    Logs,
    /// 6: agent binary size and idle RSS
    Footprint,
    /// 7: a scheduling wave: 10,000 hosts due in the same minute, splay 0 and 3600
    Wave,
    /// 8: history at scale: 1,000,000 jobs and 300,000 snapshots, SQLite and Postgres
    History,
    /// 9: a 1 GB backup through the agent against bare restic
    Backup,
    /// 10: many backups at once: 1,000 agents sending progress and logs, 10 viewers
    Backups,
}

const ALL: [Scenario; 10] = [
    Scenario::Agents,
    Scenario::Dashboard,
    Scenario::Rolling,
    Scenario::Downloads,
    Scenario::Logs,
    Scenario::Footprint,
    Scenario::Wave,
    Scenario::History,
    Scenario::Backup,
    Scenario::Backups,
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmarks restic-manager's release server over real sockets on 127.0.0.1 (see BENCHMARKS.md)"
)]
pub struct Opts {
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// Fleet sizes for the connected-agents scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub agents: Vec<usize>,
    /// Runs per figure (default: 5; 3 for 10,000 agents, the rolling
    /// update, the agent footprint, the scheduling wave and many backups).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Seconds over which idle CPU is measured with all agents connected.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Hosts in the database for the dashboard scenario (a third behind).
    #[arg(long, default_value_t = 10_000)]
    pub dashboard_hosts: usize,
    /// Requests per page per run in the dashboard scenario.
    #[arg(long, default_value_t = 200)]
    pub dashboard_requests: usize,
    /// Postgres for the dashboard scenario; the role needs CREATEDB (a
    /// fresh database is created and dropped).
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://rm_test:rm_test@127.0.0.1:5432/rm_test"
    )]
    pub pg_url: String,
    /// Dashboard on SQLite only.
    #[arg(long)]
    pub skip_postgres: bool,
    /// Agents in the rolling-update scenario.
    #[arg(long, default_value_t = 1000)]
    pub fleet: usize,
    /// Concurrent downloads.
    #[arg(long, default_value_t = 100)]
    pub downloads: usize,
    /// Size of the staged binary, MB (10^6 bytes).
    #[arg(long, default_value_t = 20)]
    pub download_mb: usize,
    /// SSE viewers of the live log.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Log lines per second the simulated agent sends.
    #[arg(long, default_value_t = 1000)]
    pub lines_per_sec: u64,
    /// Seconds of live log per run.
    #[arg(long, default_value_t = 5)]
    pub log_secs: u64,
    /// Hosts (simulated agents) in the scheduling wave.
    #[arg(long, default_value_t = 10_000)]
    pub wave_hosts: usize,
    /// Seconds between creating the wave's plan and its due minute (at
    /// least): the scheduler must have stored every host's run by then.
    #[arg(long, default_value_t = 240)]
    pub wave_lead_secs: u64,
    /// Hosts in the history scenario.
    #[arg(long, default_value_t = 10_000)]
    pub history_hosts: usize,
    /// Finished backup jobs in the history scenario (spread evenly over the hosts).
    #[arg(long, default_value_t = 1_000_000)]
    pub history_jobs: usize,
    /// Indexed snapshots in the history scenario (the newest backups of each host).
    #[arg(long, default_value_t = 300_000)]
    pub history_snapshots: usize,
    /// restic for the backup scenario (a name looked up on PATH, or a path).
    #[arg(long, default_value = "restic")]
    pub restic: PathBuf,
    /// Files in the backup scenario's generated tree.
    #[arg(long, default_value_t = 20_000)]
    pub backup_files: usize,
    /// Size of the backup scenario's generated tree, MB (10^6 bytes).
    #[arg(long, default_value_t = 1000)]
    pub backup_mb: u64,
    /// Simulated agents in the many-backups scenario, one backup each.
    #[arg(long, default_value_t = 1000)]
    pub backups_agents: usize,
    /// Seconds each of those backups runs: one `job.progress` a second and
    /// 20 `log.stream` lines a second.
    #[arg(long, default_value_t = 60)]
    pub backups_secs: u64,
    /// Viewers on one backup's job page (its live event stream), 1 to 32
    /// (they share one session).
    #[arg(long, default_value_t = 10)]
    pub backups_viewers: usize,
    /// Do not run `cargo build --release --workspace --bins --examples` first.
    #[arg(long)]
    pub no_build: bool,
    /// Benchmark this server binary instead of target/release/restic-manager
    /// (e.g. a build with symbols, to profile it with `perf`).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Where to write the results table (Markdown).
    #[arg(long, default_value = "target/bench/results.md")]
    pub out: PathBuf,
    /// Keep the scratch directory (databases, server logs).
    #[arg(long)]
    pub keep: bool,
    /// Exit with status 2 when a target is missed (default: report it).
    #[arg(long)]
    pub fail_on_miss: bool,
}

impl Opts {
    pub fn runs_or(&self, default: usize) -> usize {
        self.runs.unwrap_or(default).max(1)
    }
}

/// What every scenario needs.
pub struct Ctx {
    pub opts: Opts,
    pub bins: procs::Bins,
    /// The server's version (`restic-manager --version`).
    pub version: String,
    pub work: PathBuf,
}

impl Ctx {
    /// A new empty directory under the scratch directory.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// Progress goes to stderr; the table to stdout and the --out file.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { eprintln!("[bench] {}", format!($($t)*)) };
}

fn main() -> ExitCode {
    restic_manager::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str);
    if mode == Some(BASELINE_SERVER_MODE) || mode == Some(BASELINE_AGENT_MODE) {
        return baseline_mode(&args);
    }
    let opts = Opts::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\nbench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn baseline_mode(args: &[String]) -> ExitCode {
    let arg = args.get(2).cloned().unwrap_or_default();
    let agent = args[1] == BASELINE_AGENT_MODE;
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if agent {
        // Like restic-manager-agent.
        b.worker_threads(2);
    }
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        if agent {
            baseline::agent(arg).await
        } else {
            baseline::server(arg).await
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_release() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = env!("CARGO_MANIFEST_DIR");
    say!("building: cargo build --release --workspace --bins --examples");
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--workspace", "--bins", "--examples"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

async fn run(opts: Opts) -> Result<ExitCode> {
    if cfg!(debug_assertions) {
        bail!(
            "this is a debug build: benchmarks need `cargo run --release --example bench` (or `just bench`)"
        );
    }
    let started = Instant::now();
    let max_agents = if opts.only.is_empty() || opts.only.contains(&Scenario::Agents) {
        opts.agents.iter().copied().max().unwrap_or(0)
    } else {
        0
    }
    .max(
        if opts.only.is_empty() || opts.only.contains(&Scenario::Wave) {
            opts.wave_hosts
        } else {
            0
        },
    )
    .max(opts.fleet)
    .max(opts.viewers)
    .max(
        if opts.only.is_empty() || opts.only.contains(&Scenario::Backups) {
            opts.backups_agents + opts.backups_viewers
        } else {
            0
        },
    );
    let limit = sys::raise_nofile(max_agents as u64 + 2048)?;
    say!("open-file limit: {limit}");
    if !opts.no_build {
        build_release()?;
    }
    let bins = procs::Bins::locate(opts.server_bin.as_deref())?;
    let version = procs::server_version(&bins)?;
    let scratch = tempfile::Builder::new()
        .prefix("rm-bench-")
        .tempdir()
        .context("creating the scratch directory")?;
    let ctx = Ctx {
        opts: opts.clone(),
        bins,
        version,
        work: scratch.path().to_path_buf(),
    };
    let machine = sys::machine();
    say!("machine: {machine}");
    let mut quiet = Vec::new();
    say!(
        "server version {}; scratch {}",
        ctx.version,
        ctx.work.display()
    );

    let selected: Vec<Scenario> = if opts.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.iter()
            .copied()
            .filter(|s| opts.only.contains(s))
            .collect()
    };
    let mut rows = Vec::new();
    let mut timings = Vec::new();
    for s in &selected {
        // Other load on the machine skews every figure: say so, in the table too.
        let busy = sys::machine_busy(std::time::Duration::from_secs(1)).await?;
        if busy > 10.0 {
            say!(
                "WARNING: the machine is {busy:.0}% busy before {s:?}: other processes will skew the figures"
            );
        }
        quiet.push(format!("{s:?} {busy:.0}%"));
        let t = Instant::now();
        say!("== {s:?} ==");
        let r = match s {
            Scenario::Agents => scenarios::agents::run(&ctx).await,
            Scenario::Dashboard => scenarios::dashboard::run(&ctx).await,
            Scenario::Rolling => scenarios::rolling::run(&ctx).await,
            Scenario::Downloads => scenarios::downloads::run(&ctx).await,
            Scenario::Logs => scenarios::logs::run(&ctx).await,
            Scenario::Footprint => scenarios::footprint::run(&ctx).await,
            Scenario::Wave => scenarios::wave::run(&ctx).await,
            Scenario::History => scenarios::history::run(&ctx).await,
            Scenario::Backup => scenarios::backup::run(&ctx).await,
            Scenario::Backups => scenarios::backups::run(&ctx).await,
        }
        .with_context(|| format!("scenario {s:?}"));
        match r {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                if opts.keep {
                    let kept = scratch.keep();
                    say!("scratch directory kept: {}", kept.display());
                }
                return Err(e);
            }
        }
        timings.push(format!("{s:?} {:.0} s", t.elapsed().as_secs_f64()));
    }
    let total = started.elapsed();
    // As typed to `just bench` (which adds --no-build itself).
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--no-build")
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {machine}\n\nServer {} ({}), command: `just bench{}{}` (`./target/release/examples/bench --no-build …`), \
         took {:.0} s ({}). CPU busy (all cores, 1 s) before each scenario, from other processes: {}.\n\n",
        ctx.version,
        ctx.bins.server.display(),
        if args.is_empty() { "" } else { " " },
        args.join(" "),
        total.as_secs_f64(),
        timings.join(", "),
        quiet.join(", ")
    ));
    out.push_str(&report::markdown(&rows));
    println!("\n{out}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, &out).with_context(|| format!("writing {}", opts.out.display()))?;
    say!("results written to {}", opts.out.display());
    if opts.keep {
        let kept = scratch.keep();
        say!("scratch directory kept: {}", kept.display());
    }
    let misses = rows
        .iter()
        .filter(|r| r.verdict() == report::Verdict::Miss)
        .count();
    if misses > 0 {
        say!("{misses} target(s) missed (see the table)");
        if opts.fail_on_miss {
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` of deterministic pseudo-random data to `path`.
pub fn write_random_file(path: &Path, bytes: usize) -> Result<()> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = Vec::with_capacity(bytes);
    while buf.len() < bytes {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        buf.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    buf.truncate(bytes);
    std::fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
}

/// Bytes to MB (10^6, as the targets are read).
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses_subsets() {
        let o = Opts::try_parse_from(["bench", "--only", "agents,dashboard", "--agents", "10"])
            .unwrap();
        assert_eq!(o.only, vec![Scenario::Agents, Scenario::Dashboard]);
        assert_eq!(o.agents, vec![10]);
        assert_eq!(o.runs_or(5), 5);
        assert!(Opts::try_parse_from(["bench", "--only", "nonsense"]).is_err());
        let o = Opts::try_parse_from(["bench", "--only", "wave,history"]).unwrap();
        assert_eq!(o.only, vec![Scenario::Wave, Scenario::History]);
        assert_eq!((o.wave_hosts, o.history_jobs), (10_000, 1_000_000));
        let o =
            Opts::try_parse_from(["bench", "--only", "backups", "--backups-agents", "20"]).unwrap();
        assert_eq!(o.only, vec![Scenario::Backups]);
        assert_eq!(
            (o.backups_agents, o.backups_secs, o.backups_viewers),
            (20, 60, 10)
        );
        let o = Opts::try_parse_from(["bench", "--runs", "0"]).unwrap();
        assert_eq!(o.runs_or(5), 1, "at least one run");
    }

    #[test]
    fn random_files_have_the_asked_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_random_file(&p, 1001).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 1001);
        assert!(b.iter().any(|&x| x != b[0]));
    }
}
