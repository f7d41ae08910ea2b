//! Processes under test: the release server (`target/release/restic-manager`),
//! the release agent, `python3 -m http.server` and this tool's own bare
//! baseline servers. Each runs as its own process so its memory and CPU
//! can be read from /proc; each is killed when its handle drops.
use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{checks, sys};

pub const ADMIN_PASSWORD: &str = "bench-admin-password-1";

/// The binaries benchmarked, beside this tool in `target/release`.
#[derive(Clone, Debug)]
pub struct Bins {
    pub server: PathBuf,
    pub agent: PathBuf,
    /// This tool, re-run in its baseline modes.
    pub bench: PathBuf,
}

impl Bins {
    /// `server`: another server binary to benchmark (e.g. one built with
    /// symbols for `perf`), instead of the one beside this tool.
    pub fn locate(server: Option<&Path>) -> Result<Bins> {
        let bench = std::env::current_exe().context("locating this executable")?;
        // After `cargo build` replaced this executable, Linux names the
        // running (old) file "… (deleted)"; the baseline modes run the new one.
        let bench = match bench.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(p) => PathBuf::from(p),
            None => bench,
        };
        // target/release/examples/bench → target/release
        let dir = bench
            .parent()
            .and_then(Path::parent)
            .context("this tool is not in target/<profile>/examples")?
            .to_path_buf();
        let b = Bins {
            server: server
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.join("restic-manager")),
            agent: dir.join("restic-manager-agent"),
            bench,
        };
        for p in [&b.server, &b.agent] {
            if !p.is_file() {
                bail!(
                    "{} is missing: build the release binaries first (`cargo build --release --workspace --bins --examples`), or drop --no-build",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// A child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> Result<u64> {
        sys::rss_bytes(self.pid())
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited unexpectedly ({status}); end of its log:\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    Ok(Proc {
        name: name.into(),
        child,
        log,
    })
}

/// Polls `url` until it answers 200, the process dies or 60 s pass.
async fn wait_ready(p: &mut Proc, url: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        p.check_alive()?;
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer {url} within 60 s; end of its log:\n{}",
                p.name,
                tail(&p.log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server under test, on its own port and data directory.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
    pub url: String,
}

impl Server {
    /// Starts the release server with `args` (beyond data dir, database and
    /// listen address) and waits until it answers.
    pub async fn start(
        bins: &Bins,
        data_dir: &Path,
        database_url: Option<&str>,
        args: &[&str],
    ) -> Result<Server> {
        let port = free_port()?;
        let mut cmd = Command::new(&bins.server);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RM_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("RUST_LOG");
        if let Some(u) = database_url {
            cmd.arg("--database-url").arg(u);
        }
        let mut proc = spawn("restic-manager", cmd, data_dir.join("server.log"))?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&mut proc, &format!("{url}/api/version")).await?;
        Ok(Server { proc, port, url })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/agent/ws", self.port)
    }

    /// A client logged in as the bootstrap admin.
    pub async fn admin(&self) -> Result<reqwest::Client> {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let r = c
            .post(format!("{}/api/login", self.url))
            .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .context("logging in")?;
        let status = r.status().as_u16();
        checks::expect_success(
            "POST /api/login",
            status,
            &r.text().await.unwrap_or_default(),
        )?;
        Ok(c)
    }
}

/// `restic-manager agent-binary add PATH --version V` against a data dir.
pub fn stage_binary(
    bins: &Bins,
    data_dir: &Path,
    database_url: Option<&str>,
    path: &Path,
    version: &str,
) -> Result<()> {
    let mut cmd = Command::new(&bins.server);
    cmd.arg("--data-dir").arg(data_dir);
    if let Some(u) = database_url {
        cmd.arg("--database-url").arg(u);
    }
    cmd.args(["agent-binary", "add"]).arg(path).args([
        "--os",
        "linux",
        "--arch",
        "x86_64",
        "--version",
        version,
    ]);
    let out = cmd
        .output()
        .context("running `restic-manager agent-binary add`")?;
    if !out.status.success() {
        bail!(
            "`restic-manager agent-binary add` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The version the server binary reports (`restic-manager <v> (<commit>)`).
pub fn server_version(bins: &Bins) -> Result<String> {
    let out = Command::new(&bins.server)
        .arg("--version")
        .output()
        .context("running restic-manager --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected `restic-manager --version` output {text:?}"))
}

/// `python3 -m http.server`'s server and handler, with the listen backlog
/// raised from its 5 to the server's 1024 (with 5, a hundred clients
/// connecting at once time out).
const PYTHON_HTTP: &str = r#"
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
Server(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"#;

/// Python's static file server serving `dir`: the download baseline.
pub async fn python_http(dir: &Path, log_dir: &Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON_HTTP, &port.to_string()]).arg(dir);
    let mut p = spawn("python3 http.server", cmd, log_dir.join("python.log"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&mut p, &format!("{url}/")).await?;
    Ok((p, url))
}

/// This tool's bare tokio WebSocket + SSE server (see `baseline.rs`);
/// returns it with its WebSocket and SSE ports.
pub fn baseline_server(bins: &Bins, log_dir: &Path, version: &str) -> Result<(Proc, u16, u16)> {
    let mut cmd = Command::new(&bins.bench);
    cmd.args([super::BASELINE_SERVER_MODE, version]);
    let log = log_dir.join("baseline.log");
    let out = std::fs::File::create(&log)?;
    cmd.stdout(Stdio::piped()).stderr(out).stdin(Stdio::null());
    let mut child = cmd.spawn().context("starting the baseline server")?;
    let stdout = child.stdout.take().context("baseline stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the baseline server's ports")?;
    let proc = Proc {
        name: "baseline server".into(),
        child,
        log,
    };
    let mut ports = line
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (ports.next(), ports.next()) {
        (Some(ws), Some(sse)) => Ok((proc, ws, sse)),
        _ => bail!("the baseline server printed {line:?}, not two ports"),
    }
}

/// This tool as a minimal agent (see `baseline.rs`): the agent-RSS baseline.
pub fn baseline_agent(bins: &Bins, log_dir: &Path, ws_url: &str, secret: &str) -> Result<Proc> {
    let mut cmd = Command::new(&bins.bench);
    cmd.args([super::BASELINE_AGENT_MODE, ws_url])
        .env("BENCH_AGENT_SECRET", secret);
    spawn("baseline agent", cmd, log_dir.join("baseline-agent.log"))
}

/// The release agent: `restic-manager-agent run --config PATH`.
pub fn agent(bin: &Path, config: &Path, log_dir: &Path) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG");
    spawn("restic-manager-agent", cmd, log_dir.join("agent.log"))
}
