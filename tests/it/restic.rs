//! The restic core through the real thing: the server, real agents (the
//! agent library's `ResticHandler`, or the agent binary where a process
//! must die), real restic (Debian's 0.14 in CI) and a real REST backend
//! (`rclone serve restic`). Repositories, their write-only secrets,
//! repository jobs, failure classes, cancel, crashes and restarts, and the
//! concurrency rules.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use agent::{
    client::AgentHandle,
    config::AgentConfig,
    restic::{ResticHandler, ResticSettings},
};
use restic_manager::{
    restic::jobs::{Requester, enqueue},
    routes,
    store::{self, jobs::ActorKind, jobs::JobKind},
};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::common::{sim::agent_options, *};

pub(crate) const JOB_WAIT: Duration = Duration::from_secs(180);

pub(crate) fn restic_bin() -> PathBuf {
    which("restic").expect("restic is not installed: these tests need it (apt-get install restic)")
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Per test: a temp dir for repositories, data, caches and secrets.
pub(crate) struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    pub(crate) fn new() -> Lab {
        restic_bin();
        Lab {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// An in-process agent that runs real restic.
    pub(crate) fn agent(&self, cfg: &AgentConfig, restic: &Path) -> AgentHandle {
        let mut opts = agent_options(cfg, "v-restic");
        let name = format!("agent-{}", cfg.host_id);
        opts.handler = Arc::new(ResticHandler::new(ResticSettings {
            restic_path: restic.to_path_buf(),
            cache_dir: self.path(&format!("{name}/cache")),
            cancel_grace: Duration::from_secs(5),
            secrets_dir: Some(self.path(&format!("{name}/secrets"))),
        }));
        std::fs::create_dir_all(self.path(&format!("{name}/secrets"))).unwrap();
        agent::client::spawn(cfg.clone(), opts)
    }

    /// A tree of files with a space and a non-ASCII name; `big_mb` of
    /// incompressible data on top (for runs that must take a while).
    pub(crate) fn data(&self, name: &str, big_mb: usize) -> PathBuf {
        let root = self.path(name);
        std::fs::create_dir_all(root.join("sub dir/ünï")).unwrap();
        std::fs::write(root.join("hello.txt"), b"hello restic\n").unwrap();
        std::fs::write(root.join("sub dir/with space.txt"), b"spaced out\n").unwrap();
        std::fs::write(root.join("sub dir/ünï/naïve.bin"), [7u8; 4096]).unwrap();
        if big_mb > 0 {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut block = vec![0u8; 1 << 20];
            let mut f = std::fs::File::create(root.join("big.bin")).unwrap();
            for _ in 0..big_mb {
                for chunk in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                std::io::Write::write_all(&mut f, &block).unwrap();
            }
        }
        root
    }
}

/// An admin client kept for the whole test (logging in per call is slow).
pub(crate) struct Api<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) c: reqwest::Client,
}

