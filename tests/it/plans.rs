//! Backup plans through the real thing: the server, real agents, real
//! restic (local and `rclone serve restic` repositories). Plans API and
//! validation, coverage by label, backups tagged with the plan and the
//! manager's host name in restic's own listing, live progress, retention,
//! the scheduler on its own (`@every 10s`), an offline host's run on
//! reconnect, restart catch-up, and `backup_failed`.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use restic_manager::routes;
use serde_json::{Value, json};

use crate::{
    common::*,
    restic::{Api, JOB_WAIT, Lab, restic_bin, restic_cli, which},
};

/// A shared restic REST backend (rclone), its URL, and its guard.
async fn rest_backend(lab: &Lab) -> (ChildGuard, String) {
    let rclone = which("rclone").expect("rclone is not installed (apt-get install rclone)");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = lab.path("rest-store");
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(rclone)
        .args(["serve", "restic", dir.to_str().unwrap(), "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--user", "u", "--pass", "rest-pw-71"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    eventually("rclone listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (
        guard,
        format!("rest:http://u:rest-pw-71@127.0.0.1:{port}/fleet"),
    )
}

impl Api<'_> {
    async fn plan(&self, body: Value) -> i64 {
        let r = self.post(routes::API_PLANS, body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    async fn patch(&self, path: &str, body: Value) -> reqwest::Response {
        self.c
            .patch(self.app.at(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Runs a plan now; the job ids.
    async fn run(&self, plan: i64, host: Option<i64>) -> Vec<i64> {
        let body = match host {
            Some(h) => json!({"host_id": h}),
            None => json!({}),
        };
        let r = self.post(&routes::api_plan_run(plan), body).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["job_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    async fn backups_of(&self, plan: i64) -> Vec<Value> {
        self.get(&format!("{}?plan_id={plan}&kind=backup", routes::API_JOBS))
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

fn snapshots(lab: &Lab, url: &str, pw: &str) -> Vec<Value> {
    // --no-lock: maintenance may hold the repository at that moment.
    let out = restic_cli(lab, url, pw, &["snapshots", "--json", "--no-lock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn plans_api_validates_each_field_and_reports_coverage() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let (a, _) = app.add_host_direct("web-1").await;
    let (b, _) = app.add_host_direct("web-2").await;
    let repo = api.repo("r", "/srv/rm-plans-test", "pw").await;
    let ok = json!({"name": "nightly", "repository_id": repo, "paths": ["/etc"], "schedule": "0 3 * * *"});
    for (patch, field) in [
        (json!({"schedule": "0 3 * *"}), "schedule"),
        (json!({"schedule": "@every 5s"}), "schedule"),
        (json!({"timezone": "Mars/Base"}), "timezone"),
        (json!({"paths": []}), "paths"),
        (json!({"paths": ["etc"]}), "paths"),
        (json!({"repository_id": 999}), "repository_id"),
        (json!({"hosts": [999]}), "hosts"),
        (
            json!({"retention": {"keep_last": -1}}),
            "retention.keep_last",
        ),
        (json!({"splay_secs": -1}), "splay_secs"),
    ] {
        let mut body = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = api.post(routes::API_PLANS, body).await;
        assert_eq!(r.status(), 400, "{patch}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_input");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{e}"
        );
    }
    assert_eq!(app.count("plans").await, 0);
    let mut body = ok.clone();
    body["hosts"] = json!([a]);
    body["labels"] = json!(["db"]);
    body["timezone"] = json!("Europe/Berlin");
    body["retention"] = json!({"keep_daily": 7, "keep_within": "30d"});
    let id = api.plan(body).await;
    assert_error(
        api.post(routes::API_PLANS, ok.clone()).await,
        409,
        "name_taken",
    )
    .await;

    // b gains the label: covered too, each with a next run and no job yet.
    let r = api
        .patch(&routes::api_host(b), json!({"labels": ["db", "eu"]}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["labels"],
        json!(["db", "eu"])
    );
    let p = api.get(&routes::api_plan(id)).await;
    assert_eq!(p["timezone"], "Europe/Berlin");
    assert_eq!(
        p["retention"],
        json!({"keep_daily": 7, "keep_within": "30d"})
    );
    let covered = p["covered"].as_array().unwrap();
    let ids: Vec<i64> = covered
        .iter()
        .map(|c| c["host_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![a, b]);
    assert!(
        covered
            .iter()
            .all(|c| c["next_run_at"].is_string() && c["last_job"].is_null())
    );

    // Run now: a host it does not cover is refused; a covered one queues.
    let (c, _) = app.add_host_direct("other").await;
    assert_error(
        api.post(&routes::api_plan_run(id), json!({"host_id": c}))
            .await,
        400,
        "not_covered",
    )
    .await;
    let jobs = api.run(id, Some(b)).await;
    let j = api.get(&routes::api_job(jobs[0])).await;
    assert_eq!(
        (j["status"].as_str(), j["plan_id"].as_i64()),
        (Some("queued"), Some(id))
    );
    let p = api.get(&routes::api_plan(id)).await;
    assert_eq!(p["covered"][1]["last_job"]["id"], jobs[0]);

    // The repository is in use; PATCH changes a subset; DELETE frees it.
    assert_error(
        api.c
            .delete(app.at(&routes::api_repository(repo)))
            .send()
            .await
            .unwrap(),
        409,
        "in_use",
    )
    .await;
    let r = api
        .patch(
            &routes::api_plan(id),
            json!({"enabled": false, "schedule": "@hourly"}),
        )
        .await;
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (
            p["enabled"].as_bool(),
            p["schedule"].as_str(),
            p["paths"].clone()
        ),
        (Some(false), Some("@hourly"), json!(["/etc"]))
    );
    let r = api
        .c
        .delete(app.at(&routes::api_plan(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.count("plan_schedules").await, 0);

    // The preview fragment lists five runs, or says what is wrong.
    let page = Page::from(
        api.c
            .get(app.at(&format!(
                "{}?schedule=%40daily&timezone=UTC",
                routes::PLAN_PREVIEW
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.texts("[data-testid=preview-run]").len(), 5);
    let page = Page::from(
        api.c
            .get(app.at(&format!("{}?schedule=nope", routes::PLAN_PREVIEW)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        page.one("[data-testid=preview-error]")
            .starts_with("schedule:")
    );
}

#[tokio::test]
async fn a_plan_covering_two_hosts_by_label_backs_up_both_and_retention_keeps_two() {
    let lab = Lab::new();
    let (_rest, url) = rest_backend(&lab).await;
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for name in ["db-1", "db-2"] {
        let cfg = app.enrolled_host(name).await;
        let a = lab.agent(&cfg, &restic_bin());
        wait_acked(&a).await;
        let r = api
            .patch(&routes::api_host(cfg.host_id), json!({"labels": ["db"]}))
            .await;
        assert_eq!(r.status(), 200);
        hosts.push(cfg.host_id);
        agents.push(a);
    }
    let pw = "fleet-pw-3";
    let repo = api.repo("fleet", &url, pw).await;
    let init = api.job(repo, "init", hosts[0]).await;
    assert_eq!(
        api.finished(init).await["status"],
        "succeeded",
        "{}",
        api.log(init).await
    );
    let data = lab.data("data", 0);
    let plan = api
        .plan(
            json!({"name": "db", "repository_id": repo, "paths": [data], "tags": ["nightly"],
            "schedule": "0 3 * * *", "labels": ["db"]}),
        )
        .await;
    let jobs = api.run(plan, None).await;
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        let done = api.finished(*j).await;
        assert_eq!(done["status"], "succeeded", "{done}\n{}", api.log(*j).await);
        assert_eq!(done["plan_id"], plan);
    }
    // restic's own listing: one snapshot per host, named as in the manager,
    // tagged with the plan.
    let listed = snapshots(&lab, &url, pw);
    let mut names: Vec<&str> = listed
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["db-1", "db-2"]);
    for s in &listed {
        assert_eq!(s["tags"], json!([format!("rm-plan:{plan}"), "nightly"]));
    }
    let p = api.get(&routes::api_plan(plan)).await;
    assert!(
        p["covered"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["last_job"]["status"] == "succeeded")
    );

    // keep_last 2, forgotten after each backup: four more backups of db-1
    // leave two of db-1's (db-2's one is its own group).
    let r = api
        .patch(
            &routes::api_plan(plan),
            json!({"retention": {"keep_last": 2}, "forget_after_backup": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for _ in 0..4 {
        let j = api.run(plan, Some(hosts[0])).await[0];
        assert_eq!(
            api.finished(j).await["status"],
            "succeeded",
            "{}",
            api.log(j).await
        );
        // The forget it triggers ends before the next backup starts.
        let forget = eventually_within(JOB_WAIT, "forget after backup queued", || async {
            let list = api
                .get(&format!("{}?plan_id={plan}&kind=forget", routes::API_JOBS))
                .await;
            list.as_array()
                .unwrap()
                .first()
                .filter(|f| f["id"].as_i64().unwrap() > j)
                .cloned()
        })
        .await;
        let f = api.finished(forget["id"].as_i64().unwrap()).await;
        assert_eq!(f["status"], "succeeded", "{f}");
    }
    let listed = snapshots(&lab, &url, pw);
    let db1 = listed.iter().filter(|s| s["hostname"] == "db-1").count();
    let db2 = listed.iter().filter(|s| s["hostname"] == "db-2").count();
    assert_eq!((db1, db2), (2, 1), "{listed:?}");
    // The index follows the forgets.
    let indexed = app
        .query_one(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM snapshots WHERE plan_id = {plan} AND host_id = {}",
            hosts[0]
        ))
        .await;
    assert_eq!(indexed.as_deref(), Some("2"));
    for a in agents {
        a.shutdown().await;
    }
}

#[tokio::test]
async fn progress_arrives_during_a_large_backup() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("big-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = api.repo("big", path.to_str().unwrap(), "pw").await;
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    let data = lab.data("data", 300);
    let plan = api
        .plan(json!({"name": "big", "repository_id": repo, "paths": [data], "schedule": "@daily", "hosts": [cfg.host_id]}))
        .await;
    let job = api.run(plan, None).await[0];
    let seen: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());
    let done = eventually_within(JOB_WAIT, "backup ends", || async {
        let j = api.get(&routes::api_job(job)).await;
        // restic's first reports come before its scan has sized the job.
        if let Some(p) = j["progress"]["percent"].as_f64()
            && j["progress"]["total_bytes"].as_u64().unwrap_or(0) > 0
        {
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        (!matches!(j["status"].as_str(), Some("queued" | "running"))).then_some(j)
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert_eq!(done["status"], "succeeded", "{}", api.log(job).await);
    assert!(done["progress"].is_null(), "no progress once ended");
    assert!(!seen.is_empty(), "no progress seen during the backup");
    assert!(seen.iter().all(|p| (0.0..=100.0).contains(p)), "{seen:?}");
    assert!(done["result"]["total_bytes_processed"].as_u64().unwrap() > 300 << 20);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_every_10s_schedule_fires_on_its_own() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("tick-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = api.repo("tick", path.to_str().unwrap(), "pw").await;
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    let data = lab.data("data", 0);
    let plan = api
        .plan(json!({"name": "tick", "repository_id": repo, "paths": [data], "schedule": "@every 10s", "hosts": [cfg.host_id]}))
        .await;
    let first = eventually_within(Duration::from_secs(30), "a scheduled backup", || async {
        api.backups_of(plan)
            .await
            .into_iter()
            .find(|j| j["actor_kind"] == "schedule")
    })
    .await;
    let j = api.finished(first["id"].as_i64().unwrap()).await;
    assert_eq!(
        j["status"],
        "succeeded",
        "{}",
        api.log(first["id"].as_i64().unwrap()).await
    );
    let r = api
        .patch(&routes::api_plan(plan), json!({"enabled": false}))
        .await;
    assert_eq!(r.status(), 200);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_offline_hosts_due_run_happens_once_when_it_reconnects() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("laptop").await;
    let path = lab.path("repo");
    let out = restic_cli(&lab, path.to_str().unwrap(), "pw", &["init"]);
    assert!(out.status.success());
    let repo = api.repo("laptop", path.to_str().unwrap(), "pw").await;
    // The clock moves two hours below: keep maintenance out of the way.
    let r = api
        .patch(
            &routes::api_repository(repo),
            json!({"maintenance_schedule": "0 0 1 1 *"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let data = lab.data("data", 0);
    let plan = api
        .plan(json!({"name": "hourly", "repository_id": repo, "paths": [data], "schedule": "@hourly", "hosts": [cfg.host_id]}))
        .await;
    eventually("the next run is stored", || async {
        (app.count("plan_schedules").await == 1).then_some(())
    })
    .await;
    // Two due times pass while the laptop sleeps.
    for n in 1..=2 {
        app.clock.advance(Duration::from_secs(3601));
        app.state().restic.wake_scheduler();
        eventually(&format!("due run {n} recorded"), || async {
            (api.backups_of(plan).await.len() == n).then_some(())
        })
        .await;
    }
    let list = api.backups_of(plan).await;
    let statuses: Vec<&str> = list.iter().map(|j| j["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["queued", "skipped"], "newest first");
    assert_eq!(list[1]["error"], "superseded by the next run");
    let agent = lab.agent(&cfg, &restic_bin());
    let j = api.finished(list[0]["id"].as_i64().unwrap()).await;
    assert_eq!(
        j["status"],
        "succeeded",
        "{}",
        api.log(list[0]["id"].as_i64().unwrap()).await
    );
    assert_eq!(
        snapshots(&lab, path.to_str().unwrap(), "pw").len(),
        1,
        "once"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_restart_across_two_due_times_runs_each_plan_and_host_once() {
    let mut app = TestApp::spawn().await;
    let (plan, a, b) = {
        let api = Api::new(&app).await;
        let (a, _) = app.add_host_direct("a").await;
        let (b, _) = app.add_host_direct("b").await;
        let repo = api.repo("r", "rest:http://127.0.0.1:9/r", "pw").await;
        let plan = api
            .plan(json!({"name": "p", "repository_id": repo, "paths": ["/srv"], "schedule": "@hourly", "hosts": [a, b]}))
            .await;
        (plan, a, b)
    };
    eventually("next runs stored", || async {
        (app.count("plan_schedules").await == 2).then_some(())
    })
    .await;
    app.stop().await;
    app.clock.advance(Duration::from_secs(2 * 3600 + 60));
    app.restart().await;
    let api = Api::new(&app).await;
    eventually("one run per (plan, host) after the restart", || async {
        (api.backups_of(plan).await.len() == 2).then_some(())
    })
    .await;
    let list = api.backups_of(plan).await;
    let mut on: Vec<i64> = list
        .iter()
        .map(|j| j["host_id"].as_i64().unwrap())
        .collect();
    on.sort();
    assert_eq!(on, vec![a, b]);
    assert!(
        list.iter()
            .all(|j| j["status"] == "queued" && j["actor_kind"] == "schedule")
    );
    let p = api.get(&routes::api_plan(plan)).await;
    let now = app.clock.now_ms();
    for c in p["covered"].as_array().unwrap() {
        let next =
            chrono::DateTime::parse_from_rfc3339(c["next_run_at"].as_str().unwrap()).unwrap();
        assert!(next.timestamp_millis() > now, "moved to the future: {c}");
    }
    // Another pass changes nothing.
    let ops = restic_manager::restic::scheduler::StateOps(app.state().clone());
    restic_manager::restic::scheduler::pass(&ops).await.unwrap();
    assert_eq!(api.backups_of(plan).await.len(), 2);
}

#[tokio::test]
async fn a_failing_backup_raises_backup_failed_and_the_next_success_resolves_it() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-9").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = api.repo("r", path.to_str().unwrap(), "pw").await;
    let data = lab.data("data", 0);
    let plan = api
        .plan(json!({"name": "p", "repository_id": repo, "paths": [data], "schedule": "@daily", "hosts": [cfg.host_id]}))
        .await;
    // Not initialised yet: the backup fails, classified.
    let j = api.run(plan, None).await[0];
    let done = api.finished(j).await;
    assert_eq!(done["status"], "failed");
    let alert = eventually("backup_failed raised", || async {
        let list = api
            .get(&format!("{}?state=active", routes::API_ALERTS))
            .await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "backup_failed")
            .cloned()
    })
    .await;
    assert_eq!(alert["host_id"], cfg.host_id);
    let msg = alert["message"].as_str().unwrap();
    assert!(
        msg.contains("repository_not_found") && msg.contains("web-9"),
        "{msg}"
    );
    // A second failure is the same alert, not a new one.
    let j = api.run(plan, None).await[0];
    api.finished(j).await;
    assert_eq!(
        app.query_one("SELECT CAST(COUNT(*) AS TEXT) FROM alerts WHERE kind = 'backup_failed'")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        api.finished(api.job(repo, "init", cfg.host_id).await).await["status"],
        "succeeded"
    );
    let j = api.run(plan, None).await[0];
    assert_eq!(api.finished(j).await["status"], "succeeded");
    eventually("backup_failed resolved", || async {
        let list = api
            .get(&format!("{}?state=active", routes::API_ALERTS))
            .await;
        (!list
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "backup_failed"))
        .then_some(())
    })
    .await;
    agent.shutdown().await;
}
