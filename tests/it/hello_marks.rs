//! What a hello settles when the common hello reads nothing: the in-memory
//! record of hosts that may have an open alert or a live job
//! (`agents::marks`) and the cache of known agent secrets
//! (`agents::secret_cache`). Each test puts the row where only the record
//! leads the hello to it: no alert sweep runs (it would resolve the alerts
//! by itself), and jobs are waited for well inside the dispatcher's 30 s
//! safety tick. A record that wrongly said "nothing here" fails them.
use std::time::Duration;

use restic_manager::{
    agents::marks::Mark,
    alerts::{self, Severity, health},
    config::Settings,
    version::VERSION,
};

use crate::{
    common::*,
    restic::{Api, Lab, restic_bin},
};

/// Well inside the dispatcher's safety tick (30 s).
const SETTLE: Duration = Duration::from_secs(10);

fn no_sweeps(s: &mut Settings) {
    s.alert_sweep_interval = Duration::from_secs(3600);
}

/// The three alerts a hello can settle, raised through the alert service.
async fn raise_all(app: &TestApp, host_id: i64) {
    let keys = [
        (alerts::HOST_OFFLINE, alerts::host_offline_key(host_id)),
        (alerts::UPDATE_FAILED, alerts::update_failed_key(host_id)),
        (health::RESTIC_MISSING, health::restic_missing_key(host_id)),
    ];
    for (kind, key) in keys {
        alerts::raise(
            app.state(),
            kind,
            &key,
            Some(host_id),
            Severity::Warning,
            "raised by the test",
        )
        .await
        .unwrap();
    }
}

/// The host's active alert kinds, sorted.
async fn open_kinds(app: &TestApp, host_id: i64) -> Vec<String> {
    app.query(&format!(
        "SELECT kind FROM alerts WHERE host_id = {host_id} AND resolved_at IS NULL ORDER BY kind"
    ))
    .await
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .collect()
}

async fn wait_offline(app: &TestApp, host_id: i64) {
    eventually("host marked offline", || async {
        app.host_row(host_id)
            .await
            .filter(|h| !h.online)
            .map(|_| ())
    })
    .await;
}

async fn wait_resolved(app: &TestApp, host_id: i64) {
    eventually_within(SETTLE, "the hello resolves every alert", || async {
        open_kinds(app, host_id).await.is_empty().then_some(())
    })
    .await;
}

fn marked(app: &TestApp, m: Mark, host_id: i64) -> bool {
    app.state().marks.seen(m, host_id).maybe
}

