//! Rolling fleet updates through the real server with real agent
//! connections that "restart" at the target version when told to update.
use std::time::Duration;

use crate::common::{
    sim::{self, OLD, Plan, Sim, simulate},
    *,
};
use agent::config::AgentConfig;
use restic_manager::{routes, store::users::Role, version::VERSION};
use serde_json::{Value, json};

async fn stage(app: &TestApp) {
    sim::stage_binary(app, VERSION).await;
}

async fn online(app: &TestApp, id: i64, version: &str) {
    eventually(&format!("host {id} online at {version}"), || async {
        let h = app.host_json(id).await;
        (h["online"] == true && h["agent_version"] == version).then_some(())
    })
    .await;
}

async fn run(app: &TestApp, id: i64) -> Value {
    app.get_json(&routes::api_fleet_run(id)).await
}

async fn wait_run(app: &TestApp, id: i64, status: &str) -> Value {
    eventually(&format!("fleet update {status}"), || async {
        let r = run(app, id).await;
        (r["fleet_update"]["status"] == status).then_some(r)
    })
    .await
}

async fn active_alerts(app: &TestApp) -> Vec<Value> {
    app.get_json("/api/alerts?state=active").await
}

fn statuses(r: &Value) -> Vec<String> {
    r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_string())
        .collect()
}

async fn start(app: &TestApp, body: Value) -> reqwest::Response {
    app.admin()
        .await
        .post(app.at(routes::API_FLEET_UPDATE))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn setup(app: &TestApp, plans: &[Plan]) -> (Vec<AgentConfig>, Vec<Sim>) {
    stage(app).await;
    let mut cfgs = vec![];
    let mut sims = vec![];
    for (i, p) in plans.iter().enumerate() {
        let cfg = app.enrolled_host(&format!("web-{}", i + 1)).await;
        sims.push(simulate(cfg.clone(), OLD, *p));
        online(app, cfg.host_id, OLD).await;
        cfgs.push(cfg);
    }
    (cfgs, sims)
}

fn fast(s: &mut restic_manager::config::Settings) {
    s.update_min_healthy = Duration::ZERO;
}

#[tokio::test]
async fn a_fleet_update_goes_host_by_host_and_completes() {
    let app = TestApp::spawn_with(fast).await;
    let (cfgs, sims) = setup(&app, &[Plan::Update, Plan::Update, Plan::Update]).await;
    let r = start(&app, json!({"confirm_count": 3})).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    let done = wait_run(&app, id, "completed").await;
    assert_eq!(statuses(&done), ["succeeded", "succeeded", "succeeded"]);
    assert!(done["fleet_update"]["completed_at"].is_string());
    for c in &cfgs {
        online(&app, c.host_id, VERSION).await;
    }
    // Exactly one update job per host.
    let jobs: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/jobs?kind=update"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));
    let audit: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/audit?action=fleet.start"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    // Now nothing is behind.
    let again = start(&app, json!({})).await;
    assert_error(again, 409, "nothing_to_update").await;
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn a_failing_host_halts_the_run_raises_an_alert_and_the_next_stays_pending() {
    let app = TestApp::spawn_with(fast).await;
    let (_cfgs, sims) = setup(&app, &[Plan::Update, Plan::Fail, Plan::Update]).await;
    let id = start(&app, json!({})).await.json::<Value>().await.unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    let r = wait_run(&app, id, "halted").await;
    assert_eq!(statuses(&r), ["succeeded", "failed", "pending"]);
    let reason = r["fleet_update"]["halted_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("update failed on web-") && reason.contains("checksum mismatch"),
        "{reason}"
    );
    let alerts = active_alerts(&app).await;
    assert!(
        alerts.iter().any(|a| a["kind"] == "fleet_update_halted"),
        "{alerts:?}"
    );
    assert!(
        alerts.iter().any(|a| a["kind"] == "update_failed"),
        "{alerts:?}"
    );
    // The page shows the outcome and why.
    let page = app
        .admin()
        .await
        .get(app.at(routes::FLEET_UPDATE_PAGE))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("fleet-halted-reason") && page.contains("checksum mismatch"));
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn an_update_the_agent_reports_cancelled_halts_the_run_like_a_failure() {
    // Only success moves a run on; a cancelled update must not leave it
    // waiting for an outcome that never comes.
    let app = TestApp::spawn_with(fast).await;
    let (cfgs, sims) = setup(&app, &[Plan::Cancel, Plan::Update]).await;
    let id = start(&app, json!({})).await.json::<Value>().await.unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    let r = wait_run(&app, id, "halted").await;
    assert_eq!(statuses(&r), ["failed", "pending"]);
    let reason = r["fleet_update"]["halted_reason"].as_str().unwrap();
    assert!(reason.contains("cancelled the update"), "{reason}");
    let host = app.host_json(cfgs[0].host_id).await;
    assert_eq!(host["agent_version"], OLD, "still on the old version");
    let alerts = active_alerts(&app).await;
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "update_failed" && a["host_id"] == cfgs[0].host_id),
        "{alerts:?}"
    );
    for s in sims {
        s.task.abort();
    }
}

