//! Fleet backup health through the real thing: the server, real agents and
//! real restic. Each backup state (unprotected, pending, failing, ok, and
//! stale once the injectable clock moves past `--backup-stale-after`) on the
//! host objects, the `?backup=` filter of the API and the dashboard, the
//! health tiles (each links to exactly its hosts), the `backup_stale` and
//! `restic_missing` alerts raised and resolved, and `/metrics` (who may
//! read it, and the last-success series after a real backup).
use std::{collections::BTreeSet, path::Path, time::Duration};

use restic_manager::{config::Settings, routes};
use serde_json::{Value, json};

use crate::{
    common::*,
    restic::{Api, Lab, restic_bin},
};

/// Never falls due during a test (29 February), so moving the clock a day
/// ahead starts no scheduled backup or maintenance behind the test's back.
const NEVER_SOON: &str = "0 3 29 2 *";

fn quick_sweeps(s: &mut Settings) {
    s.alert_sweep_interval = Duration::from_millis(200);
    // The clock moves a day ahead; the admin's session must outlive it.
    s.session_idle = Duration::from_secs(3 * 86_400);
    s.metrics_token = Some("scrape-tok-42".into());
}

async fn repo_at(api: &Api<'_>, name: &str, path: &Path) -> i64 {
    let r = api
        .post(
            routes::API_REPOSITORIES,
            json!({"name": name, "url": path.to_str().unwrap(), "password": "pw",
                   "maintenance_schedule": NEVER_SOON}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn plan_for(api: &Api<'_>, name: &str, repo: i64, path: &Path, host: i64) -> i64 {
    let r = api
        .post(
            routes::API_PLANS,
            json!({"name": name, "repository_id": repo, "paths": [path], "schedule": NEVER_SOON,
                   "hosts": [host]}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn run_now(api: &Api<'_>, plan: i64, host: i64) -> Value {
    let r = api
        .post(&routes::api_plan_run(plan), json!({"host_id": host}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["job_ids"][0]
        .as_i64()
        .unwrap();
    api.finished(id).await
}

async fn state_of(api: &Api<'_>, host: i64) -> String {
    api.get(&routes::api_host(host)).await["backup_state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_state(api: &Api<'_>, host: i64, want: &str) -> Value {
    eventually(&format!("host {host} becomes {want}"), || async {
        let h = api.get(&routes::api_host(host)).await;
        (h["backup_state"] == want).then_some(h)
    })
    .await
}

/// Host ids `GET /api/hosts?backup=<state>` lists.
async fn api_filter(api: &Api<'_>, state: &str) -> BTreeSet<i64> {
    api.get(&format!("{}?backup={state}", routes::API_HOSTS))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["backup_state"], state, "{h}");
            h["id"].as_i64().unwrap()
        })
        .collect()
}

async fn page(api: &Api<'_>, path: &str) -> Page {
    let p = Page::from(api.c.get(api.app.at(path)).send().await.unwrap()).await;
    assert_eq!(p.status, 200, "{}", p.text);
    p.assert_html();
    p
}

fn row_ids(p: &Page) -> BTreeSet<i64> {
    let sel = scraper::Selector::parse("[data-testid=host-row]").unwrap();
    p.doc
        .select(&sel)
        .map(|e| e.value().attr("data-host-id").unwrap().parse().unwrap())
        .collect()
}

/// Every state's API filter, dashboard filter and (for failing, stale,
/// unprotected) tile agree with `want`.
async fn assert_filters(api: &Api<'_>, want: &[(&str, BTreeSet<i64>)]) {
    let dash = page(api, routes::DASHBOARD).await;
    for (state, ids) in want {
        assert_eq!(&api_filter(api, state).await, ids, "API ?backup={state}");
        let filtered = page(api, &format!("/?backup={state}")).await;
        assert_eq!(&row_ids(&filtered), ids, "dashboard ?backup={state}");
        for pill in filtered.texts("[data-testid=host-row] [data-testid=backup-state]") {
            assert_eq!(pill, *state);
        }
        if matches!(*state, "failing" | "stale" | "unprotected") {
            let tile = format!("[data-testid=tile-backup-{state}]");
            assert_eq!(
                dash.one(&format!("{tile} .tile-value")),
                ids.len().to_string(),
                "tile {state}"
            );
            let href = dash.attr(&tile, "href").unwrap();
            assert_eq!(href, format!("/?backup={state}"));
            assert_eq!(&row_ids(&page(api, &href).await), ids, "tile {state} link");
        }
    }
}

fn set(ids: &[i64]) -> BTreeSet<i64> {
    ids.iter().copied().collect()
}

async fn active_alerts(api: &Api<'_>, kind: &str) -> Vec<Value> {
    api.get(&format!("{}?state=active", routes::API_ALERTS))
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .cloned()
        .collect()
}

async fn metrics(app: &TestApp, auth: Option<&str>) -> reqwest::Response {
    let mut req = app.anon().get(app.at(routes::METRICS));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn each_backup_state_filters_tiles_stale_alerts_and_metrics_follow_real_backups() {
    let lab = Lab::new();
    let app = TestApp::spawn_with(quick_sweeps).await;
    let api = Api::new(&app).await;

    let (bare, _) = app.add_host_direct("bare").await;
    let (fresh, _) = app.add_host_direct("fresh").await;
    let good_cfg = app.enrolled_host("good").await;
    let bad_cfg = app.enrolled_host("bad").await;
    let (good, bad) = (good_cfg.host_id, bad_cfg.host_id);
    let good_agent = lab.agent(&good_cfg, &restic_bin());
    let bad_agent = lab.agent(&bad_cfg, &restic_bin());
    wait_acked(&good_agent).await;
    wait_acked(&bad_agent).await;
    let data = lab.data("data", 0);

    // No plan covers anyone yet.
    for h in [bare, fresh, good, bad] {
        let j = api.get(&routes::api_host(h)).await;
        assert_eq!(j["backup_state"], "unprotected", "{j}");
        assert_eq!(j["last_backup_at"], Value::Null);
        assert_eq!(j["last_backup_status"], Value::Null);
        assert_eq!(j["next_backup_at"], Value::Null);
    }

    let good_repo = repo_at(&api, "good-repo", &lab.path("good-repo")).await;
    let bad_repo = repo_at(&api, "bad-repo", &lab.path("bad-repo")).await;
    let good_plan = plan_for(&api, "good-plan", good_repo, &data, good).await;
    let bad_plan = plan_for(&api, "bad-plan", bad_repo, &data, bad).await;
    plan_for(&api, "fresh-plan", bad_repo, &data, fresh).await;

    // Covered, nothing finished yet: pending, with the next run stored.
    for h in [fresh, good, bad] {
        let j = wait_state(&api, h, "pending").await;
        assert!(
            j["next_backup_at"].as_str().unwrap().contains("-02-29T03:"),
            "{j}"
        );
    }
    assert_eq!(state_of(&api, bare).await, "unprotected");

    // The good host's repository exists: its backup succeeds. The bad
    // host's was never initialised: its backup fails.
    let init = api.job(good_repo, "init", good).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    assert_eq!(run_now(&api, good_plan, good).await["status"], "succeeded");
    assert_eq!(run_now(&api, bad_plan, bad).await["status"], "failed");
    let g = wait_state(&api, good, "ok").await;
    assert_eq!(g["last_backup_status"], "succeeded");
    assert!(g["last_backup_at"].is_string(), "{g}");
    let b = wait_state(&api, bad, "failing").await;
    assert_eq!(b["last_backup_status"], "failed");
    assert_filters(
        &api,
        &[
            ("unprotected", set(&[bare])),
            ("pending", set(&[fresh])),
            ("failing", set(&[bad])),
            ("ok", set(&[good])),
            ("stale", set(&[])),
        ],
    )
    .await;
    assert!(active_alerts(&api, "backup_stale").await.is_empty());

    // The metrics carry the success of good-plan on good, at its time.
    let body = metrics(&app, Some("Bearer scrape-tok-42"))
        .await
        .text()
        .await
        .unwrap();
    let series =
        "restic_manager_backup_last_success_timestamp_seconds{host=\"good\",plan=\"good-plan\"} ";
    let line = body
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    let t: i64 = line[series.len()..].trim().parse().unwrap();
    let now = app.clock.now_ms() / 1000;
    assert!(now - 600 <= t && t <= now, "{line} (now {now})");
    for want in [
        "restic_manager_backup_last_duration_seconds{host=\"good\",plan=\"good-plan\"} ",
        "restic_manager_backup_last_data_added_bytes{host=\"good\",plan=\"good-plan\"} ",
        "restic_manager_hosts_backup_state{state=\"failing\"} 1",
        "restic_manager_hosts_backup_state{state=\"unprotected\"} 1",
        "restic_manager_hosts_backup_state{state=\"pending\"} 1",
        "restic_manager_hosts_backup_state{state=\"ok\"} 1",
        "restic_manager_hosts{state=\"online\"} 2",
        "restic_manager_hosts{state=\"offline\"} 2",
        "restic_manager_agents_connected 2",
        "restic_manager_jobs{kind=\"backup\",status=\"succeeded\"} 1",
        "restic_manager_jobs{kind=\"backup\",status=\"failed\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(want)),
            "no {want} in:\n{body}"
        );
    }
    // The failed plan on bad has no success: no series for it.
    assert!(!body.contains("plan=\"bad-plan\""), "{body}");

    // A day and more later: the good host's last success is too old and
    // the fresh host never had one since it was covered: both stale. The
    // bad host is still failing (failing wins over stale).
    app.clock.advance(Duration::from_secs(27 * 3600));
    assert_filters(
        &api,
        &[
            ("unprotected", set(&[bare])),
            ("pending", set(&[])),
            ("failing", set(&[bad])),
            ("ok", set(&[])),
            ("stale", set(&[good, fresh])),
        ],
    )
    .await;
    let stale = eventually("backup_stale raised for good and fresh", || async {
        let a = active_alerts(&api, "backup_stale").await;
        // bad-plan on bad is stale too (no success since it was covered).
        (a.len() == 3).then_some(a)
    })
    .await;
    let hosts: BTreeSet<i64> = stale
        .iter()
        .map(|a| a["host_id"].as_i64().unwrap())
        .collect();
    assert_eq!(hosts, set(&[good, fresh, bad]));
    let on_good = stale.iter().find(|a| a["host_id"] == good).unwrap();
    let msg = on_good["message"].as_str().unwrap();
    assert!(msg.contains("good-plan") && msg.contains("good"), "{msg}");

    // A new success: good is ok again and its backup_stale resolves; the
    // others stay raised (and are not raised twice).
    assert_eq!(run_now(&api, good_plan, good).await["status"], "succeeded");
    wait_state(&api, good, "ok").await;
    eventually("backup_stale on good resolves", || async {
        let a = active_alerts(&api, "backup_stale").await;
        (a.len() == 2 && a.iter().all(|x| x["host_id"] != good)).then_some(())
    })
    .await;
    // Sweeps run now, whether or not the background ones did yet.
    for _ in 0..2 {
        restic_manager::alerts::sweep_once(app.state())
            .await
            .unwrap();
    }
    assert_eq!(
        app.query_one("SELECT CAST(COUNT(*) AS TEXT) FROM alerts WHERE kind = 'backup_stale'")
            .await
            .as_deref(),
        Some("3")
    );
    assert_filters(
        &api,
        &[
            ("unprotected", set(&[bare])),
            ("pending", set(&[])),
            ("failing", set(&[bad])),
            ("ok", set(&[good])),
            ("stale", set(&[fresh])),
        ],
    )
    .await;

    // An unknown state is refused on both.
    assert_error(
        api.c
            .get(app.at(&format!("{}?backup=fine", routes::API_HOSTS)))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_backup",
    )
    .await;
    let p = Page::from(api.c.get(app.at("/?backup=fine")).send().await.unwrap()).await;
    assert_eq!(p.status, 400);
    good_agent.shutdown().await;
    bad_agent.shutdown().await;
}

/// What one (plan, host) row's health columns say, for
/// [`states_combine_across_plans_in_the_filters_tiles_and_counts`].
#[derive(Clone, Copy)]
enum Row {
    Fine,
    Failed,
    /// Last success before the stale cutoff.
    Stale,
    /// Covered since before the cutoff, never finished: stale.
    NeverSinceLongAgo,
    /// Covered just now, never finished: pending.
    New,
}

#[tokio::test]
async fn states_combine_across_plans_in_the_filters_tiles_and_counts() {
    let lab = Lab::new();
    let app = TestApp::spawn_with(quick_sweeps).await;
    let api = Api::new(&app).await;
    let repo = repo_at(&api, "repo", &lab.path("repo")).await;
    let data = lab.path("data");

    // Each host with what plans a and b say about it, and its state: the
    // worst of its rows (failing > stale > pending > ok).
    use Row::*;
    let cases: [(&str, Option<Row>, Option<Row>, &str); 11] = [
        ("none", None, None, "unprotected"),
        ("ok-stale", Some(Fine), Some(Stale), "stale"),
        ("ok-new", Some(Fine), Some(New), "pending"),
        ("failed-ok", Some(Failed), Some(Fine), "failing"),
        ("stale-new", Some(Stale), Some(New), "stale"),
        ("ok-ok", Some(Fine), Some(Fine), "ok"),
        ("failed-stale", Some(Failed), Some(Stale), "failing"),
        ("never", Some(NeverSinceLongAgo), None, "stale"),
        ("new", Some(New), None, "pending"),
        ("b-ok", None, Some(Fine), "ok"),
        ("b-failed-new", Some(New), Some(Failed), "failing"),
    ];
    let mut ids = Vec::new();
    for (name, ..) in &cases {
        ids.push(app.add_host_direct(name).await.0);
    }
    let covered_by = |col: usize| -> Vec<i64> {
        cases
            .iter()
            .zip(&ids)
            .filter(|((_, a, b, _), _)| if col == 0 { a.is_some() } else { b.is_some() })
            .map(|(_, id)| *id)
            .collect()
    };
    let mut plans = Vec::new();
    for (col, name) in ["a", "b"].into_iter().enumerate() {
        let r = api
            .post(
                routes::API_PLANS,
                json!({"name": name, "repository_id": repo, "paths": [data],
                       "schedule": NEVER_SOON, "hosts": covered_by(col)}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        plans.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    let rows = covered_by(0).len() + covered_by(1).len();
    eventually("the scheduler stores every covered pair", || async {
        (app.count("plan_schedules").await == rows as i64).then_some(())
    })
    .await;

    // The rows' health columns, relative to the stale cutoff (26 h).
    let now = app.clock.now_ms();
    let (recent, old) = (now - 3_600_000, now - 30 * 3_600_000);
    for ((_, a, b, _), host) in cases.iter().zip(&ids) {
        for (row, plan) in [(a, plans[0]), (b, plans[1])] {
            let set = match row {
                None => continue,
                Some(Fine) => format!(
                    "covered_since = {old}, last_finished_at = {recent}, \
                     last_status = 'succeeded', last_success_at = {recent}"
                ),
                Some(Failed) => format!(
                    "covered_since = {old}, last_finished_at = {recent}, \
                     last_status = 'failed', last_success_at = {recent}"
                ),
                Some(Stale) => format!(
                    "covered_since = {old}, last_finished_at = {old}, \
                     last_status = 'succeeded', last_success_at = {old}"
                ),
                Some(NeverSinceLongAgo) => format!("covered_since = {old}"),
                Some(New) => format!("covered_since = {now}"),
            };
            app.query(&format!(
                "UPDATE plan_schedules SET {set} WHERE plan_id = {plan} AND host_id = {host}"
            ))
            .await;
        }
    }

    let mut want: Vec<(&str, BTreeSet<i64>)> = Vec::new();
    for state in ["unprotected", "failing", "stale", "pending", "ok"] {
        let hosts = cases
            .iter()
            .zip(&ids)
            .filter(|((.., s), _)| *s == state)
            .map(|(_, id)| *id)
            .collect();
        want.push((state, hosts));
    }
    // The host objects (judged row by row in Rust) agree with the cases...
    for ((name, .., state), id) in cases.iter().zip(&ids) {
        assert_eq!(state_of(&api, *id).await, *state, "host {name}");
    }
    // ...and so do the filters, the tiles (SQL) and the counts in /metrics.
    assert_filters(&api, &want).await;
    let body = metrics(&app, Some("Bearer scrape-tok-42"))
        .await
        .text()
        .await
        .unwrap();
    for (state, hosts) in &want {
        let line = format!(
            "restic_manager_hosts_backup_state{{state=\"{state}\"}} {}",
            hosts.len()
        );
        assert!(body.lines().any(|l| l == line), "no {line} in:\n{body}");
    }
}

#[tokio::test]
async fn restic_missing_is_raised_for_a_covered_host_without_restic_and_resolved_when_it_has_it() {
    let lab = Lab::new();
    let app = TestApp::spawn_with(quick_sweeps).await;
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("norestic").await;
    let agent = lab.agent(&cfg, Path::new("/nonexistent/restic"));
    wait_acked(&agent).await;
    eventually("the hello recorded no restic", || async {
        let h = app.host_row(cfg.host_id).await?;
        (h.restic_capable && h.restic_version.is_none()).then_some(())
    })
    .await;
    // Not covered by any plan: nothing to alert about.
    for _ in 0..2 {
        restic_manager::alerts::sweep_once(app.state())
            .await
            .unwrap();
    }
    assert!(active_alerts(&api, "restic_missing").await.is_empty());

    let repo = repo_at(&api, "r", &lab.path("repo")).await;
    let data = lab.data("data", 0);
    plan_for(&api, "p", repo, &data, cfg.host_id).await;
    let a = eventually("restic_missing raised", || async {
        active_alerts(&api, "restic_missing")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(a["host_id"], cfg.host_id);
    assert!(a["message"].as_str().unwrap().contains("norestic"), "{a}");

    // The agent comes back with restic: its hello resolves the alert.
    agent.shutdown().await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    eventually("restic_missing resolved", || async {
        active_alerts(&api, "restic_missing")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let h = app.host_row(cfg.host_id).await.unwrap();
    assert!(h.restic_version.is_some());
    agent.shutdown().await;
}

#[tokio::test]
async fn metrics_refuse_anonymous_and_a_wrong_token_and_accept_the_token_or_a_session() {
    let app = TestApp::spawn_with(quick_sweeps).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some("scrape-tok-42"),
    ] {
        let r = metrics(&app, auth).await;
        assert_eq!(r.status(), 401, "{auth:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{auth:?}");
    }
    // The scheme is case-insensitive (RFC 9110).
    assert_eq!(
        metrics(&app, Some("bearer scrape-tok-42")).await.status(),
        200
    );
    let r = metrics(&app, Some("Bearer scrape-tok-42")).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let body = r.text().await.unwrap();
    assert!(body.contains("restic_manager_hosts_behind 0"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // Any session, even a viewer's, reads them.
    let viewer = app
        .as_role(restic_manager::store::users::Role::Viewer)
        .await;
    let r = viewer.get(app.at(routes::METRICS)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("restic_manager_agents_connected 0")
    );

    // Without a configured token, no bearer opens them.
    let plain = TestApp::spawn().await;
    assert_eq!(metrics(&plain, Some("Bearer ")).await.status(), 401);
    assert_eq!(metrics(&plain, Some("Bearer x")).await.status(), 401);
}
