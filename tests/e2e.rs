//! End to end with real binaries: the server and agents built at different
//! versions (by `scripts/e2e.sh`), agents under a restart-on-exit supervisor
//! loop in temp dirs, real downloads and binary swaps. The plan's smoke
//! steps: update one host, a tampered staged binary, an offline host, then a
//! rolling fleet update, a halted one and a cancelled one.
//! Built only with `--features e2e-tests`; `RM_E2E_DIR` must hold `a/`, `b/`
//! and `c/`, each with `restic-manager` and `restic-manager-agent`.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

#[path = "e2e/faults.rs"]
mod faults;

const PASSWORD: &str = "e2e-admin-password";
const WAIT: Duration = Duration::from_secs(90);

fn bins(version: &str) -> PathBuf {
    let dir = std::env::var("RM_E2E_DIR").expect("RM_E2E_DIR is not set: run scripts/e2e.sh");
    let d = Path::new(&dir).join(version);
    assert!(
        d.join("restic-manager").is_file() && d.join("restic-manager-agent").is_file(),
        "{} lacks the binaries",
        d.display()
    );
    d
}

fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("running --version");
    let s = String::from_utf8_lossy(&out.stdout);
    let first = s.lines().next().unwrap_or("");
    first.split_whitespace().nth(1).unwrap_or("").to_string()
}

