//! Fault tests with real binaries and real restic: what a backup job ends
//! as when something breaks under it, and that nothing is lost and the next
//! run works. The README's "Failure behaviour" table lists these outcomes.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use super::{Group, Host, Server, bins, free_port};

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn restic_bin() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("restic"))
                .find(|p| p.is_file())
        })
        .expect("restic is not installed (apt-get install restic)")
}

/// A file tree with `mb` MiB of incompressible data (a fixed seed).
fn data(dir: &Path, mb: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("sub dir")).unwrap();
    std::fs::write(dir.join("sub dir/note.txt"), b"keep me\n").unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(dir.join("big.bin")).unwrap();
    for _ in 0..mb {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    dir.to_path_buf()
}

/// restic's own listing of a repository.
fn restic_snapshots(url: &str, password: &str, scratch: &Path) -> Vec<Value> {
    let pw = scratch.join("cli-password");
    std::fs::write(&pw, password).unwrap();
    let out = Command::new(restic_bin())
        .args(["snapshots", "--json", "--no-lock"])
        .env("RESTIC_REPOSITORY", url)
        .env("RESTIC_PASSWORD_FILE", &pw)
        .env("RESTIC_CACHE_DIR", scratch.join("cli-cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restic snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A server at version C with one agent that runs restic (its cache in its
/// own directory, so its restic processes can be found).
struct Lab {
    // Dropped in this order: the agent and server stop before their files go.
    host: Host,
    server: Server,
    port: u16,
    tmp: tempfile::TempDir,
}

impl Lab {
    async fn new(restic_path: Option<&str>) -> Lab {
        restic_manager::install_crypto_provider();
        let c = bins("c");
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = Server::start(&c, &tmp.path().join("data"), port).await;
        let mut host = Host::install(
            &server,
            tmp.path(),
            "fault-host",
            &c.join("restic-manager-agent"),
        )
        .await;
        host.stop();
        let cfg = host.dir.join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "restic_cache_dir = {:?}\n",
            host.dir.join("cache").display().to_string()
        ));
        if let Some(p) = restic_path {
            text.push_str(&format!("restic_path = {p:?}\n"));
        }
        std::fs::write(&cfg, text).unwrap();
        host.start();
        let id = host.id;
        server
            .until("the agent says hello", || async {
                (server.host(id).await["online"] == true).then_some(())
            })
            .await;
        Lab {
            tmp,
            server,
            host,
            port,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn cache(&self) -> String {
        self.host.dir.join("cache").display().to_string()
    }

    async fn repo(&self, url: &str, password: &str) -> i64 {
        let (st, v) = self
            .server
            .post(
                "/api/repositories",
                json!({"name": format!("r-{}", url.len()), "url": url, "password": password}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    async fn job(&self, repo: i64, kind: &str) -> Value {
        let (st, v) = self
            .server
            .post(
                &format!("/api/repositories/{repo}/jobs"),
                json!({"kind": kind, "host_id": self.host.id}),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        self.end(v["job_ids"][0].as_i64().unwrap()).await
    }

    async fn plan(&self, repo: i64, paths: &[&Path], schedule: &str) -> i64 {
        let (st, v) = self
            .server
            .post(
                "/api/plans",
                json!({
                    "name": format!("plan-{repo}-{}", schedule.len()),
                    "repository_id": repo,
                    "paths": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "schedule": schedule,
                    "hosts": [self.host.id],
                }),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    async fn run(&self, plan: i64) -> i64 {
        let (st, v) = self
            .server
            .post(&format!("/api/plans/{plan}/run"), json!({}))
            .await;
        assert_eq!(st, 202, "{v}");
        v["job_ids"][0].as_i64().unwrap()
    }

    /// Waits for the job to end (any terminal status).
    async fn end(&self, id: i64) -> Value {
        self.end_within(id, std::time::Duration::from_secs(90))
            .await
    }

    async fn end_within(&self, id: i64, limit: std::time::Duration) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let j = self.server.get(&format!("/api/jobs/{id}")).await;
            if !matches!(j["status"].as_str(), Some("queued" | "running")) {
                return j;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} did not end within {limit:?}: {j}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Waits until restic runs for this host (the job is under way).
    async fn restic_running(&self) {
        let cache = self.cache();
        self.server
            .until("restic running", || async {
                (!processes_mentioning(&cache).is_empty()).then_some(())
            })
            .await;
    }

    async fn no_restic_left(&self) {
        let cache = self.cache();
        self.server
            .until("no restic left", || async {
                processes_mentioning(&cache).is_empty().then_some(())
            })
            .await;
    }
}

/// The agent process itself (not its supervisor loop).
fn agent_pids(host: &Host) -> Vec<u32> {
    let cfg = host.dir.join("config.toml").display().to_string();
    processes_mentioning(&cfg)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).starts_with(&*host.bin().to_string_lossy()))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_agent_killed_mid_backup() {
    let lab = Lab::new(None).await;
    let url = lab.path("repo").display().to_string();
    let repo = lab.repo(&url, "pw").await;
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let src = data(&lab.path("src"), 300);
    let plan = lab.plan(repo, &[&src], "@daily").await;
    let job = lab.run(plan).await;
    lab.restic_running().await;
    for pid in agent_pids(&lab.host) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // restic dies with the agent; the supervisor starts the agent again.
    lab.no_restic_left().await;
    let j = lab.end(job).await;
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("the agent restarted during the job"),
        "{j}"
    );
    // Nothing half-written counts, and the next run works.
    assert!(restic_snapshots(&url, "pw", lab.tmp.path()).is_empty());
    let again = lab.end(lab.run(plan).await).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(restic_snapshots(&url, "pw", lab.tmp.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_killed_mid_backup() {
    let mut lab = Lab::new(None).await;
    let url = lab.path("repo").display().to_string();
    let repo = lab.repo(&url, "pw").await;
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let src = data(&lab.path("src"), 300);
    let plan = lab.plan(repo, &[&src], "@daily").await;
    let job = lab.run(plan).await;
    lab.restic_running().await;
    // SIGKILL: no shutdown, no flush.
    lab.server.kill_hard();
    let c = bins("c");
    let server = Server::start(&c, &lab.path("data"), lab.port).await;
    lab.server = server;
    let j = lab.end(job).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let snaps = restic_snapshots(&url, "pw", lab.tmp.path());
    assert_eq!(snaps.len(), 1, "one backup, not two");
    assert_eq!(snaps[0]["id"], j["result"]["snapshot_id"]);
    let jobs = lab
        .server
        .get(&format!("/api/jobs?plan_id={plan}&kind=backup"))
        .await;
    assert_eq!(
        jobs.as_array().unwrap().len(),
        1,
        "no duplicate run: {jobs}"
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_repository_filesystem_full_mid_backup() {
    let lab = Lab::new(None).await;
    let fs = Tmpfs::mount(&lab.path("small"), "24m");
    let url = lab.path("small/repo").display().to_string();
    let repo = lab.repo(&url, "pw").await;
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let src = data(&lab.path("src"), 64);
    let plan = lab.plan(repo, &[&src], "@daily").await;
    let j = lab.end(lab.run(plan).await).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_kind"], "no_space", "{j}");
    assert!(j["error"].as_str().unwrap().contains("space"), "{j}");
    lab.no_restic_left().await;
    // Room again: the next run works and the repository is sound.
    fs.resize("256m");
    let again = lab.end(lab.run(plan).await).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(lab.job(repo, "check").await["status"], "succeeded");
    assert_eq!(restic_snapshots(&url, "pw", lab.tmp.path()).len(), 1);
}

fn rclone_serve(dir: &Path, port: u16, bwlimit: Option<&str>) -> Group {
    let rclone = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rclone"))
                .find(|p| p.is_file())
        })
        .expect("rclone is not installed (apt-get install rclone)");
    let mut cmd = Command::new(rclone);
    cmd.args(["serve", "restic"]).arg(dir).args([
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--user",
        "u",
        "--pass",
        "rest-pw",
    ]);
    if let Some(b) = bwlimit {
        cmd.args(["--bwlimit", b]);
    }
    Group::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))
}

async fn wait_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rest_backend_killed_mid_backup() {
    let lab = Lab::new(None).await;
    let store = lab.path("rest");
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    // Slow enough that the backup is under way when the backend dies.
    let mut backend = rclone_serve(&store, port, Some("4M"));
    wait_port(port).await;
    let url = format!("rest:http://u:rest-pw@127.0.0.1:{port}/r");
    let repo = lab.repo(&url, "pw").await;
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let src = data(&lab.path("src"), 48);
    let plan = lab.plan(repo, &[&src], "@daily").await;
    let job = lab.run(plan).await;
    lab.restic_running().await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    backend.kill();
    let killed = std::time::Instant::now();
    // restic retries a failing backend with backoff before it gives up.
    let j = lab
        .end_within(job, std::time::Duration::from_secs(600))
        .await;
    eprintln!(
        "the backup ended {:?} after the backend died",
        killed.elapsed()
    );
    assert_eq!(j["status"], "failed", "{j}");
    assert!(!j["error"].as_str().unwrap_or("").is_empty(), "{j}");
    lab.no_restic_left().await;
    // The backend comes back: the next run works.
    let _backend = rclone_serve(&store, port, None);
    wait_port(port).await;
    let again = lab.end(lab.run(plan).await).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(restic_snapshots(&url, "pw", lab.tmp.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_restic_missing_wrong_password_and_no_repository() {
    // restic missing on the host.
    let lab = Lab::new(Some("/nonexistent/restic")).await;
    let repo = lab
        .repo(&lab.path("repo").display().to_string(), "pw")
        .await;
    let j = lab.job(repo, "init").await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_kind"], "restic_not_found", "{j}");
    assert!(j["error"].as_str().unwrap().contains("install restic"));
    drop(lab);

    let lab = Lab::new(None).await;
    let url = lab.path("repo").display().to_string();
    // A repository that does not exist.
    let repo = lab.repo(&url, "pw").await;
    let src = data(&lab.path("src"), 1);
    let plan = lab.plan(repo, &[&src], "@daily").await;
    let j = lab.end(lab.run(plan).await).await;
    assert_eq!(j["error_kind"], "repository_not_found", "{j}");
    assert!(j["error"].as_str().unwrap().contains("Init"), "{j}");
    // A wrong password.
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let r = lab
        .server
        .http
        .patch(lab.server.at(&format!("/api/repositories/{repo}")))
        .json(&json!({"password": "not-it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j = lab.end(lab.run(plan).await).await;
    assert_eq!(j["error_kind"], "wrong_password", "{j}");
    assert!(j["error"].as_str().unwrap().contains("password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_backup_due_while_the_last_still_runs_is_skipped() {
    let lab = Lab::new(None).await;
    let store = lab.path("rest");
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    // A slow backend: the backup outlasts the 10 s schedule.
    let _backend = rclone_serve(&store, port, Some("2M"));
    wait_port(port).await;
    let url = format!("rest:http://u:rest-pw@127.0.0.1:{port}/r");
    let repo = lab.repo(&url, "pw").await;
    assert_eq!(lab.job(repo, "init").await["status"], "succeeded");
    let src = data(&lab.path("src"), 48);
    let plan = lab.plan(repo, &[&src], "@every 10s").await;
    let skipped = lab
        .server
        .until("a due run skipped while the first runs", || async {
            let jobs = lab
                .server
                .get(&format!(
                    "/api/jobs?plan_id={plan}&kind=backup&status=skipped"
                ))
                .await;
            jobs.as_array().and_then(|a| a.first().cloned())
        })
        .await;
    assert!(
        skipped["error"]
            .as_str()
            .unwrap()
            .contains("previous run still running"),
        "{skipped}"
    );
    let running = lab
        .server
        .get(&format!(
            "/api/jobs?plan_id={plan}&kind=backup&status=running"
        ))
        .await;
    assert_eq!(running.as_array().unwrap().len(), 1, "{running}");
}