/// A job's status within `SETTLE`.
async fn wait_status(api: &Api<'_>, id: i64, want: &str) {
    eventually_within(SETTLE, &format!("job {id} {want}"), || async {
        (api.status(id).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn alerts_raised_while_a_host_is_away_are_resolved_by_its_next_hello() {
    let app = TestApp::spawn_with(no_sweeps).await;
    let (cfg, agent) = app.host("web-1").version(VERSION).online().await;
    let id = cfg.host_id;
    assert!(!marked(&app, Mark::Alerts, id), "nothing was raised yet");
    agent.shutdown().await;
    wait_offline(&app, id).await;

    raise_all(&app, id).await;
    assert_eq!(
        open_kinds(&app, id).await,
        ["host_offline", "restic_missing", "update_failed"]
    );
    assert!(marked(&app, Mark::Alerts, id));
    // Back at the server's version, without restic and not covered by a
    // plan: its hello settles all three.
    let agent = app.agent(&cfg, VERSION);
    wait_acked(&agent).await;
    wait_resolved(&app, id).await;

    // That hello found them open; the next one finds none and clears the
    // mark, so the hello after it reads nothing.
    agent.shutdown().await;
    wait_offline(&app, id).await;
    let agent = app.agent(&cfg, VERSION);
    wait_acked(&agent).await;
    eventually("the mark clears", || async {
        (!marked(&app, Mark::Alerts, id)).then_some(())
    })
    .await;

    // And a raise while it is connected is still found by its reconnect.
    alerts::raise_update_failed(app.state(), id, 1, "raised while connected").await;
    assert_eq!(open_kinds(&app, id).await, ["update_failed"]);
    agent.shutdown().await;
    wait_offline(&app, id).await;
    let agent = app.agent(&cfg, VERSION);
    wait_acked(&agent).await;
    wait_resolved(&app, id).await;
    agent.shutdown().await;
}

#[tokio::test]
async fn jobs_queued_while_connected_or_away_run_and_a_reconnect_still_finds_them() {
    let lab = Lab::new();
    let app = TestApp::spawn_with(no_sweeps).await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let id = cfg.host_id;
    let repo = api
        .repo("r", lab.path("repo").to_str().unwrap(), "pw")
        .await;

    // Queued while connected: the queueing wakes the dispatcher.
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let init = api.job(repo, "init", id).await;
    assert!(marked(&app, Mark::Jobs, id));
    assert_eq!(api.finished(init).await["status"], "succeeded");

    // A reconnect afterwards finds nothing live and clears the mark.
    agent.shutdown().await;
    wait_offline(&app, id).await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    eventually("the mark clears", || async {
        (!marked(&app, Mark::Jobs, id)).then_some(())
    })
    .await;

    // Queued while away: only the hello sends it, so the record must say
    // the host has a live job.
    agent.shutdown().await;
    wait_offline(&app, id).await;
    let check = api.job(repo, "check", id).await;
    assert!(marked(&app, Mark::Jobs, id));
    assert_eq!(api.status(check).await, "queued");
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    wait_status(&api, check, "succeeded").await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_restarted_server_loads_the_record_and_the_secrets_from_the_database() {
    let lab = Lab::new();
    let mut app = TestApp::spawn_with(no_sweeps).await;
    let plain = app.enrolled_host("plain").await;
    let runner = app.enrolled_host("runner").await;
    let (init, check) = {
        let api = Api::new(&app).await;
        let repo = api
            .repo("r", lab.path("repo").to_str().unwrap(), "pw")
            .await;
        (
            api.job(repo, "init", runner.host_id).await,
            api.job(repo, "check", runner.host_id).await,
        )
    };
    raise_all(&app, plain.host_id).await;

    app.restart().await;
    // A fresh record, from the database alone.
    assert!(marked(&app, Mark::Alerts, plain.host_id));
    assert!(!marked(&app, Mark::Alerts, runner.host_id));
    assert!(marked(&app, Mark::Jobs, runner.host_id));
    assert!(!marked(&app, Mark::Jobs, plain.host_id));
    assert_eq!(app.state().agent_secrets.len(), 2);

    let api = Api::new(&app).await;
    let a = app.agent(&plain, VERSION);
    let b = lab.agent(&runner, &restic_bin());
    wait_acked(&a).await;
    wait_acked(&b).await;
    wait_resolved(&app, plain.host_id).await;
    wait_status(&api, init, "succeeded").await;
    assert_eq!(api.finished(check).await["status"], "succeeded");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_removed_hosts_agent_is_refused_although_its_secret_was_known() {
    let app = TestApp::spawn().await;
    let (cfg, agent) = app.host("web-1").online().await;
    let (_, other) = app.host("web-2").online().await;
    assert_eq!(app.state().agent_secrets.len(), 2, "both secrets known");
    let r = app
        .admin()
        .await
        .delete(app.at(&restic_manager::routes::api_host(cfg.host_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let s = agent
        .wait_for(WAIT, |s| {
            s.last_error.as_deref() == Some(agent::client::SECRET_REJECTED)
        })
        .await
        .expect("the removed host's agent is refused");
    assert!(!s.connected);
    agent.shutdown().await;
    match app.ws(Some(&cfg.secret)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "a removed host's secret opens a WebSocket: {:?}",
            other.is_ok()
        ),
    }
    assert_eq!(app.state().agent_secrets.len(), 1);
    // The other host is untouched.
    wait_acked(&other).await;
    other.shutdown().await;
}