/// A child process group, killed on drop.
struct Group(Option<Child>);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(Some(
            cmd.process_group(0).spawn().expect("spawning a child"),
        ))
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            // The child leads its own process group (process_group(0)).
            let pgid = c.id();
            // libc, not /usr/bin/kill: procps-ng 4.0's kill was seen here to
            // signal every process when handed a negative id.
            let signal = |sig: libc::c_int| {
                if pgid > 1 {
                    // SAFETY: killpg only sends a signal; the group is our child's.
                    unsafe {
                        libc::killpg(pgid as libc::pid_t, sig);
                    }
                }
            };
            signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Server {
    proc: Group,
    url: String,
    data: PathBuf,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    async fn start(version_dir: &Path, data: &Path, port: u16) -> Server {
        let log = std::fs::File::create(data.with_extension(format!("server-{port}.log"))).unwrap();
        let proc = Group::spawn(
            Command::new(version_dir.join("restic-manager"))
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--update-timeout",
                    "30",
                    "--update-min-healthy",
                    "1",
                ])
                .arg("--data-dir")
                .arg(data)
                .env("RM_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD)
                // Chatty, so the secrets test reads everything it logs.
                .env("RUST_LOG", "info,restic_manager=debug")
                .stdout(Stdio::null())
                .stderr(log),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        let s = Server {
            proc,
            url,
            data: data.to_path_buf(),
            http,
        };
        s.until("server up", || async {
            s.http
                .get(s.at("/api/version"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
        let r = s
            .http
            .post(s.at("/api/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        s
    }

    fn at(&self, p: &str) -> String {
        format!("{}{}", self.url, p)
    }

    async fn get(&self, p: &str) -> Value {
        self.http
            .get(self.at(p))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, p: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(self.at(p)).json(&body).send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn until<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log in {}",
                self.data.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn host(&self, id: i64) -> Value {
        self.get(&format!("/api/hosts/{id}")).await
    }

    async fn online_at(&self, id: i64, version: &str) {
        self.until(&format!("host {id} online at {version}"), || async {
            let h = self.host(id).await;
            (h["online"] == true && h["agent_version"] == version).then_some(())
        })
        .await
    }

    async fn job_done(&self, id: i64) -> Value {
        self.until(&format!("job {id} to end"), || async {
            let j = self.get(&format!("/api/jobs/{id}")).await;
            matches!(j["status"].as_str(), Some("succeeded" | "failed")).then_some(j)
        })
        .await
    }

    async fn stop(mut self) {
        self.proc.kill();
    }

    /// SIGKILL: no shutdown, no flush (a crash or an OOM kill).
    fn kill_hard(&mut self) {
        if let Some(mut c) = self.proc.0.take() {
            // SAFETY: killpg only sends a signal; the group is our child's.
            unsafe {
                libc::killpg(c.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// An agent installed in its own directory, run by a supervisor loop that
/// restarts it whenever it exits (as systemd's Restart=always would).
struct Host {
    id: i64,
    dir: PathBuf,
    supervisor: Group,
}

impl Host {
    fn bin(&self) -> PathBuf {
        self.dir.join("bin/restic-manager-agent")
    }

    async fn install(server: &Server, root: &Path, name: &str, agent: &Path) -> Host {
        let (st, v) = server.post("/api/hosts", json!({"name": name})).await;
        assert_eq!(st, 201, "{v}");
        let id = v["id"].as_i64().unwrap();
        let token = v["enrollment_token"].as_str().unwrap().to_string();
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let bin = dir.join("bin/restic-manager-agent");
        std::fs::copy(agent, &bin).unwrap();
        let cfg = dir.join("config.toml");
        let out = Command::new(&bin)
            .args([
                "enroll",
                "--server",
                &server.url,
                "--token",
                &token,
                "--hostname",
                name,
            ])
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut h = Host {
            id,
            dir,
            supervisor: Group(None),
        };
        h.start();
        h
    }

    fn start(&mut self) {
        let script = format!(
            "while [ ! -e '{stop}' ]; do RUST_LOG=debug '{bin}' run --config '{cfg}' >>'{log}' 2>&1; sleep 0.3; done",
            stop = self.dir.join("stop").display(),
            bin = self.bin().display(),
            cfg = self.dir.join("config.toml").display(),
            log = self.dir.join("agent.log").display(),
        );
        let _ = std::fs::remove_file(self.dir.join("stop"));
        self.supervisor = Group::spawn(
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
    }

    fn stop(&mut self) {
        std::fs::write(self.dir.join("stop"), "").unwrap();
        self.supervisor.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_update_one_host_then_the_fleet() {
    restic_manager::install_crypto_provider();
    let (a, b, c) = (bins("a"), bins("b"), bins("c"));
    let (va, vb, vc) = (
        version_of(&a.join("restic-manager-agent")),
        version_of(&b.join("restic-manager-agent")),
        version_of(&c.join("restic-manager-agent")),
    );
    assert!(
        va != vb && vb != vc && va != vc,
        "three distinct versions: {va} {vb} {vc}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();

    // ---- Per host, server at B (its sibling B agent is staged at start).
    let server = Server::start(&b, &data, port).await;
    assert_eq!(server.get("/api/version").await["version"], vb);
    let mut h1 = Host::install(
        &server,
        tmp.path(),
        "e2e-one",
        &a.join("restic-manager-agent"),
    )
    .await;
    server.online_at(h1.id, &va).await;
    let h = server.host(h1.id).await;
    assert_eq!(h["update_available"], true);
    let dash = server
        .http
        .get(server.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dash.contains("hosts-behind-tile") && dash.contains(&format!("out of date · {va} → {vb}"))
    );

    let (st, v) = server
        .post(&format!("/api/hosts/{}/update", h1.id), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let job = server.job_done(v["job_id"].as_i64().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    server.online_at(h1.id, &vb).await;
    assert_eq!(server.host(h1.id).await["update_available"], false);
    let dash = server
        .http
        .get(server.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !dash.contains("hosts-behind-tile"),
        "no host behind any more"
    );
    assert_eq!(version_of(&h1.bin()), vb);
    assert_eq!(
        version_of(&h1.bin().with_extension("old")),
        va,
        ".old holds the previous agent"
    );
    let logs: Value = server.get(&format!("/api/jobs/{}/logs", job["id"])).await;
    assert!(
        logs.as_array().unwrap().len() >= 5,
        "the agent's steps are in the job log: {logs}"
    );

    // A tampered staged binary: refused by the agent, which keeps running.
    let mut h2 = Host::install(
        &server,
        tmp.path(),
        "e2e-two",
        &a.join("restic-manager-agent"),
    )
    .await;
    server.online_at(h2.id, &va).await;
    let staged = data.join("agent-binaries/restic-manager-agent-linux-x86_64");
    let good = std::fs::read(&staged).unwrap();
    // Same size, different bytes: only the agent's checksum can tell.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&staged, &bad).unwrap();
    let (st, v) = server
        .post(&format!("/api/hosts/{}/update", h2.id), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let job = server.job_done(v["job_id"].as_i64().unwrap()).await;
    assert_eq!(job["status"], "failed");
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("larger than") || err.contains("checksum"),
        "{err}"
    );
    std::fs::write(&staged, &good).unwrap();
    server.online_at(h2.id, &va).await;
    assert_eq!(
        version_of(&h2.bin()),
        va,
        "the running agent was left alone"
    );
    assert!(
        !h2.bin().with_extension("new").exists(),
        "no .new left behind"
    );

    // An offline host is refused.
    h2.stop();
    server
        .until("host 2 offline", || async {
            (server.host(h2.id).await["online"] == false).then_some(())
        })
        .await;
    let (st, v) = server
        .post(&format!("/api/hosts/{}/update", h2.id), json!({}))
        .await;
    assert_eq!((st, v["error"].as_str()), (409, Some("host_offline")));
    h2.start();
    server.online_at(h2.id, &va).await;

    // ---- Fleet: three more agents at A; the fleet update takes all four behind.
    let mut fleet = vec![h2];
    for n in ["e2e-f1", "e2e-f2", "e2e-f3"] {
        let h = Host::install(&server, tmp.path(), n, &a.join("restic-manager-agent")).await;
        server.online_at(h.id, &va).await;
        fleet.push(h);
    }
    let (st, v) = server
        .post("/api/fleet/update", json!({"confirm_count": 4}))
        .await;
    assert_eq!(st, 200, "{v}");
    let run_id = v["fleet_update_id"].as_i64().unwrap();
    let run = server
        .until("fleet update to end", || async {
            let r = server.get(&format!("/api/fleet-updates/{run_id}")).await;
            (r["fleet_update"]["status"] != "running").then_some(r)
        })
        .await;
    assert_eq!(run["fleet_update"]["status"], "completed", "{run}");
    for h in &fleet {
        server.online_at(h.id, &vb).await;
    }
    server.stop().await;

    // ---- A fresh version C: restart the server at C on the same data
    // directory; it stages its own sibling agent (B's is staged), so the
    // fleet update below needs no `agent-binary add`.
    let server = Server::start(&c, &data, port).await;
    for h in fleet.iter().chain([&h1]) {
        server.online_at(h.id, &vb).await;
    }
    // Halt: the second host in the run's order is stopped right after the start.
    let (st, v) = server
        .post("/api/fleet/update", json!({"confirm_count": 5}))
        .await;
    assert_eq!(st, 200, "{v}");
    let run_id = v["fleet_update_id"].as_i64().unwrap();
    let r = server.get(&format!("/api/fleet-updates/{run_id}")).await;
    let second = r["hosts"][1]["host_id"].as_i64().unwrap();
    let victim = fleet
        .iter_mut()
        .chain([&mut h1])
        .find(|h| h.id == second)
        .unwrap();
    victim.stop();
    let run = server
        .until("fleet update to halt", || async {
            let r = server.get(&format!("/api/fleet-updates/{run_id}")).await;
            (r["fleet_update"]["status"] != "running").then_some(r)
        })
        .await;
    assert_eq!(run["fleet_update"]["status"], "halted", "{run}");
    let st: Vec<&str> = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(st[1], "failed", "{run}");
    assert_eq!(st[2], "pending", "the next host stays pending: {run}");
    let alerts = server.get("/api/alerts?state=active").await;
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "fleet_update_halted"),
        "{alerts}"
    );

    // Cancel mid-run: bring the host back, start again, cancel at once.
    let victim = fleet
        .iter_mut()
        .chain([&mut h1])
        .find(|h| h.id == second)
        .unwrap();
    victim.start();
    server.online_at(second, &vb).await;
    let (st, v) = server.post("/api/fleet/update", json!({})).await;
    assert_eq!(st, 200, "{v}");
    let run_id = v["fleet_update_id"].as_i64().unwrap();
    let (st, _) = server
        .post(&format!("/api/fleet-updates/{run_id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200);
    let run = server
        .until(
            "the current host of the cancelled run to finish",
            || async {
                let r = server.get(&format!("/api/fleet-updates/{run_id}")).await;
                let busy = r["hosts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["status"] == "running");
                (!busy).then_some(r)
            },
        )
        .await;
    assert_eq!(run["fleet_update"]["status"], "cancelled");
    let started = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["job_id"].is_i64())
        .count();
    assert!(
        started <= 1,
        "at most the host in flight was updated after the cancel: {run}"
    );
    let pending = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["status"] == "pending")
        .count();
    assert!(pending >= 1, "{run}");

    for h in fleet.iter_mut().chain([&mut h1]) {
        h.stop();
    }
    server.stop().await;
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p);
        }
    }
    hits
}

/// Real server and agent binaries run restic on a repository, with debug
/// logging on both sides: its password and env value end up in no log,
/// no database file and no agent file, only sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_run_restic_and_never_write_a_repository_secret_in_clear() {
    restic_manager::install_crypto_provider();
    let c = bins("c");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&c, &data, free_port()).await;
    let mut host = Host::install(
        &server,
        tmp.path(),
        "e2e-restic",
        &c.join("restic-manager-agent"),
    )
    .await;
    // The agent's restic cache under its own directory.
    host.stop();
    let cfg = host.dir.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "restic_cache_dir = {:?}\n",
        host.dir.join("cache").display().to_string()
    ));
    std::fs::write(&cfg, text).unwrap();
    host.start();
    server
        .until("restic reported", || async {
            let h = server.host(host.id).await;
            (h["online"] == true && h["restic_version"].is_string()).then_some(())
        })
        .await;

    let secret_pw = "e2e-repo-password-7c41";
    let secret_env = "e2e-env-value-39f2";
    let repo_path = tmp.path().join("repo");
    let (st, v) = server
        .post(
            "/api/repositories",
            json!({
                "name": "e2e",
                "url": repo_path.display().to_string(),
                "password": secret_pw,
                "env": {"E2E_TOKEN": secret_env},
            }),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let repo = v["id"].as_i64().unwrap();
    for kind in ["init", "check", "snapshots", "stats"] {
        let (st, v) = server
            .post(
                &format!("/api/repositories/{repo}/jobs"),
                json!({"kind": kind, "host_id": host.id}),
            )
            .await;
        assert_eq!(st, 202, "{kind}: {v}");
        let id = v["job_ids"][0].as_i64().unwrap();
        let j = server.job_done(id).await;
        assert_eq!(j["status"], "succeeded", "{kind}: {j}");
    }
    assert!(
        repo_path.join("config").is_file(),
        "restic made the repository"
    );
    host.stop();
    server.stop().await;
    for secret in [secret_pw, secret_env] {
        let hits = files_containing(tmp.path(), secret.as_bytes());
        assert!(hits.is_empty(), "{secret} in clear in {hits:?}");
    }
    // The logs did record the runs (so an empty log cannot pass this test).
    let agent_log = std::fs::read_to_string(host.dir.join("agent.log")).unwrap();
    assert!(
        agent_log.contains("restic"),
        "the agent logged nothing about restic"
    );
}