impl<'a> Api<'a> {
    pub(crate) async fn new(app: &'a TestApp) -> Api<'a> {
        Api {
            app,
            c: app.admin().await,
        }
    }

    /// Posts JSON (the harness's clients keep no idle connection, so a POST
    /// never lands on one the server is closing).
    pub(crate) async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.c
            .post(self.app.at(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let r = self.c.get(self.app.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub(crate) async fn repo(&self, name: &str, url: &str, password: &str) -> i64 {
        let r = self
            .post(
                routes::API_REPOSITORIES,
                json!({"name": name, "url": url, "password": password}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Queues a repository job; returns its id.
    pub(crate) async fn job(&self, repo: i64, kind: &str, host: i64) -> i64 {
        let r = self
            .post(
                &routes::api_repository_jobs(repo),
                json!({"kind": kind, "host_id": host}),
            )
            .await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["job_ids"][0]
            .as_i64()
            .unwrap()
    }

    /// Waits for a job to end; returns it.
    pub(crate) async fn finished(&self, id: i64) -> Value {
        eventually_within(JOB_WAIT, &format!("job {id} ends"), || async {
            let j = self.get(&routes::api_job(id)).await;
            let s = j["status"].as_str().unwrap_or("").to_string();
            (!matches!(s.as_str(), "queued" | "running")).then_some(j)
        })
        .await
    }

    pub(crate) async fn status(&self, id: i64) -> String {
        self.get(&routes::api_job(id)).await["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) async fn log(&self, id: i64) -> String {
        let lines = self.get(&routes::api_job_logs(id)).await;
        lines
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["data"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Queues a backup job directly (plans come with the scheduler).
pub(crate) async fn backup(app: &TestApp, repo: i64, host: i64, paths: &[&Path]) -> i64 {
    let state = app.state();
    let repository = store::repositories::get(app.db(), repo).await.unwrap();
    let name = store::hosts::get(app.db(), host).await.unwrap().name;
    let options = agent::wire::ResticOptions {
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        host: Some(name),
        tags: vec!["rm-plan:0".into()],
        ..Default::default()
    };
    let who = Requester {
        kind: ActorKind::User,
        id: None,
        name: "test".into(),
    };
    enqueue(
        state,
        &who,
        &repository,
        host,
        JobKind::Backup,
        None,
        &options,
    )
    .await
    .unwrap()
    .id
}

/// restic itself, with the password in a file, against `url`.
pub(crate) fn restic_cli(
    lab: &Lab,
    url: &str,
    password: &str,
    args: &[&str],
) -> std::process::Output {
    let pw = lab.path("cli-password");
    std::fs::write(&pw, password).unwrap();
    Command::new(restic_bin())
        .args(args)
        .env("RESTIC_REPOSITORY", url)
        .env("RESTIC_PASSWORD_FILE", &pw)
        .env("RESTIC_CACHE_DIR", lab.path("cli-cache"))
        .output()
        .unwrap()
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
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

/// Processes whose command line mentions `needle` (a test's own path).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn repositories_are_write_only_and_encrypted_at_rest() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let url = "rest:http://backup:url-pass-7f3a91@127.0.0.1:9/fleet";
    let r = api
        .post(
            routes::API_REPOSITORIES,
            json!({
                "name": "offsite",
                "url": url,
                "password": "repo-pass-5d2c88",
                "env": {"AWS_SECRET_ACCESS_KEY": "env-value-a1b2c3"},
                "check_read_data_subset": "5%",
            }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    let got = api.get(&routes::api_repository(id)).await;
    assert_eq!(got["url"], "rest:http://backup:***@127.0.0.1:9/fleet");
    assert_eq!(got["local"], false);
    assert_eq!(got["password_set"], true);
    assert_eq!(got["env_keys"], json!(["AWS_SECRET_ACCESS_KEY"]));
    assert_eq!(got["maintenance_schedule"], "0 3 * * *");
    assert_eq!(got["prune"], true);
    assert_eq!(got["check_every_days"], 7);
    assert_eq!(got["check_read_data_subset"], "5%");
    let secrets = ["url-pass-7f3a91", "repo-pass-5d2c88", "env-value-a1b2c3"];
    let list = api
        .c
        .get(app.at(routes::API_REPOSITORIES))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page = api
        .c
        .get(app.at(&routes::repository(id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listing = api
        .c
        .get(app.at(routes::REPOSITORIES_PAGE))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for s in secrets {
        for (what, body) in [
            ("API", got.to_string()),
            ("list", list.clone()),
            ("page", page.clone()),
            ("listing", listing.clone()),
        ] {
            assert!(!body.contains(s), "{what} shows a secret");
        }
    }
    assert!(page.contains("backup:***@127.0.0.1"));

    // At rest: sealed in the database, the key in its own 0600 file.
    let rows = app
        .query("SELECT url_enc, password_enc, COALESCE(env_enc, ''), url_masked FROM repositories")
        .await;
    let dump = format!("{rows:?}");
    for s in secrets {
        assert!(
            !dump.contains(s),
            "the database row holds a secret in clear"
        );
    }
    assert!(dump.contains("rm1:"));
    if app.is_sqlite() {
        let hits: Vec<_> = secrets
            .iter()
            .flat_map(|s| files_containing(&app.settings.data_dir, s.as_bytes()))
            .collect();
        assert!(hits.is_empty(), "secrets in clear in {hits:?}");
    }
    let key = &app.settings.secret_key_file;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read(key).unwrap().len(), 32);

    // PATCH replaces a secret, still write-only; the audit says what changed.
    let r = api
        .c
        .patch(app.at(&routes::api_repository(id)))
        .json(&json!({"password": "new-pass-0e9d", "max_concurrent_backups": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains("new-pass-0e9d"));
    assert!(body.contains("\"max_concurrent_backups\":2"));
    let audit = format!(
        "{:?}",
        app.query("SELECT action, details FROM audit_log").await
    );
    assert!(audit.contains("repository.update") && audit.contains("password"));
    assert!(!audit.contains("new-pass-0e9d") && !audit.contains("repo-pass-5d2c88"));
    let opened =
        restic_manager::restic::repositories::open_for_agent(app.db(), &app.state().secrets, id)
            .await
            .unwrap();
    assert_eq!(opened.password, "new-pass-0e9d");
    assert_eq!(opened.url, url);
    assert_eq!(opened.env["AWS_SECRET_ACCESS_KEY"], "env-value-a1b2c3");
}

#[tokio::test]
async fn bad_repository_input_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let id = api.repo("main", "/srv/restic", "pw").await;
    let (host, _) = app.add_host_direct("web-1").await;
    let before = app.snapshot().await;
    let cases = [
        (json!({"name": "x", "url": "/srv/x"}), "password"),
        (
            json!({"name": "x", "url": "-oProxyCommand=evil", "password": "p"}),
            "url",
        ),
        (
            json!({"name": "x", "url": "/srv/x\n", "password": "p"}),
            "url",
        ),
        (json!({"name": "x", "url": "s3:", "password": "p"}), "s3:"),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p\nq"}),
            "password",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "env": {"LD_PRELOAD": "/x.so"}}),
            "env",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "env": {"RESTIC_PASSWORD_COMMAND": "sh"}}),
            "env",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "env": {"A-B": "1"}}),
            "env",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "maintenance_schedule": "61 * * * *"}),
            "maintenance_schedule",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "maintenance_host_id": 999999}),
            "maintenance_host_id",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "max_unused": "lots"}),
            "max_unused",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": "p", "surprise": 1}),
            "surprise",
        ),
        (
            json!({"name": "", "url": "/srv/x", "password": "p"}),
            "name",
        ),
        (
            json!({"name": "x", "url": "/srv/x", "password": " padded "}),
            "password",
        ),
    ];
    for (body, field) in cases {
        let r = api.post(routes::API_REPOSITORIES, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_input", "{body}");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{body}: {} does not name {field}",
            e["message"]
        );
    }
    let r = api
        .post(
            routes::API_REPOSITORIES,
            json!({"name": "main", "url": "/srv/y", "password": "p"}),
        )
        .await;
    assert_error(r, 409, "name_taken").await;
    let r = api
        .c
        .get(app.at("/api/repositories/424242"))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "repository_not_found").await;
    let r = api
        .c
        .get(app.at("/api/repositories/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = api
        .c
        .patch(app.at("/api/repositories/424242"))
        .json(&json!({"prune": false}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "repository_not_found").await;
    // Repository jobs: unknown kinds, hosts and ids.
    for (body, status, code) in [
        (
            json!({"kind": "backup", "host_id": host}),
            400,
            "invalid_input",
        ),
        (
            json!({"kind": "rm -rf", "host_id": host}),
            400,
            "invalid_input",
        ),
        (
            json!({"kind": "check", "host_id": 999999}),
            400,
            "invalid_input",
        ),
        (json!({"kind": "init"}), 400, "invalid_input"),
        (json!({"kind": "check"}), 400, "invalid_input"),
    ] {
        let r = api
            .post(&routes::api_repository_jobs(id), body.clone())
            .await;
        assert_error(r, status, code).await;
    }
    let r = api
        .post(
            "/api/repositories/424242/jobs",
            json!({"kind": "check", "host_id": host}),
        )
        .await;
    assert_error(r, 404, "repository_not_found").await;
    let after = app.snapshot().await;
    assert_eq!(before.replace('\n', ""), after.replace('\n', ""));
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test]
async fn roles_for_repository_jobs_follow_the_table() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let (host, _) = app.add_host_direct("web-1").await;
    let id = api.repo("main", "/srv/restic", "pw").await;
    let operator = app
        .as_role(restic_manager::store::users::Role::Operator)
        .await;
    let viewer = app
        .as_role(restic_manager::store::users::Role::Viewer)
        .await;
    let post = |c: &reqwest::Client, body: Value| {
        c.post(app.at(&routes::api_repository_jobs(id)))
            .json(&body)
            .send()
    };
    for kind in ["init", "check", "unlock", "snapshots", "stats"] {
        let r = post(&operator, json!({"kind": kind, "host_id": host}))
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "operator {kind}");
        let r = post(&viewer, json!({"kind": kind, "host_id": host}))
            .await
            .unwrap();
        assert_error(r, 403, "forbidden").await;
    }
    for body in [
        json!({"kind": "prune", "host_id": host}),
        json!({"kind": "forget", "host_id": host}),
        json!({"kind": "unlock", "host_id": host, "remove_all": true}),
    ] {
        let r = post(&operator, body.clone()).await.unwrap();
        assert_error(r, 403, "forbidden").await;
    }
    let r = api
        .post(
            &routes::api_repository_jobs(id),
            json!({"kind": "prune", "host_id": host}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = api
        .post(
            &routes::api_repository_jobs(id),
            json!({"kind": "unlock", "host_id": host, "remove_all": true}),
        )
        .await;
    assert_eq!(r.status(), 202);
    // A queued job (the host is offline) is cancelled at once by an operator.
    let jobs: Value = api
        .get(&format!("{}?repository_id={id}", routes::API_JOBS))
        .await;
    let first = jobs[0]["id"].as_i64().unwrap();
    assert_eq!(jobs[0]["status"], "queued");
    let r = viewer
        .post(app.at(&routes::api_job_cancel(first)))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = operator
        .post(app.at(&routes::api_job_cancel(first)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["status"], "cancelled");
    assert!(j["error"].as_str().unwrap().contains("before it started"));
    let r = operator
        .post(app.at(&routes::api_job_cancel(first)))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "already_finished").await;
    // A repository with queued jobs cannot be deleted.
    let r = api
        .c
        .delete(app.at(&routes::api_repository(id)))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "in_use").await;
}

#[tokio::test]
async fn init_backup_check_snapshots_and_stats_run_real_restic_on_a_local_repository() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let host = cfg.host_id;
    let host_json = eventually("restic version reported", || async {
        let h = app.host_json(host).await;
        h["restic_version"].as_str().is_some().then_some(h)
    })
    .await;
    assert!(
        host_json["restic_version"]
            .as_str()
            .unwrap()
            .starts_with("0.")
    );

    let repo_path = lab.path("repo");
    let password = "local-pass-90ab17";
    let repo = api
        .repo("local", repo_path.to_str().unwrap(), password)
        .await;
    assert_eq!(api.get(&routes::api_repository(repo)).await["local"], true);

    let init = api.job(repo, "init", host).await;
    let j = api.finished(init).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", api.log(init).await);
    assert_eq!(j["repository_id"], repo);
    // restic itself opens what the manager created.
    let out = restic_cli(
        &lab,
        repo_path.to_str().unwrap(),
        password,
        &["snapshots", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = lab.data("data", 0);
    let b = backup(&app, repo, host, &[&data]).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", api.log(b).await);
    let snap = j["result"]["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(j["result"]["files_new"], 3);
    assert!(j["result"]["total_bytes_processed"].as_u64().unwrap() > 4096);
    // The manager's host name and the plan tag are in restic's own listing.
    let out = restic_cli(
        &lab,
        repo_path.to_str().unwrap(),
        password,
        &["snapshots", "--json"],
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], snap);
    assert_eq!(listed[0]["hostname"], "web-1");
    assert_eq!(listed[0]["tags"], json!(["rm-plan:0"]));
    // The index has it, with the summary.
    let rows = app
        .query(&format!("SELECT snapshot_id, CAST(host_id AS TEXT), CAST(files_new AS TEXT) FROM snapshots WHERE repository_id = {repo}"))
        .await;
    assert_eq!(
        rows,
        vec![vec![
            Some(snap.clone()),
            Some(host.to_string()),
            Some("3".into())
        ]]
    );

    let c = api.job(repo, "check", host).await;
    let j = api.finished(c).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(c).await);
    assert_eq!(j["result"]["errors"], 0);
    assert!(api.get(&routes::api_repository(repo)).await["last_check_at"].is_string());

    // A snapshots job re-syncs the index from restic (a row removed by hand returns).
    app.state()
        .db
        .execute_unprepared("DELETE FROM snapshots")
        .await
        .unwrap();
    let s = api.job(repo, "snapshots", host).await;
    assert_eq!(api.finished(s).await["status"], "succeeded");
    let rows = app
        .query(&format!(
            "SELECT snapshot_id, hostname FROM snapshots WHERE repository_id = {repo}"
        ))
        .await;
    assert_eq!(rows, vec![vec![Some(snap.clone()), Some("web-1".into())]]);

    let st = api.job(repo, "stats", host).await;
    let j = api.finished(st).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(st).await);
    assert!(j["result"]["total_size"].as_u64().unwrap() > 4096);

    // The job page shows the result; the repository page lists the snapshot.
    let page = Page::from(api.c.get(app.at(&routes::job(b))).send().await.unwrap()).await;
    assert!(page.one("[data-testid=job-result]").contains(&snap[..8]));
    let page = Page::from(
        api.c
            .get(app.at(&routes::repository(repo)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.texts("[data-testid=snapshot-row]").len(), 1);

    // The password is nowhere but sealed: not in job logs, the database
    // files, the agent's cache, or a leftover password file.
    let logs = format!("{:?}", app.query("SELECT payload FROM job_logs").await);
    assert!(!logs.contains(password));
    if app.is_sqlite() {
        assert!(files_containing(&app.settings.data_dir, password.as_bytes()).is_empty());
    }
    let agent_dir = lab.path(&format!("agent-{host}"));
    assert!(files_containing(&agent_dir, password.as_bytes()).is_empty());
    let left: Vec<_> = std::fs::read_dir(agent_dir.join("secrets"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "password directories left behind: {left:?}"
    );
    agent.shutdown().await;
}

/// A backup's snapshot is written with its job's end: whoever sees the job
/// succeeded sees the snapshot (no moment where the page says succeeded and
/// the index lacks it; a server dying in between loses neither). An index
/// write the database refuses does not undo the end: the job still
/// succeeds, and a `snapshots` job brings the index back.
#[tokio::test]
async fn a_backups_snapshot_is_indexed_with_its_end_and_a_refused_index_write_keeps_the_end() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("idx-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let host = cfg.host_id;
    let repo_path = lab.path("repo");
    let repo = api.repo("idx", repo_path.to_str().unwrap(), "idx-pw").await;
    assert_eq!(
        api.finished(api.job(repo, "init", host).await).await["status"],
        "succeeded"
    );
    let data = lab.data("data", 0);
    let indexed = || async {
        api.get(&format!("{}?host_id={host}", routes::API_SNAPSHOTS))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let b = backup(&app, repo, host, &[&data]).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    // Read at once, no waiting: the end and the snapshot are one write.
    assert_eq!(
        indexed().await,
        vec![j["result"]["snapshot_id"].as_str().unwrap()]
    );

    let (refuse, allow): (&[&str], &str) = if app.is_sqlite() {
        (
            &["CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots \
               BEGIN SELECT RAISE(ABORT, 'refused'); END"],
            "DROP TRIGGER refuse_snapshot",
        )
    } else {
        (
            &[
                "CREATE FUNCTION refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'refused'; END $$",
                "CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots \
                 FOR EACH ROW EXECUTE FUNCTION refuse_snapshot()",
            ],
            "DROP TRIGGER refuse_snapshot ON snapshots",
        )
    };
    for sql in refuse {
        app.db().execute_unprepared(sql).await.unwrap();
    }
    let b2 = backup(&app, repo, host, &[&data]).await;
    let j2 = api.finished(b2).await;
    assert_eq!(j2["status"], "succeeded", "{j2}\n{}", api.log(b2).await);
    let second = j2["result"]["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(indexed().await.len(), 1, "the refused row was written");
    app.db().execute_unprepared(allow).await.unwrap();
    // The next backup is indexed again, and a listing brings back the one missed.
    let s = api.job(repo, "snapshots", host).await;
    assert_eq!(api.finished(s).await["status"], "succeeded");
    let now = indexed().await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&second));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_rest_backend_with_credentials_in_the_url_works_and_stays_masked() {
    let lab = Lab::new();
    let rclone = which("rclone").expect("rclone is not installed (apt-get install rclone)");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store_dir = lab.path("rest-store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let server = Command::new(rclone)
        .args(["serve", "restic", store_dir.to_str().unwrap(), "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--user", "rmuser", "--pass", "rest-pass-44e1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = ChildGuard::new(server);
    eventually("rclone listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let url = format!("rest:http://rmuser:rest-pass-44e1@127.0.0.1:{port}/fleet");
    let repo = api.repo("remote", &url, "remote-pass-1").await;
    let shown = api.get(&routes::api_repository(repo)).await;
    assert_eq!(
        shown["url"],
        format!("rest:http://rmuser:***@127.0.0.1:{port}/fleet")
    );
    assert_eq!(shown["local"], false);
    let init = api.job(repo, "init", cfg.host_id).await;
    assert_eq!(
        api.finished(init).await["status"],
        "succeeded",
        "{}",
        api.log(init).await
    );
    let data = lab.data("data", 0);
    let b = backup(&app, repo, cfg.host_id, &[&data]).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(b).await);
    // No host given: a shared repository runs on its maintenance host (the
    // first that used it).
    let r = api
        .post(
            &routes::api_repository_jobs(repo),
            json!({"kind": "snapshots"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let ids: Value = r.json().await.unwrap();
    let s = ids["job_ids"][0].as_i64().unwrap();
    assert_eq!(api.finished(s).await["host_id"], cfg.host_id);
    let n = app
        .query_one(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM snapshots WHERE repository_id = {repo}"
        ))
        .await;
    assert_eq!(n.as_deref(), Some("1"));
    // The same backend opened with a wrong password: classified, with advice.
    let wrong = api.repo("remote-wrong", &url, "not-the-password").await;
    let c = api.job(wrong, "check", cfg.host_id).await;
    let j = api.finished(c).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_kind"], "wrong_password", "{j}");
    for text in [api.log(b).await, api.log(c).await, j.to_string()] {
        assert!(
            !text.contains("rest-pass-44e1"),
            "the URL's password leaked: {text}"
        );
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_missing_repository_and_a_wrong_password_say_what_to_do() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("nothing-here");
    let repo = api.repo("missing", path.to_str().unwrap(), "pw").await;
    let c = api.job(repo, "check", cfg.host_id).await;
    let j = api.finished(c).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_kind"], "repository_not_found", "{j}");
    assert!(j["error"].as_str().unwrap().contains("Init"), "{j}");

    let init = api.job(repo, "init", cfg.host_id).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let twin = api
        .repo("twin", path.to_str().unwrap(), "another password")
        .await;
    let c = api.job(twin, "snapshots", cfg.host_id).await;
    let j = api.finished(c).await;
    assert_eq!(j["error_kind"], "wrong_password", "{j}");
    assert!(j["error"].as_str().unwrap().contains("password"));
    agent.shutdown().await;
}

#[tokio::test]
async fn restic_missing_and_an_old_agent_fail_at_once_with_what_to_do() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("no-restic").await;
    let agent = lab.agent(&cfg, Path::new("/nonexistent/restic"));
    wait_acked(&agent).await;
    let repo = api.repo("r", lab.path("r").to_str().unwrap(), "pw").await;
    let j = api.finished(api.job(repo, "init", cfg.host_id).await).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_kind"], "restic_not_found");
    assert!(j["error"].as_str().unwrap().contains("install restic"));
    let page = Page::from(
        api.c
            .get(app.at(&routes::host(cfg.host_id)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        page.one("[data-testid=restic-version]")
            .contains("restic not found")
    );

    // An agent from before the restic core (no running_jobs in its hello).
    let (old_cfg, old) = app.host("old").online().await;
    let j = api
        .finished(api.job(repo, "check", old_cfg.host_id).await)
        .await;
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"].as_str().unwrap().contains("update the agent"),
        "{j}"
    );
    agent.shutdown().await;
    old.shutdown().await;
}

#[tokio::test]
async fn a_stale_lock_from_a_killed_run_is_removed_and_the_job_retried() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let password = "lock-pass";
    let repo = api.repo("r", path.to_str().unwrap(), password).await;
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    // A backup killed with SIGKILL leaves its lock behind.
    let data = lab.data("data", 200);
    let pw = lab.path("pw");
    std::fs::write(&pw, password).unwrap();
    let mut child = Command::new(restic_bin())
        .args(["backup", data.to_str().unwrap()])
        .env("RESTIC_REPOSITORY", &path)
        .env("RESTIC_PASSWORD_FILE", &pw)
        .env("RESTIC_CACHE_DIR", lab.path("cli-cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // restic creates the lock file before writing it, and a lock it cannot
    // read is ignored: kill only once restic itself can read the lock, or
    // the check sees no lock at all (a flake under load).
    eventually("the killed run holds a readable lock", || async {
        std::fs::read_dir(path.join("locks"))
            .ok()?
            .flatten()
            .any(|e| {
                Command::new(restic_bin())
                    .args(["cat", "lock", "--no-lock"])
                    .arg(e.file_name())
                    .env("RESTIC_REPOSITORY", &path)
                    .env("RESTIC_PASSWORD_FILE", &pw)
                    .env("RESTIC_CACHE_DIR", lab.path("cli-cache"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::read_dir(path.join("locks"))
            .unwrap()
            .next()
            .is_some()
    );

    // check needs an exclusive lock: it fails locked, unlocks, retries.
    let c = api.job(repo, "check", cfg.host_id).await;
    let j = api.finished(c).await;
    let log = api.log(c).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{log}");
    assert!(log.to_lowercase().contains("unlock"), "{log}");
    assert!(
        std::fs::read_dir(path.join("locks"))
            .unwrap()
            .next()
            .is_none()
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_a_long_backup_and_a_prune_waits_for_it() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = api.repo("r", path.to_str().unwrap(), "pw").await;
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    let data = lab.data("data", 400);

    let b = backup(&app, repo, cfg.host_id, &[&data]).await;
    // Progress arrives while it runs (kept in memory, shown in the API).
    let p = eventually_within(JOB_WAIT, "backup progress", || async {
        let j = api.get(&routes::api_job(b)).await;
        // restic's first reports come before its scan has sized the job.
        (j["status"] == "running" && j["progress"]["total_bytes"].as_u64().unwrap_or(0) > 0)
            .then_some(j)
    })
    .await;
    assert!(p["progress"]["total_bytes"].as_u64().unwrap() > 0);
    // A prune asked for meanwhile waits: exclusive in the repository.
    let r = api
        .post(
            &routes::api_repository_jobs(repo),
            json!({"kind": "prune", "host_id": cfg.host_id}),
        )
        .await;
    let prune = r.json::<Value>().await.unwrap()["job_ids"][0]
        .as_i64()
        .unwrap();
    // A dispatch round now (whatever the background ones did) leaves it.
    restic_manager::restic::dispatch::round(app.state())
        .await
        .unwrap();
    assert_eq!(api.status(prune).await, "queued");

    let r = api
        .c
        .post(app.at(&routes::api_job_cancel(b)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j = api.finished(b).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    let cache = lab.path(&format!("agent-{}/cache", cfg.host_id));
    eventually("no restic left running", || async {
        processes_mentioning(cache.to_str().unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
    // Then the prune runs, after the backup ended.
    let j = api.finished(prune).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(prune).await);
    let backup_end = api.get(&routes::api_job(b)).await["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(j["started_at"].as_str().unwrap() >= backup_end.as_str());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_backup_survives_a_server_restart_and_its_result_lands_once() {
    let lab = Lab::new();
    let mut app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = {
        let api = Api::new(&app).await;
        let repo = api.repo("r", path.to_str().unwrap(), "pw").await;
        assert_eq!(
            api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
            "succeeded"
        );
        repo
    };
    let data = lab.data("data", 150);
    let b = backup(&app, repo, cfg.host_id, &[&data]).await;
    eventually_within(JOB_WAIT, "backup running", || async {
        let s = app
            .query_one(&format!("SELECT status FROM jobs WHERE id = {b}"))
            .await;
        (s.as_deref() == Some("running")).then_some(())
    })
    .await;
    app.restart().await;
    let api = Api::new(&app).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", api.log(b).await);
    let snap = j["result"]["snapshot_id"].as_str().unwrap().to_string();
    let out = restic_cli(&lab, path.to_str().unwrap(), "pw", &["snapshots", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "one backup, not two");
    assert_eq!(listed[0]["id"], snap);
    assert_eq!(app.count("snapshots").await, 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_killed_agent_takes_restic_with_it_and_its_job_fails_with_the_reason() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let mut cfg = app.enrolled_host("web-1").await;
    let cache = lab.path("bin-agent-cache");
    cfg.restic_path = Some(restic_bin());
    cfg.restic_cache_dir = Some(cache.clone());
    let config_path = lab.path("agent.toml");
    cfg.save(&config_path).unwrap();
    let start = || {
        ChildGuard::new(
            Command::new(agent_binary())
                .args(["run", "--config", config_path.to_str().unwrap()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = start();
    eventually("agent online", || async {
        app.host_json(cfg.host_id).await["online"]
            .as_bool()
            .unwrap_or(false)
            .then_some(())
    })
    .await;
    let path = lab.path("repo");
    let repo = api.repo("r", path.to_str().unwrap(), "pw").await;
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    let data = lab.data("data", 400);
    let b = backup(&app, repo, cfg.host_id, &[&data]).await;
    eventually_within(JOB_WAIT, "restic running under the agent", || async {
        (!processes_mentioning(cache.to_str().unwrap()).is_empty()).then_some(())
    })
    .await;
    // SIGKILL: no chance to clean up. restic dies with it.
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait_exit().await;
    eventually("restic gone with the agent", || async {
        processes_mentioning(cache.to_str().unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
    // The agent comes back (its supervisor restarts it): the job fails with why.
    let _agent = start();
    let j = api.finished(b).await;
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("the agent restarted during the job"),
        "{j}"
    );
    // And the next run works (the stale lock is handled).
    let c = api.job(repo, "check", cfg.host_id).await;
    assert_eq!(
        api.finished(c).await["status"],
        "succeeded",
        "{}",
        api.log(c).await
    );
}

#[tokio::test]
async fn a_server_without_the_key_that_sealed_its_secrets_refuses_to_start() {
    let mut app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    api.repo("main", "/srv/restic", "pw").await;
    app.stop().await;
    let key = app.settings.secret_key_file.clone();
    let kept = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = restic_manager::start_with_clock(app.settings.clone(), app.clock.clone())
        .await
        .err()
        .expect("no start without the key");
    let text = format!("{err:#}");
    assert!(
        text.contains("secret key file") && text.contains("missing"),
        "{text}"
    );
    assert!(!key.exists(), "a new key was made behind the admin's back");
    // Another key is refused too, naming both.
    std::fs::write(&key, [9u8; 32]).unwrap();
    let err = restic_manager::start_with_clock(app.settings.clone(), app.clock.clone())
        .await
        .err()
        .expect("no start with another key");
    assert!(format!("{err:#}").contains("sealed with key"));
    // The right key back: it starts and the secrets open.
    std::fs::write(&key, kept).unwrap();
    app.restart().await;
    let r = store::repositories::list(app.db(), store::Page::new(None, None))
        .await
        .unwrap();
    let opened = restic_manager::restic::repositories::open_for_agent(
        app.db(),
        &app.state().secrets,
        r[0].id,
    )
    .await
    .unwrap();
    assert_eq!(opened.password, "pw");
}

#[tokio::test]
async fn a_job_whose_agent_stays_away_is_given_up_and_frees_its_repository() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let (host, _) = app.add_host_direct("gone").await;
    let repo = api.repo("r", "rest:http://127.0.0.1:9/r", "pw").await;
    let id = api.job(repo, "check", host).await;
    // As if dispatched and started before the agent vanished.
    store::jobs::mark_dispatched(app.db(), id, app.clock.now_ms())
        .await
        .unwrap();
    store::jobs::start(app.db(), id, Some(host), app.clock.now_ms())
        .await
        .unwrap()
        .unwrap();
    let state = app.state();
    restic_manager::restic::dispatch::give_up_on_gone_agents(state)
        .await
        .unwrap();
    assert_eq!(
        api.status(id).await,
        "running",
        "a short absence is tolerated"
    );
    app.clock.advance(Duration::from_secs(2 * 3600));
    restic_manager::restic::dispatch::give_up_on_gone_agents(state)
        .await
        .unwrap();
    let j = api.get(&routes::api_job(id)).await;
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"].as_str().unwrap().contains("offline for an hour"),
        "{j}"
    );
}

#[tokio::test]
async fn queued_jobs_survive_a_restart_and_start_in_order_when_the_host_connects() {
    let lab = Lab::new();
    let mut app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;
    let path = lab.path("repo");
    let (init, check) = {
        let api = Api::new(&app).await;
        let repo = api.repo("r", path.to_str().unwrap(), "pw").await;
        (
            api.job(repo, "init", cfg.host_id).await,
            api.job(repo, "check", cfg.host_id).await,
        )
    };
    app.restart().await;
    let api = Api::new(&app).await;
    assert_eq!(api.status(init).await, "queued");
    let agent = lab.agent(&cfg, &restic_bin());
    let a = api.finished(init).await;
    let b = api.finished(check).await;
    assert_eq!(a["status"], "succeeded", "{}", api.log(init).await);
    assert_eq!(b["status"], "succeeded", "{}", api.log(check).await);
    assert!(b["started_at"].as_str().unwrap() >= a["finished_at"].as_str().unwrap());
    agent.shutdown().await;
}
