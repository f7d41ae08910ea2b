//! Snapshots, browsing and restore through the real server, real agents and
//! real restic: one directory per listing, a restore compared file by file
//! (sha256) with its source, every refusal with its status and nothing
//! restored, a shared repository's snapshot restored onto the other host,
//! and the agent being offline or silent.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use agent::{
    client::{CommandHandler, FrameSender, HelloStatus},
    wire::Envelope,
};
use restic_manager::{
    routes,
    store::{
        self,
        snapshots::{NewSnapshot, Snapshot},
        users::Role,
    },
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{sim::agent_options, *};
use crate::restic::{Api, Lab, backup, restic_bin, which};

/// Every regular file below `root`, by path relative to it, with its sha256.
fn hashes(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let digest = Sha256::digest(std::fs::read(&p).unwrap());
                out.insert(rel, hex::encode(digest));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where restic puts `source` when restoring into `target`.
fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// Names of the entries of one listing.
fn names(ls: &Value) -> Vec<String> {
    let mut n: Vec<String> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// An agent up with real restic, a local repository initialised and one
/// backup of `lab.data("data")`; returns (agent, host, repo, snapshot, data).
async fn local_setup(
    lab: &Lab,
    app: &TestApp,
    api: &Api<'_>,
) -> (agent::client::AgentHandle, i64, i64, String, PathBuf) {
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let host = cfg.host_id;
    eventually("restic version reported", || async {
        app.host_json(host).await["restic_version"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let repo_path = lab.path("repo");
    let repo = api
        .repo("local", repo_path.to_str().unwrap(), "local-pw-1")
        .await;
    let init = api.job(repo, "init", host).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let data = lab.data("data", 0);
    let b = backup(app, repo, host, &[&data]).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(b).await);
    let snap = j["result"]["snapshot_id"].as_str().unwrap().to_string();
    (agent, host, repo, snap, data)
}

async fn ls(c: &reqwest::Client, app: &TestApp, url: &str) -> (u16, Value) {
    let r = c.get(app.at(url)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn browse_lists_one_directory_and_a_restore_matches_its_source_file_by_file() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let (agent, host, repo, snap, data) = local_setup(&lab, &app, &api).await;
    let operator = app.as_role(Role::Operator).await;
    let viewer = app.as_role(Role::Viewer).await;

    // The index, through the API (viewers may read it).
    let r = viewer
        .get(app.at(&format!("{}?host_id={host}", routes::API_SNAPSHOTS)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let s = &list[0];
    assert_eq!(s["snapshot_id"], snap);
    assert_eq!(s["short_id"], &snap[..8]);
    assert_eq!(s["repository_id"], repo);
    assert_eq!(s["host_id"], host);
    assert_eq!(s["plan_id"], 0);
    assert_eq!(s["hostname"], "web-1");
    assert_eq!(s["paths"], json!([data.to_str().unwrap()]));
    assert_eq!(s["tags"], json!(["rm-plan:0"]));
    assert_eq!(s["files_new"], 3);
    assert_eq!(s["files_changed"], 0);
    assert!(s["data_added"].as_i64().unwrap() > 0);
    assert!(s["total_bytes_processed"].as_i64().unwrap() > 4096);
    assert!(s["time"].as_str().unwrap().ends_with('Z'));
    let other: Value = api
        .get(&format!(
            "{}?repository_id={}",
            routes::API_SNAPSHOTS,
            repo + 1
        ))
        .await;
    assert_eq!(other, json!([]));

    // Browse: one directory's direct children only, names with a space and
    // non-ASCII letters round-trip through the URL.
    let d = data.to_str().unwrap();
    let (st, root) = ls(&operator, &app, &routes::api_snapshot_ls(repo, &snap, d)).await;
    assert_eq!(st, 200, "{root}");
    assert_eq!(root["path"], d);
    assert_eq!(names(&root), ["hello.txt", "sub dir"]);
    let hello = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "hello.txt")
        .unwrap();
    assert_eq!(hello["type"], "file");
    assert_eq!(hello["size"], 13);
    assert!(hello["mtime"].is_string());
    let sub = format!("{d}/sub dir");
    let (st, listing) = ls(&operator, &app, &routes::api_snapshot_ls(repo, &snap, &sub)).await;
    assert_eq!(st, 200, "{listing}");
    assert_eq!(names(&listing), ["with space.txt", "ünï"]);
    let (_, deep) = ls(
        &operator,
        &app,
        &routes::api_snapshot_ls(repo, &snap[..8], &format!("{sub}/ünï/")),
    )
    .await;
    assert_eq!(deep["path"], format!("{sub}/ünï"));
    assert_eq!(names(&deep), ["naïve.bin"]);

    // Browse refusals.
    let (st, body) = ls(
        &operator,
        &app,
        &routes::api_snapshot_ls(repo, &snap, "relative/dir"),
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_path")));
    let (st, body) = ls(
        &operator,
        &app,
        &routes::api_snapshot_ls(repo, "deadbeef", "/"),
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("snapshot_not_found"))
    );
    let (st, body) = ls(
        &operator,
        &app,
        &routes::api_snapshot_ls(repo + 9, &snap, "/"),
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("repository_not_found"))
    );
    let (st, _) = ls(&viewer, &app, &routes::api_snapshot_ls(repo, &snap, d)).await;
    assert_eq!(st, 403);

    // An operator restores the whole snapshot into a new directory.
    let target = lab.path("restored all");
    let r = operator
        .post(app.at(routes::API_RESTORES))
        .json(&json!({
            "repository_id": repo,
            "snapshot_id": snap,
            "host_id": host,
            "target": target.to_str().unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job_id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    let j = api.finished(job_id).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", api.log(job_id).await);
    assert_eq!(j["kind"], "restore");
    assert_eq!(j["host_id"], host);
    assert_eq!(j["result"]["files_restored"], 3, "{j}");
    assert!(j["result"]["bytes_restored"].as_u64().unwrap() >= 4096 + 13 + 11);
    let source = hashes(&data);
    assert_eq!(source.len(), 3);
    assert!(source.contains_key("sub dir/with space.txt"));
    assert!(source.contains_key("sub dir/ünï/naïve.bin"));
    assert_eq!(hashes(&restored(&target, &data)), source);

    // Selected paths only: one file with a space, one folder with a
    // non-ASCII name; nothing else.
    let picked = lab.path("restored-picked");
    let r = operator
        .post(app.at(routes::API_RESTORES))
        .json(&json!({
            "repository_id": repo,
            "snapshot_id": &snap[..8],
            "host_id": host,
            "target": picked.to_str().unwrap(),
            "include": [format!("{sub}/with space.txt"), format!("{sub}/ünï")],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job_id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    let j = api.finished(job_id).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(job_id).await);
    let got = hashes(&restored(&picked, &data));
    let want: BTreeMap<_, _> = source
        .iter()
        .filter(|(k, _)| k.starts_with("sub dir/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want);

    // Each restore wrote an audit row naming what and where.
    let audit = app
        .query("SELECT details FROM audit_log WHERE action = 'restore.create' ORDER BY id")
        .await;
    assert_eq!(audit.len(), 2);
    let first: Value = serde_json::from_str(audit[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(first["target"], target.to_str().unwrap());
    assert_eq!(first["snapshot_id"], snap);
    assert_eq!(first["in_place"], false);

    // The host page lists the snapshot with a Restore button for operators
    // (not viewers); the panel browses with URL-encoded folder links.
    let page = Page::from(
        operator
            .get(app.at(&routes::host(host)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.texts("[data-testid=host-snapshot-row]").len(), 1);
    assert!(
        page.one("[data-testid=host-snapshot-row]")
            .contains(&snap[..8])
    );
    assert!(page.has("[data-testid=restore-snapshot]"));
    let page = Page::from(
        viewer
            .get(app.at(&routes::host(host)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.texts("[data-testid=host-snapshot-row]").len(), 1);
    assert!(!page.has("[data-testid=restore-snapshot]"));
    let panel = Page::from(
        operator
            .get(app.at(&routes::host_restore_snapshot(host, repo, &snap)))
            .header("HX-Request", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        panel
            .attr("[data-testid=restore-target]", "value")
            .as_deref(),
        Some(format!("/var/tmp/restore-{}", &snap[..8]).as_str())
    );
    let list = Page::from(
        operator
            .get(app.at(&routes::host_browse(host, repo, &snap, &sub)))
            .header("HX-Request", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.texts("[data-testid=browse-entry]").len(), 2);
    let open = list.attr("[data-testid=open-dir]", "hx-get").unwrap();
    assert!(open.contains("&path=%2F"), "{open}");
    assert!(open.ends_with("sub%20dir%2F%C3%BCn%C3%AF"), "{open}");
    let r = operator
        .get(app.at(&open))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    let deeper = Page::from(r).await;
    assert_eq!(
        deeper
            .attr("[data-testid=browse-entry]", "data-name")
            .as_deref(),
        Some("naïve.bin")
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn refused_restores_answer_with_their_status_and_restore_nothing() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let (agent, host, repo, snap, _data) = local_setup(&lab, &app, &api).await;
    let (other, _) = app.add_host_direct("web-2").await;
    let operator = app.as_role(Role::Operator).await;
    let viewer = app.as_role(Role::Viewer).await;
    let target = lab.path("never");
    let t = target.to_str().unwrap();
    let body = |extra: Value| {
        let mut b =
            json!({"repository_id": repo, "snapshot_id": snap, "host_id": host, "target": t});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(&str, &reqwest::Client, Value, u16, &str)> = vec![
        (
            "target / without in_place",
            &api.c,
            body(json!({"target": "/"})),
            400,
            "invalid_target",
        ),
        (
            "target // without in_place",
            &api.c,
            body(json!({"target": "//"})),
            400,
            "invalid_target",
        ),
        (
            "relative target",
            &api.c,
            body(json!({"target": "restore/here"})),
            400,
            "invalid_target",
        ),
        (
            "empty target",
            &api.c,
            body(json!({"target": ""})),
            400,
            "invalid_target",
        ),
        (
            "target with ..",
            &api.c,
            body(json!({"target": format!("{t}/../x")})),
            400,
            "invalid_target",
        ),
        (
            "target with a newline",
            &api.c,
            body(json!({"target": format!("{t}\nx")})),
            400,
            "invalid_target",
        ),
        (
            "wrong typed name",
            &api.c,
            body(json!({"target": "/", "in_place": true, "confirm": "web-9"})),
            400,
            "confirm_mismatch",
        ),
        (
            "in place, no name",
            &api.c,
            body(json!({"in_place": true})),
            400,
            "confirm_mismatch",
        ),
        (
            "operator in place",
            &operator,
            body(json!({"target": "/", "in_place": true, "confirm": "web-1"})),
            403,
            "forbidden",
        ),
        (
            "operator to /",
            &operator,
            body(json!({"target": "/"})),
            403,
            "forbidden",
        ),
        (
            "operator to another host",
            &operator,
            body(json!({"host_id": other})),
            403,
            "forbidden",
        ),
        (
            "local snapshot onto another host",
            &api.c,
            body(json!({"host_id": other})),
            400,
            "invalid_input",
        ),
        ("viewer", &viewer, body(json!({})), 403, "forbidden"),
        (
            "unknown snapshot",
            &api.c,
            body(json!({"snapshot_id": "feedface"})),
            404,
            "snapshot_not_found",
        ),
        (
            "relative include",
            &api.c,
            body(json!({"include": ["sub dir"]})),
            400,
            "invalid_input",
        ),
        (
            "unknown field",
            &api.c,
            body(json!({"overwrite": true})),
            400,
            "invalid_input",
        ),
    ];
    let jobs_before = app.count("jobs").await;
    let before = app.snapshot().await;
    for (what, client, b, status, code) in cases {
        let r = client
            .post(app.at(routes::API_RESTORES))
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["error"], code, "{what}: {got}");
        assert!(!got["message"].as_str().unwrap().is_empty(), "{what}");
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused restore changed state"
    );
    assert_eq!(app.count("jobs").await, jobs_before);
    assert!(!target.exists(), "a refused restore wrote files");
    assert_eq!(
        app.query_one(
            "SELECT CAST(COUNT(*) AS TEXT) FROM audit_log WHERE action = 'restore.create'"
        )
        .await
        .as_deref(),
        Some("0")
    );

    // The same in-place request, put right, is taken (with the agent
    // stopped first: it stays queued, nothing is overwritten).
    agent.shutdown().await;
    eventually("web-1 offline", || async {
        (app.host_json(host).await["online"] == false).then_some(())
    })
    .await;
    let r = api
        .post(
            routes::API_RESTORES,
            json!({"repository_id": repo, "snapshot_id": snap, "host_id": host,
                   "target": "/", "in_place": true, "confirm": "web-1"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    assert_eq!(api.status(id).await, "queued");
    let audit = app
        .query_one("SELECT details FROM audit_log WHERE action = 'restore.create'")
        .await
        .unwrap();
    assert!(audit.contains("\"in_place\":true"), "{audit}");
    let r = api.post(&routes::api_job_cancel(id), json!({})).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_shared_repository_snapshot_restores_onto_the_other_host() {
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
    let one = app.enrolled_host("web-1").await;
    let two = app.enrolled_host("web-2").await;
    let a1 = lab.agent(&one, &restic_bin());
    let a2 = lab.agent(&two, &restic_bin());
    wait_acked(&a1).await;
    wait_acked(&a2).await;
    for h in [one.host_id, two.host_id] {
        eventually("restic version reported", || async {
            app.host_json(h).await["restic_version"]
                .as_str()
                .map(|_| ())
        })
        .await;
    }
    let repo = api
        .repo(
            "shared",
            &format!("rest:http://127.0.0.1:{port}/fleet"),
            "shared-pw",
        )
        .await;
    let init = api.job(repo, "init", one.host_id).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let data = lab.data("data", 0);
    let b = backup(&app, repo, one.host_id, &[&data]).await;
    let j = api.finished(b).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(b).await);
    let snap = j["result"]["snapshot_id"].as_str().unwrap().to_string();

    // Browsing on the other host reads the same repository there.
    let url = format!(
        "{}&host_id={}",
        routes::api_snapshot_ls(repo, &snap, data.to_str().unwrap()),
        two.host_id
    );
    let r = api.c.get(app.at(&url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(names(&r.json().await.unwrap()), ["hello.txt", "sub dir"]);
    let ls_jobs = app
        .query("SELECT CAST(host_id AS TEXT) FROM jobs WHERE kind = 'ls' ORDER BY id DESC LIMIT 1")
        .await;
    assert_eq!(ls_jobs[0][0], Some(two.host_id.to_string()));

    // An operator may not restore it onto web-2; an admin may.
    let target = lab.path("on-web-2");
    let req = json!({
        "repository_id": repo,
        "snapshot_id": snap,
        "host_id": two.host_id,
        "target": target.to_str().unwrap(),
    });
    let operator = app.as_role(Role::Operator).await;
    let jobs_before = app.count("jobs").await;
    let r = operator
        .post(app.at(routes::API_RESTORES))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    assert_eq!(app.count("jobs").await, jobs_before);
    assert!(!target.exists());

    let r = api.post(routes::API_RESTORES, req).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    let j = api.finished(id).await;
    assert_eq!(j["status"], "succeeded", "{}", api.log(id).await);
    assert_eq!(j["host_id"], two.host_id);
    // web-2's agent wrote it (the in-process agents share a file system:
    // the job row says which one ran it).
    assert_eq!(hashes(&restored(&target, &data)), hashes(&data));
    let audit = app
        .query_one("SELECT details FROM audit_log WHERE action = 'restore.create'")
        .await
        .unwrap();
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["host_id"], two.host_id);
    assert_eq!(audit["snapshot_host_id"], one.host_id);
    a1.shutdown().await;
    a2.shutdown().await;
}

/// An agent that says it runs restic but never answers a restic command.
struct Silent;

impl CommandHandler for Silent {
    fn handle(&self, _frame: Envelope, _sender: FrameSender) {}

    fn hello_status(&self) -> HelloStatus {
        HelloStatus {
            restic_version: Some("0.14.0".into()),
            running_jobs: Some(vec![]),
            recent_finished: vec![],
        }
    }
}

/// A snapshot row in the index, as a backup would have left it.
async fn indexed(app: &TestApp, repo: i64, host: i64, local: bool, id: &str) {
    store::snapshots::upsert(
        app.db(),
        &NewSnapshot {
            repository_id: repo,
            scope_host_id: if local { host } else { 0 },
            snap: Snapshot {
                repository_id: repo,
                host_id: Some(host),
                plan_id: None,
                snapshot_id: id.into(),
                short_id: id[..8].into(),
                time: app.clock.now_ms(),
                hostname: "x".into(),
                paths: vec!["/srv".into()],
                tags: vec![],
                job_id: None,
                files_new: None,
                files_changed: None,
                data_added: None,
                total_bytes_processed: None,
                duration_ms: None,
            },
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn browsing_says_host_offline_and_agent_timeout() {
    let app = TestApp::spawn_with(|s| s.browse_timeout = Duration::from_millis(1500)).await;
    let api = Api::new(&app).await;
    let operator = app.as_role(Role::Operator).await;

    // Offline: a local repository needs the host that holds it; a shared
    // one needs any online host that uses it.
    let (offline, _) = app.add_host_direct("asleep").await;
    let local = api.repo("local", "/srv/restic", "pw").await;
    let shared = api.repo("shared", "rest:http://127.0.0.1:9/x", "pw").await;
    let id = "0123456789abcdef0123456789abcdef";
    indexed(&app, local, offline, true, id).await;
    indexed(&app, shared, offline, false, id).await;
    for repo in [local, shared] {
        let before = app.count("jobs").await;
        let r = operator
            .get(app.at(&routes::api_snapshot_ls(repo, id, "/srv")))
            .send()
            .await
            .unwrap();
        assert_error(r, 409, "host_offline").await;
        assert_eq!(
            app.count("jobs").await,
            before,
            "an offline browse queued a job"
        );
    }

    // Silent: the agent takes the ls and never answers.
    let cfg = app.enrolled_host("silent").await;
    let mut opts = agent_options(&cfg, "v-silent");
    opts.handler = Arc::new(Silent);
    let agent = agent::client::spawn(cfg.clone(), opts);
    wait_acked(&agent).await;
    eventually("restic facts recorded", || async {
        app.host_json(cfg.host_id).await["restic_version"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let silent_id = "fedcba9876543210fedcba9876543210";
    indexed(&app, local, cfg.host_id, true, silent_id).await;
    let started = std::time::Instant::now();
    let r = operator
        .get(app.at(&routes::api_snapshot_ls(local, silent_id, "/srv")))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_error(r, 504, "agent_timeout").await;
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // The ls job was dispatched to the agent, then ended by the server.
    let rows = app
        .query(&format!(
            "SELECT kind, status, error_kind FROM jobs WHERE host_id = {}",
            cfg.host_id
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some("ls"));
    assert_eq!(rows[0][1].as_deref(), Some("failed"));
    assert_eq!(rows[0][2].as_deref(), Some("agent_timeout"));
    agent.shutdown().await;
}