/// The run reads an update's outcome back from the database when the job
/// ended before it began to listen: a cancel read back that way says so, as
/// it does when heard live (this race once halted a run with "update failed").
#[tokio::test]
async fn an_update_cancelled_before_the_run_listens_reads_back_as_cancelled() {
    use restic_manager::{
        fleet::{FleetOps, StateOps},
        store::jobs::{self, ActorKind, JobKind, JobStatus, NewJob},
    };
    let app = TestApp::spawn().await;
    let host = app.enrolled_host("web-1").await;
    let new = NewJob {
        host_id: host.host_id,
        kind: JobKind::Update,
        actor_kind: ActorKind::User,
        actor_id: None,
        actor_name: "admin".into(),
        target_version: Some(VERSION.into()),
        deadline_at: None,
    };
    let job = jobs::create(app.db(), &new, app.clock.now_ms())
        .await
        .unwrap();
    let ops = StateOps(app.state().clone());
    assert!(ops.job_outcome(job.id).await.is_none(), "still queued");
    jobs::finish(app.db(), job.id, None, JobStatus::Cancelled, None, None, 1)
        .await
        .unwrap()
        .unwrap();
    let outcome = ops.job_outcome(job.id).await.expect("ended");
    assert!(!outcome.succeeded);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("the agent cancelled the update")
    );
}

