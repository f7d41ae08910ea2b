//! Per-host agent self-update, server side, through the real server and
//! real agent connections: dispatch and its refusals, completion on the new
//! agent's hello, deadlines (also across a server restart), out-of-date
//! surfacing on the pages.
use std::time::Duration;

use crate::common::{
    sim::{self, OLD},
    *,
};
use agent::wire::{self, UpdateOutcome, UpdateReport};
use restic_manager::{routes, store::users::Role, version::VERSION};
use serde_json::Value;

async fn dispatch(app: &TestApp, host_id: i64) -> reqwest::Response {
    app.admin()
        .await
        .post(app.at(&routes::api_host_update(host_id)))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_update_dispatches_and_succeeds_when_the_agent_returns_at_the_target() {
    let app = TestApp::spawn_with(|s| s.update_min_healthy = Duration::from_millis(300)).await;
    let (sha, size) = sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (old, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&old).await;
    assert_eq!(app.host_json(cfg.host_id).await["update_available"], true);

    let r = dispatch(&app, cfg.host_id).await;
    assert_eq!(r.status(), 200);
    let job_id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    let (cmd, sender) = tokio::time::timeout(WAIT, cmds.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.job_id, job_id);
    assert_eq!(cmd.target_version, VERSION);
    assert_eq!(cmd.sha256, sha);
    assert_eq!(cmd.size, size);
    // The default 90 s deadline less the restart allowance (15 s) and the
    // healthy period (0.3 s here), in whole seconds: the agent gives up
    // staging before the server gives up the job.
    assert_eq!(cmd.stage_within_secs, Some(74));
    let j = app.get_json::<Value>(&routes::api_job(job_id)).await;
    assert_eq!(j["kind"], "update");
    assert_eq!(j["target_version"], VERSION);
    // The audit row went out with it.
    let audit: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/audit?action=host.update_dispatched"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["details"]["job_id"], job_id);

    // The agent reports progress, swaps and restarts at the new version.
    sender
        .send_message(&wire::JobStarted {
            job_id,
            kind: Some(wire::JobKind::Update),
        })
        .await
        .unwrap();
    app.wait_job(job_id, "running").await;
    old.shutdown().await;
    let report = UpdateReport {
        job_id,
        from_version: OLD.into(),
        to_version: VERSION.into(),
        outcome: UpdateOutcome::Updated,
        reason: None,
    };
    let (new, _) = sim::catching_updates(&cfg, VERSION, Some(report));
    wait_acked(&new).await;
    let j = app.wait_job(job_id, "succeeded").await;
    assert!(j["error"].is_null());
    let h = app.host_json(cfg.host_id).await;
    assert_eq!(h["agent_version"], VERSION);
    assert_eq!(h["update_available"], false);
    // The job log tells the story, server lines included.
    let logs: Vec<Value> = app.get_json(&routes::api_job_logs(job_id)).await;
    let text: Vec<&str> = logs.iter().map(|l| l["data"].as_str().unwrap()).collect();
    assert!(
        text.iter().any(|l| l.contains("requested by admin")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|l| l.contains("update succeeded")),
        "{text:?}"
    );
    new.shutdown().await;
}

#[tokio::test]
async fn every_refusal_has_its_code_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;

    // Roles first: only admins may update.
    for role in [Role::Viewer, Role::Operator] {
        let c = app.as_role(role).await;
        assert_error(
            c.post(app.at(&routes::api_host_update(cfg.host_id)))
                .send()
                .await
                .unwrap(),
            403,
            "forbidden",
        )
        .await;
    }
    assert_error(
        app.anon()
            .post(app.at(&routes::api_host_update(cfg.host_id)))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_error(dispatch(&app, 99_999).await, 404, "host_not_found").await;
    assert_error(dispatch(&app, cfg.host_id).await, 409, "host_offline").await;

    let (a, _cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    assert_error(dispatch(&app, cfg.host_id).await, 409, "no_binary").await;
    sim::stage_binary(&app, "v9.9.9-not-the-server").await;
    assert_error(dispatch(&app, cfg.host_id).await, 409, "no_binary").await;
    sim::stage_binary(&app, VERSION).await;
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
    assert!(jobs.is_empty(), "refusals create no job: {jobs:?}");

    let r = dispatch(&app, cfg.host_id).await;
    assert_eq!(r.status(), 200);
    assert_error(dispatch(&app, cfg.host_id).await, 409, "update_in_progress").await;
    a.shutdown().await;

    let (cur, b) = app.host("web-2").version(VERSION).online().await;
    assert_error(dispatch(&app, cur.host_id).await, 409, "already_up_to_date").await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_send_that_fails_fails_the_job_instead_of_leaving_it_queued() {
    let app = TestApp::spawn().await;
    sim::stage_binary(&app, VERSION).await;
    let (cfg, a) = app.host("web-1").version(OLD).online().await;
    a.shutdown().await;
    // The hub still lists the host, but its connection's reader is gone:
    // the send fails after the job row was written.
    let (_conn, rx) = app.state().hub.register(cfg.host_id);
    drop(rx);
    assert_error(dispatch(&app, cfg.host_id).await, 409, "host_offline").await;
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
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "failed");
    assert!(
        jobs[0]["error"]
            .as_str()
            .unwrap()
            .contains("could not send"),
        "{}",
        jobs[0]
    );
}

#[tokio::test]
async fn no_hello_by_the_deadline_fails_with_the_timeout_reason() {
    let app = TestApp::spawn_with(|s| s.update_timeout = Duration::from_secs(1)).await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (a, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let job_id = dispatch(&app, cfg.host_id)
        .await
        .json::<Value>()
        .await
        .unwrap()["job_id"]
        .as_i64()
        .unwrap();
    cmds.recv().await.unwrap();
    a.shutdown().await; // it "restarts" but never comes back
    let j = app.wait_job(job_id, "failed").await;
    assert_eq!(j["error"], "timeout: agent did not reconnect within 1s");
}

#[tokio::test]
async fn coming_back_at_the_wrong_version_fails_with_the_plans_reason() {
    let app = TestApp::spawn_with(|s| s.update_timeout = Duration::from_secs(2)).await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (a, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let job_id = dispatch(&app, cfg.host_id)
        .await
        .json::<Value>()
        .await
        .unwrap()["job_id"]
        .as_i64()
        .unwrap();
    cmds.recv().await.unwrap();
    a.shutdown().await;
    let b = app.agent(&cfg, "v0.0.2-other");
    wait_acked(&b).await;
    let j = app.wait_job(job_id, "failed").await;
    assert_eq!(
        j["error"],
        format!("agent reconnected at v0.0.2-other, expected {VERSION}")
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_rollback_reported_in_the_hello_fails_the_job_at_once() {
    // A long deadline: only the report can end this job quickly.
    let app = TestApp::spawn_with(|s| s.update_timeout = Duration::from_secs(600)).await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (a, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let job_id = dispatch(&app, cfg.host_id)
        .await
        .json::<Value>()
        .await
        .unwrap()["job_id"]
        .as_i64()
        .unwrap();
    cmds.recv().await.unwrap();
    a.shutdown().await;
    let report = UpdateReport {
        job_id,
        from_version: OLD.into(),
        to_version: VERSION.into(),
        outcome: UpdateOutcome::RolledBack,
        // The agent's text is its own: a NUL (refused by Postgres in text)
        // and far more than anyone reads must not keep the job from failing.
        reason: Some(format!(
            "new agent restarted 4 times without reaching the server\u{0}{}",
            "x".repeat(100_000)
        )),
    };
    let (b, _) = sim::catching_updates(&cfg, OLD, Some(report));
    wait_acked(&b).await;
    let j = app.wait_job(job_id, "failed").await;
    let err = j["error"].as_str().unwrap();
    assert!(
        err.starts_with(&format!(
            "rolled back to {OLD}: new agent restarted 4 times without reaching the server\u{fffd}x"
        )),
        "{err}"
    );
    assert!(
        err.ends_with("x…") && err.len() < 2200,
        "cut short: {} bytes",
        err.len()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_drops_during_the_healthy_period_is_not_yet_a_success() {
    let app = TestApp::spawn_with(|s| {
        s.update_min_healthy = Duration::from_millis(800);
        s.update_timeout = Duration::from_secs(3);
    })
    .await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (a, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let job_id = dispatch(&app, cfg.host_id)
        .await
        .json::<Value>()
        .await
        .unwrap()["job_id"]
        .as_i64()
        .unwrap();
    cmds.recv().await.unwrap();
    a.shutdown().await;
    let b = app.agent(&cfg, VERSION);
    wait_acked(&b).await;
    b.shutdown().await; // gone before the healthy period ends
    let j = app.wait_job(job_id, "failed").await;
    assert_eq!(j["error"], "timeout: agent did not reconnect within 3s");
}

#[tokio::test]
async fn a_server_restart_with_a_pending_deadline_still_ends_the_job_exactly_once() {
    // A deadline no real wait reaches: only the clock moved past it, while
    // the server was down, ends the job.
    let mut app = TestApp::spawn_with(|s| s.update_timeout = Duration::from_secs(600)).await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let (a, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let job_id = dispatch(&app, cfg.host_id)
        .await
        .json::<Value>()
        .await
        .unwrap()["job_id"]
        .as_i64()
        .unwrap();
    cmds.recv().await.unwrap();
    a.shutdown().await;
    app.stop().await;
    // The deadline passes while no server runs.
    app.clock.advance(Duration::from_secs(601));
    app.restart().await;
    let j = app.wait_job(job_id, "failed").await;
    assert_eq!(j["error"], "timeout: agent did not reconnect within 600s");
    // Restart again: nothing ends twice.
    app.stop().await;
    app.restart().await;
    let logs: Vec<Value> = app.get_json(&routes::api_job_logs(job_id)).await;
    let fails = logs
        .iter()
        .filter(|l| l["data"].as_str().unwrap().starts_with("update failed"))
        .count();
    assert_eq!(fails, 1, "{logs:?}");
    assert_eq!(
        app.get_json::<Value>(&routes::api_job(job_id)).await["status"],
        "failed"
    );
}

#[tokio::test]
async fn out_of_date_hosts_show_a_chip_a_tile_and_their_own_filter() {
    let app = TestApp::spawn_with(|s| s.update_min_healthy = Duration::ZERO).await;
    let behind = app.enrolled_host("behind-1").await;
    let current = app.enrolled_host("current-1").await;
    let _never = app.enrolled_host("never-1").await; // no version yet: never "behind"
    let a = app.agent(&behind, OLD);
    let b = app.agent(&current, VERSION);
    wait_acked(&a).await;
    wait_acked(&b).await;
    let admin = app.admin().await;

    let page = admin
        .get(app.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&page);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    let tile: String = html
        .select(&sel("[data-testid=hosts-behind-tile]"))
        .next()
        .expect("tile")
        .text()
        .collect();
    assert!(tile.contains('1') && tile.contains("host behind"), "{tile}");
    let chips: Vec<String> = html
        .select(&sel("[data-testid=update-chip]"))
        .map(|c| c.text().collect())
        .collect();
    assert_eq!(chips, [format!("out of date · {OLD} → {VERSION}")]);

    let filtered = admin
        .get(app.at("/?updates=behind"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&filtered);
    let names: Vec<String> = html
        .select(&sel("[data-testid=host-row] td a"))
        .map(|c| c.text().collect())
        .collect();
    assert_eq!(names, ["behind-1"]);
    let api: Vec<Value> = admin
        .get(app.at("/api/hosts?updates=behind"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0]["name"], "behind-1");
    assert_eq!(api[0]["target_version"], VERSION);

    // Host pages: the chip in the header; the button for admins only.
    let hp = admin
        .get(app.at(&routes::host(behind.host_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&hp);
    assert_eq!(html.select(&sel("[data-testid=update-chip]")).count(), 1);
    let button = html
        .select(&sel("[data-testid=update-agent]"))
        .next()
        .expect("update button");
    assert!(button.value().attr("disabled").is_none());
    let viewer = app.as_role(Role::Viewer).await;
    let vp = viewer
        .get(app.at(&routes::host(behind.host_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        scraper::Html::parse_document(&vp)
            .select(&sel("[data-testid=update-agent]"))
            .count(),
        0
    );

    // Offline: the button is disabled with the reason.
    a.shutdown().await;
    eventually("offline", || async {
        (app.host_json(behind.host_id).await["online"] == false).then_some(())
    })
    .await;
    let hp = admin
        .get(app.at(&routes::host(behind.host_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&hp);
    let button = html
        .select(&sel("[data-testid=update-agent]"))
        .next()
        .unwrap();
    assert!(button.value().attr("disabled").is_some());
    let reason: String = html
        .select(&sel("[data-testid=update-disabled-reason]"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(reason.contains("online"), "{reason}");

    // No one behind: no tile.
    let page = admin
        .get(app.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("hosts-behind-tile"),
        "the offline host is still behind"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn the_form_redirects_htmx_to_the_job_or_shows_an_inline_banner() {
    let app = TestApp::spawn().await;
    sim::stage_binary(&app, VERSION).await;
    let cfg = app.enrolled_host("web-1").await;
    let admin = app.admin().await;
    // Offline: an inline banner for the page's error slot, no job.
    let r = admin
        .post(app.at(&routes::host_update(cfg.host_id)))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["HX-Retarget"], "#page-error");
    assert_eq!(r.headers()["HX-Reswap"], "innerHTML");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("error-banner") && body.contains("offline"),
        "{body}"
    );
    assert!(!body.contains("<html"), "a fragment, not a page: {body}");
    assert_eq!(app.count("jobs").await, 0);
    let (a, _cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&a).await;
    let r = admin
        .post(app.at(&routes::host_update(cfg.host_id)))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let to = r.headers()["HX-Redirect"].to_str().unwrap().to_string();
    assert!(to.starts_with("/jobs/"), "{to}");
    let page = admin.get(app.at(&to)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    a.shutdown().await;
}

/// A server upgraded in place (A → B on the same data directory) stages the
/// agent beside it when what is staged is another version, so updating a
/// host needs no `agent-binary add`; an agent of yet another version beside
/// it is not staged.
#[tokio::test]
async fn a_server_restarted_at_a_new_version_stages_its_own_agent() {
    use sha2::Digest;
    let mut app = TestApp::spawn().await;
    // What server A staged: its own agent.
    sim::stage_binary(&app, OLD).await;
    let bin_dir = app.dir.path().join("server-b");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let sibling = bin_dir.join("restic-manager-agent");
    let write_agent = |version: &str| {
        let tmp = bin_dir.join("agent.tmp");
        std::fs::write(
            &tmp,
            format!("#!/bin/sh\necho restic-manager-agent {version}\n"),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::rename(&tmp, &sibling).unwrap();
    };

    // A sibling that is not the server's version is left alone.
    write_agent("v9.9.9-someone-else");
    app.settings.stage_sibling_agent = true;
    app.settings.sibling_agent = Some(sibling.clone());
    app.restart().await;
    let staged = restic_manager::store::agent_binaries::get(app.db(), "linux", "x86_64")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(staged.version, OLD);

    // Server B restarts with its own agent beside it.
    write_agent(VERSION);
    app.restart().await;
    let staged = restic_manager::store::agent_binaries::get(app.db(), "linux", "x86_64")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(staged.version, VERSION);
    let want_sha = hex::encode(sha2::Sha256::digest(std::fs::read(&sibling).unwrap()));
    assert_eq!(staged.sha256, want_sha);

    let cfg = app.enrolled_host("web-1").await;
    let (old, mut cmds) = sim::catching_updates(&cfg, OLD, None);
    wait_acked(&old).await;
    let r = dispatch(&app, cfg.host_id).await;
    assert_eq!(r.status(), 200, "no manual staging needed");
    let (cmd, _sender) = tokio::time::timeout(WAIT, cmds.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.target_version, VERSION);
    assert_eq!(cmd.sha256, want_sha);
    old.shutdown().await;
}