#[tokio::test]
async fn one_run_at_a_time_cancel_stops_further_dispatches_and_roles_are_enforced() {
    let app = TestApp::spawn_with(fast).await;
    let (_cfgs, sims) = setup(&app, &[Plan::Hold, Plan::Update]).await;
    for role in [Role::Viewer, Role::Operator] {
        let c = app.as_role(role).await;
        assert_error(
            c.post(app.at(routes::API_FLEET_UPDATE))
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
            403,
            "forbidden",
        )
        .await;
        assert_eq!(
            c.get(app.at(routes::FLEET_UPDATE_PAGE))
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
    }
    assert_error(
        start(&app, json!({"confirm_count": 5})).await,
        400,
        "count_mismatch",
    )
    .await;
    assert_error(
        start(&app, json!({"target_version": "v9"})).await,
        400,
        "invalid_target",
    )
    .await;
    let r = app
        .admin()
        .await
        .post(app.at(routes::API_FLEET_UPDATE))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_json").await;

    let id = start(&app, json!({"confirm_count": "2"}))
        .await
        .json::<Value>()
        .await
        .unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    eventually("first host running", || async {
        (statuses(&run(&app, id).await)[0] == "running").then_some(())
    })
    .await;
    assert_error(start(&app, json!({})).await, 409, "already_running").await;
    // Every page shows the running run.
    let banner = app
        .as_role(Role::Viewer)
        .await
        .get(app.at(routes::FLEET_BANNER))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        banner.contains("fleet-banner") && banner.contains("0 of 2"),
        "{banner}"
    );

    let c = app
        .admin()
        .await
        .post(app.at(&routes::api_fleet_run_cancel(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    assert_error(
        app.admin()
            .await
            .post(app.at(&routes::api_fleet_run_cancel(id)))
            .send()
            .await
            .unwrap(),
        409,
        "not_running",
    )
    .await;
    // The current host's update is left to finish; nothing else starts.
    sims[0].plan.send(Plan::Update).unwrap();
    eventually("current host finished", || async {
        (statuses(&run(&app, id).await)[0] == "succeeded").then_some(())
    })
    .await;
    let r = run(&app, id).await;
    assert_eq!(r["fleet_update"]["status"], "cancelled");
    assert_eq!(statuses(&r), ["succeeded", "pending"]);
    let jobs: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/jobs?kind=update"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "no dispatch after the cancel");
    let audit: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/audit?action=fleet.cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    let banner = app
        .admin()
        .await
        .get(app.at(routes::FLEET_BANNER))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!banner.contains("fleet-banner"));
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn the_page_asks_for_the_typed_count_and_refuses_a_wrong_one() {
    let app = TestApp::spawn_with(fast).await;
    let (_cfgs, sims) = setup(&app, &[Plan::Hold, Plan::Update]).await;
    let admin = app.admin().await;
    let page = admin
        .get(app.at(routes::FLEET_UPDATE_PAGE))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&page);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    assert_eq!(
        html.select(&sel("[data-testid=fleet-candidate]")).count(),
        2
    );
    let label: String = html
        .select(&sel("label[for=confirm_count]"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(label.contains("(2)"), "{label}");
    assert!(page.contains("one host at a time") && page.contains("halts on the first failure"));

    let wrong = admin
        .post(app.at(routes::FLEET_UPDATE_PAGE))
        .form(&[("confirm_count", "3")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let body = wrong.text().await.unwrap();
    assert!(
        body.contains("error-banner") && body.contains("type 2"),
        "{body}"
    );
    let runs: Vec<Value> = admin
        .get(app.at(routes::API_FLEET_RUNS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(runs.is_empty(), "a wrong count starts nothing");

    let ok = admin
        .post(app.at(routes::FLEET_UPDATE_PAGE))
        .form(&[("confirm_count", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    // Running: per-host progress that refreshes itself, with Cancel.
    let page = admin
        .get(app.at(routes::FLEET_UPDATE_PAGE))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&page);
    let live = html.select(&sel("#fleet-live")).next().unwrap();
    assert_eq!(live.value().attr("hx-trigger"), Some("every 3s"));
    assert_eq!(html.select(&sel("[data-testid=fleet-host-row]")).count(), 2);
    assert_eq!(html.select(&sel("[data-testid=fleet-cancel]")).count(), 1);
    assert_eq!(
        html.select(&sel("[data-testid=fleet-start]")).count(),
        0,
        "no start form while running"
    );
    sims[0].plan.send(Plan::Update).unwrap();
    let runs: Vec<Value> = admin
        .get(app.at(routes::API_FLEET_RUNS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    wait_run(&app, runs[0]["id"].as_i64().unwrap(), "completed").await;
    // Ended: the partial no longer polls.
    let partial = admin
        .get(app.at(routes::FLEET_UPDATE_PAGE))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        partial.contains("fleet-live") && !partial.contains("hx-trigger"),
        "{partial}"
    );
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn a_restarted_server_resumes_the_run_without_dispatching_twice() {
    let mut app = TestApp::spawn_with(fast).await;
    let (cfgs, sims) = setup(&app, &[Plan::Hold, Plan::Update]).await;
    let id = start(&app, json!({})).await.json::<Value>().await.unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    eventually("first host running", || async {
        (statuses(&run(&app, id).await)[0] == "running").then_some(())
    })
    .await;
    // Restart on the same address, so the agents find it again by themselves.
    app.restart().await;
    online(&app, cfgs[0].host_id, OLD).await;
    assert_eq!(
        run(&app, id).await["fleet_update"]["status"],
        "running",
        "still running after the restart"
    );
    // The first host now finishes its (one) update; the run carries on.
    sims[0].plan.send(Plan::Update).unwrap();
    let r = wait_run(&app, id, "completed").await;
    assert_eq!(statuses(&r), ["succeeded", "succeeded"]);
    for c in &cfgs {
        let jobs: Vec<Value> = app
            .admin()
            .await
            .get(app.at(&format!("/api/jobs?kind=update&host_id={}", c.host_id)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "host {} dispatched exactly once", c.host_id);
    }
    for s in sims {
        s.task.abort();
    }
}

/// Cloned machines all report the same hostname: the fleet page names each
/// host by its name, with the hostname beside it, as the dashboard does.
#[tokio::test]
async fn the_fleet_page_names_hosts_by_name_with_the_hostname_beside() {
    let app = TestApp::spawn().await;
    let mut sockets = vec![];
    for name in ["web-1", "web-2"] {
        let cfg = app.enrolled_host(name).await;
        let mut ws = app.ws(Some(&cfg.secret)).await.expect("handshake");
        ws_send(&mut ws, hello_frame(OLD, "linux", "x86_64", "vm")).await;
        ws_expect(&mut ws, agent::wire::HELLO_ACK).await;
        sockets.push(ws);
    }
    let page = Page::from(
        app.admin()
            .await
            .get(app.at(routes::FLEET_UPDATE_PAGE))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let names = page.texts("[data-testid=fleet-candidate] [data-testid=host-name]");
    let hostnames = page.texts("[data-testid=fleet-candidate] [data-testid=host-hostname]");
    let mut names = names;
    names.sort();
    assert_eq!(names, ["web-1", "web-2"], "{}", page.text);
    assert_eq!(hostnames, ["(vm)", "(vm)"]);
}
