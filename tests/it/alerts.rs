//! Alerts (dedup, host_offline raised by the sweep and resolved by the
//! agent's hello) and webhook notifications (signed, retried, visible on the
//! settings page), through the real server, real agents and a real HTTP
//! receiver.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use hmac::{Hmac, KeyInit, Mac};
use restic_manager::{
    alerts::{self, Severity},
    routes,
    store::{self, notifications::DeliveryEvent, users::Role},
    version,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

// ---- a tiny webhook receiver ------------------------------------------------

#[derive(Clone, Debug)]
struct Received {
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// An HTTP server on 127.0.0.1 that records every request and answers with
/// the scripted statuses in order, then 200 for good.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (g, s) = (got.clone(), script.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(sock, g.clone(), s.clone()));
            }
        });
        Receiver { url, got }
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came in; returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} webhook request(s) at {}", self.url), || {
            let all = self.all();
            async move { (all.len() >= n).then_some(all) }
        })
        .await
    }
}

/// A scripted "status" for a 500 whose body never ends.
const ENDLESS: u16 = 999;

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    got.lock().unwrap().push(Received { headers, body });
    let status = script.lock().unwrap().pop_front().unwrap_or(200);
    if status == ENDLESS {
        // A 500 whose body never ends, until the client hangs up.
        let head = "HTTP/1.1 500 Endless\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("1000\r\n{}\r\n", "e".repeat(0x1000));
        while sock.write_all(chunk.as_bytes()).await.is_ok() {}
        return;
    }
    let text = if status == 200 {
        "ok"
    } else {
        "receiver is down"
    };
    let resp = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn verify_signature(secret: &str, body: &str, header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

// ---- helpers -----------------------------------------------------------------

fn fast_retries(s: &mut restic_manager::config::Settings) {
    s.notify_retry_base = Duration::from_millis(50);
    // Sweeps only when a test calls sweep_once.
    s.alert_sweep_interval = Duration::from_secs(3600);
}

async fn post_form(c: &reqwest::Client, url: String, pairs: &[(&str, &str)]) -> Page {
    let r = c
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(serde_urlencoded::to_string(pairs).unwrap())
        .send()
        .await
        .unwrap();
    Page::from(r).await
}

/// Adds a webhook target through the settings page; returns its id.
async fn add_target(app: &TestApp, name: &str, url: &str, secret: &str) -> i64 {
    let admin = app.admin().await;
    let page = post_form(
        &admin,
        app.at(routes::NOTIFICATIONS_PAGE),
        &[("name", name), ("url", url), ("secret", secret)],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(
        page.texts("td[data-testid=target-name]")
            .iter()
            .any(|n| n == name),
        "the new target is listed: {}",
        page.text
    );
    let row = app
        .query_one(&format!(
            "SELECT CAST(id AS TEXT) FROM notification_targets WHERE name = '{name}'"
        ))
        .await
        .expect("target row");
    row.parse().unwrap()
}

async fn api_alerts(c: &reqwest::Client, app: &TestApp, query: &str) -> Vec<Value> {
    let r = c
        .get(app.at(&format!("{}{query}", routes::API_ALERTS)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn settings_page(app: &TestApp) -> Page {
    let page = Page::from(
        app.admin()
            .await
            .get(app.at(routes::NOTIFICATIONS_PAGE))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200);
    page.assert_html();
    page
}

/// The delivery rows of the settings page: (event, status, attempts, error).
fn delivery_rows(page: &Page) -> Vec<(String, String, i64, String)> {
    let sel = scraper::Selector::parse("tr[data-testid=delivery-row]").unwrap();
    let err = scraper::Selector::parse("td[data-testid=delivery-error]").unwrap();
    page.doc
        .select(&sel)
        .map(|tr| {
            let a = |n| tr.value().attr(n).unwrap_or_default().to_string();
            let error = tr
                .select(&err)
                .next()
                .map(|e| e.text().collect::<String>().trim().to_string())
                .unwrap_or_default();
            (
                a("data-event"),
                a("data-status"),
                a("data-attempts").parse().unwrap(),
                error,
            )
        })
        .collect()
}

// ---- tests -----------------------------------------------------------------

#[tokio::test]
async fn a_repeat_raise_counts_and_only_changes_notify() {
    let app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[]).await;
    add_target(&app, "ops", &hook.url, "").await;
    let viewer = app.as_role(Role::Viewer).await;
    let st = app.state();

    let first = alerts::raise(st, "test_kind", "test:1", None, Severity::Info, "first")
        .await
        .unwrap();
    assert!(first.is_new());
    let again = alerts::raise(st, "test_kind", "test:1", None, Severity::Info, "second")
        .await
        .unwrap();
    assert!(!again.is_new(), "a repeat raise opened a new alert");

    let active = api_alerts(&viewer, &app, "?state=active").await;
    assert_eq!(active.len(), 1, "{active:#?}");
    assert_eq!(active[0]["count"], 2);
    assert_eq!(active[0]["message"], "second");
    assert_eq!(active[0]["kind"], "test_kind");
    assert_eq!(active[0]["severity"], "info");
    assert!(active[0]["resolved_at"].is_null());
    assert!(
        active[0]["raised_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 time: {}",
        active[0]["raised_at"]
    );
    let id = active[0]["id"].as_i64().unwrap();

    let resolved = alerts::resolve(st, "test:1").await.unwrap().unwrap();
    assert_eq!(resolved.id, id);
    assert!(
        alerts::resolve(st, "test:1").await.unwrap().is_none(),
        "resolving twice changed something"
    );
    let third = alerts::raise(st, "test_kind", "test:1", None, Severity::Info, "third")
        .await
        .unwrap();
    assert!(third.is_new());
    assert_ne!(third.alert().id, id);

    assert_eq!(api_alerts(&viewer, &app, "").await.len(), 2);
    let active = api_alerts(&viewer, &app, "?state=active").await;
    assert_eq!(active.len(), 1);
    assert_eq!(
        (active[0]["count"].as_i64(), &active[0]["message"]),
        (Some(1), &Value::from("third"))
    );
    let done = api_alerts(&viewer, &app, "?state=resolved").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["id"], id);
    assert!(done[0]["resolved_at"].is_string());
    // Paged like every list.
    assert_eq!(api_alerts(&viewer, &app, "?limit=1").await.len(), 1);
    assert_eq!(
        api_alerts(&viewer, &app, "?limit=1&offset=2").await.len(),
        0
    );

    // Raise, resolve, raise: three notifications; the repeat sent none.
    assert_eq!(app.count("notification_deliveries").await, 3);
    let got = hook.wait_for(3).await;
    let events: Vec<_> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["alert.raised", "alert.resolved", "alert.raised"]);
    assert!(got.iter().all(|r| r.header("x-rm-signature").is_none()));
}

#[tokio::test]
async fn host_offline_is_raised_after_the_threshold_and_resolved_on_reconnect() {
    let app = TestApp::spawn_with(|s| {
        fast_retries(s);
        s.offline_alert_after = Duration::from_secs(300);
    })
    .await;
    let hook = Receiver::start(&[]).await;
    add_target(&app, "ops", &hook.url, "").await;
    let (cfg, agent) = app.host("web-1").online().await;
    agent.shutdown().await;
    eventually("host marked offline", || async {
        app.host_row(cfg.host_id)
            .await
            .filter(|h| !h.online)
            .map(|_| ())
    })
    .await;

    // Offline, but not for long enough yet.
    let swept = alerts::sweep_once(app.state()).await.unwrap();
    assert_eq!(swept.raised, 0);
    assert!(api_alerts(&app.admin().await, &app, "").await.is_empty());

    app.clock.advance(Duration::from_secs(301));
    let swept = alerts::sweep_once(app.state()).await.unwrap();
    assert_eq!(swept.raised, 1);
    // The next sweep sees the alert already active.
    assert_eq!(alerts::sweep_once(app.state()).await.unwrap().raised, 0);

    let viewer = app.as_role(Role::Viewer).await;
    let active = api_alerts(&viewer, &app, "?state=active").await;
    assert_eq!(active.len(), 1, "{active:#?}");
    let a = &active[0];
    assert_eq!(a["kind"], "host_offline");
    assert_eq!(a["host_id"], cfg.host_id);
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["count"], 1);
    let msg = a["message"].as_str().unwrap();
    assert!(
        msg.starts_with("host web-1 has been offline since 20"),
        "{msg}"
    );

    // The alerts page shows it to a viewer, in the active section.
    let page = Page::from(
        viewer
            .get(app.at(routes::ALERTS_PAGE))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.one(
            "[data-testid=active-alerts] tr[data-testid=alert-row] td[data-testid=alert-message]"
        )
        .starts_with("host web-1 has been offline")
    );
    assert!(!page.has("[data-testid=resolved-alerts] tr[data-testid=alert-row]"));

    // The agent comes back: its hello resolves the alert (no sweep runs).
    let agent = app.agent(&cfg, "v1");
    wait_acked(&agent).await;
    let resolved = eventually("host_offline resolved", || async {
        let r = api_alerts(&viewer, &app, "?state=resolved").await;
        (r.len() == 1).then_some(r)
    })
    .await;
    assert_eq!(resolved[0]["id"], a["id"]);
    assert!(api_alerts(&viewer, &app, "?state=active").await.is_empty());

    let got = hook.wait_for(2).await;
    let raised = got[0].json();
    assert_eq!(raised["event"], "alert.raised");
    assert_eq!(raised["alert"]["kind"], "host_offline");
    assert_eq!(raised["alert"]["host_name"], "web-1");
    assert_eq!(raised["alert"]["host_id"], cfg.host_id);
    let back = got[1].json();
    assert_eq!(back["event"], "alert.resolved");
    assert!(back["alert"]["resolved_at"].is_string());
    agent.shutdown().await;
}

#[tokio::test]
async fn the_background_sweep_raises_host_offline_on_its_own() {
    let app = TestApp::spawn_with(|s| {
        s.offline_alert_after = Duration::from_secs(1);
        s.alert_sweep_interval = Duration::from_millis(100);
    })
    .await;
    let (cfg, agent) = app.host("db-1").online().await;
    agent.shutdown().await;
    let admin = app.admin().await;
    let active = eventually("the sweeper raises host_offline", || async {
        let a = api_alerts(&admin, &app, "?state=active").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(active[0]["kind"], "host_offline");
    assert_eq!(active[0]["host_id"], cfg.host_id);
}

#[tokio::test]
async fn webhooks_are_signed_with_the_target_secret() {
    let app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[]).await;
    let secret = "s3cret-for-hmac-test";
    add_target(&app, "signed", &hook.url, secret).await;
    let (host_id, _) = app.add_host_direct("web-2").await;

    alerts::raise(
        app.state(),
        alerts::UPDATE_FAILED,
        &alerts::update_failed_key(host_id),
        Some(host_id),
        Severity::Warning,
        "agent update on web-2 failed",
    )
    .await
    .unwrap();
    let got = hook.wait_for(1).await;
    let r = &got[0];
    let sig = r.header("x-rm-signature").expect("a signature header");
    assert!(
        verify_signature(secret, &r.body, sig),
        "bad signature {sig}"
    );
    // The check can fail: another body or another key does not verify.
    assert!(!verify_signature(
        secret,
        &r.body.replace("web-2", "web-3"),
        sig
    ));
    assert!(!verify_signature("other-secret", &r.body, sig));
    assert_eq!(r.header("x-rm-event"), Some("alert.raised"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("user-agent").map(str::to_string),
        Some(format!("restic-manager/{}", version::VERSION))
    );
    let body = r.json();
    assert_eq!(body["event"], "alert.raised");
    assert!(body["sent_at"].is_string());
    let a = &body["alert"];
    assert_eq!(a["kind"], "update_failed");
    assert_eq!(a["severity"], "warning");
    assert_eq!(a["host_id"], host_id);
    assert_eq!(a["host_name"], "web-2");
    assert_eq!(a["message"], "agent update on web-2 failed");
    assert_eq!(a["count"], 1);
    assert!(a["resolved_at"].is_null());
    assert!(a["id"].as_i64().is_some_and(|id| id > 0));

    alerts::resolve_update_failed(app.state(), host_id).await;
    let got = hook.wait_for(2).await;
    assert_eq!(got[1].header("x-rm-event"), Some("alert.resolved"));
    assert!(verify_signature(
        secret,
        &got[1].body,
        got[1].header("x-rm-signature").unwrap()
    ));

    // The secret is stored to sign, but never shown back.
    let page = settings_page(&app).await;
    assert_eq!(page.one("td[data-testid=target-secret]"), "set");
    assert!(!page.text.contains(secret));
    let audit = app
        .admin()
        .await
        .get(app.at("/api/audit?action=notification.target_add"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("notification.target_add") && !audit.contains(secret));
}

#[tokio::test]
async fn a_failed_delivery_is_retried_and_failures_show_on_the_settings_page() {
    let app = TestApp::spawn_with(fast_retries).await;
    let flaky = Receiver::start(&[500]).await;
    let down = Receiver::start(&[503; 10]).await;
    add_target(&app, "flaky", &flaky.url, "k").await;
    add_target(&app, "down", &down.url, "").await;

    alerts::raise_fleet_update_halted(app.state(), 7, "host web-9 failed its update").await;

    let got = flaky.wait_for(2).await;
    // A retry sends the same event again, signed again.
    assert_eq!(got[0].json()["alert"], got[1].json()["alert"]);
    assert!(verify_signature(
        "k",
        &got[1].body,
        got[1].header("x-rm-signature").unwrap()
    ));
    assert_eq!(got[1].json()["alert"]["kind"], "fleet_update_halted");
    assert!(got[1].json()["alert"]["host_id"].is_null());

    let rows = eventually("both deliveries settle", || async {
        let page = settings_page(&app).await;
        let rows = delivery_rows(&page);
        rows.iter().all(|r| r.1 != "pending").then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let delivered = rows
        .iter()
        .find(|r| r.1 == "delivered")
        .expect("delivered row");
    assert_eq!(delivered.2, 2, "delivered after one retry: {rows:?}");
    assert!(
        delivered.3.contains("HTTP 500"),
        "first failure kept: {rows:?}"
    );
    let failed = rows.iter().find(|r| r.1 == "failed").expect("failed row");
    assert_eq!(failed.2, 5, "gave up after five attempts: {rows:?}");
    assert!(failed.3.contains("HTTP 503"), "{rows:?}");
    assert!(failed.3.contains("receiver is down"), "{rows:?}");
    assert_eq!(flaky.all().len(), 2, "a delivered webhook was sent again");
    assert_eq!(down.all().len(), 5);
}

#[tokio::test]
async fn a_failure_answered_with_an_endless_body_shows_its_start() {
    // The error keeps the start of the answer; the rest is never read.
    let app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[ENDLESS; 10]).await;
    add_target(&app, "endless", &hook.url, "").await;
    alerts::raise_fleet_update_halted(app.state(), 7, "host web-9 failed its update").await;
    let rows = eventually("the delivery fails", || async {
        let rows = delivery_rows(&settings_page(&app).await);
        rows.first()
            .is_some_and(|r| r.3.starts_with("HTTP 500"))
            .then_some(rows)
    })
    .await;
    assert!(rows[0].3.contains("Server Error: eeee"), "{rows:?}");
}

#[tokio::test]
async fn the_test_button_sends_a_test_event_and_changes_are_audited() {
    let app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[]).await;
    let id = add_target(&app, "chat", &hook.url, "").await;
    let admin = app.admin().await;

    let page = post_form(&admin, app.at(&routes::notification_target_test(id)), &[]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("test notification queued for chat"));
    let got = hook.wait_for(1).await;
    assert_eq!(got[0].header("x-rm-event"), Some("test"));
    assert!(
        got[0].header("x-rm-signature").is_none(),
        "no secret, no signature"
    );
    let body = got[0].json();
    assert_eq!(body["event"], "test");
    assert_eq!(body["alert"]["kind"], "test");
    let rows = eventually("the test delivery is delivered", || async {
        let rows = delivery_rows(&settings_page(&app).await);
        (rows.first().is_some_and(|r| r.1 == "delivered")).then_some(rows)
    })
    .await;
    assert_eq!(rows[0].0, "test");
    assert_eq!(rows[0].2, 1);

    // Unknown target, bad URLs: refused, nothing added.
    let page = post_form(&admin, app.at(&routes::notification_target_test(9999)), &[]).await;
    assert_eq!(page.status, 404);
    for bad in ["ftp://example.com/x", "not a url", "file:///etc/passwd"] {
        let page = post_form(
            &admin,
            app.at(routes::NOTIFICATIONS_PAGE),
            &[("name", "bad"), ("url", bad), ("secret", "")],
        )
        .await;
        assert_eq!(page.status, 400, "{bad}");
        assert!(page.has("[data-testid=error-banner]"));
    }
    // A secret with a NUL (which Postgres would refuse) is a clear 400.
    let page = post_form(
        &admin,
        app.at(routes::NOTIFICATIONS_PAGE),
        &[
            ("name", "bad"),
            ("url", "https://hooks.example.com/x"),
            ("secret", "a\u{0}b"),
        ],
    )
    .await;
    assert_eq!(page.status, 400);
    assert!(
        page.one("[data-testid=error-banner]")
            .contains("no control characters"),
        "{}",
        page.text
    );
    assert_eq!(app.count("notification_targets").await, 1);

    let page = post_form(&admin, app.at(&routes::notification_target_delete(id)), &[]).await;
    assert_eq!(page.status, 200);
    assert!(!page.has("tr[data-testid=target-row]"));
    assert_eq!(app.count("notification_targets").await, 0);
    assert_eq!(app.count("notification_deliveries").await, 0);

    let audit: Vec<Value> = admin
        .get(app.at("/api/audit?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for action in [
        "notification.target_add",
        "notification.test",
        "notification.target_remove",
    ] {
        let row = audit
            .iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no {action} row in {audit:#?}"));
        assert_eq!(row["actor"], "admin");
        assert_eq!(row["target_kind"], "notification_target");
        assert_eq!(row["target_id"], id.to_string());
    }
}

#[tokio::test]
async fn pending_deliveries_are_sent_after_a_restart() {
    let mut app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[]).await;
    let id = add_target(&app, "later", &hook.url, "").await;
    // A row written but never queued: as if the server stopped right after.
    let d = store::notifications::create_delivery(
        app.db(),
        id,
        None,
        DeliveryEvent::Test,
        r#"{"event":"test","alert":{"id":0,"kind":"test"}}"#,
        app.clock.now_ms(),
    )
    .await
    .unwrap();
    app.restart().await;
    let got = hook.wait_for(1).await;
    assert_eq!(
        got[0].header("x-rm-delivery"),
        Some(d.id.to_string().as_str())
    );
    assert_eq!(got[0].json()["event"], "test");
    eventually("the resumed delivery is recorded", || async {
        let d = store::notifications::get_delivery(app.db(), d.id)
            .await
            .unwrap();
        (d.status == store::notifications::DeliveryStatus::Delivered).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn viewers_see_alerts_but_not_the_notification_settings() {
    let app = TestApp::spawn_with(fast_retries).await;
    let id = add_target(&app, "ops", "http://127.0.0.1:9/hook", "").await;
    alerts::raise(
        app.state(),
        "test_kind",
        "test:v",
        None,
        Severity::Warning,
        "visible",
    )
    .await
    .unwrap();

    for role in [Role::Viewer, Role::Operator] {
        let c = app.as_role(role).await;
        let list = api_alerts(&c, &app, "").await;
        assert_eq!(list.len(), 1, "{role:?}");
        let page = Page::from(c.get(app.at(routes::ALERTS_PAGE)).send().await.unwrap()).await;
        assert_eq!(page.status, 200);
        page.assert_html();
        assert_eq!(page.one("td[data-testid=alert-message]"), "visible");
        let nav = page.texts("header nav a");
        assert!(nav.iter().any(|t| t == "Alerts"), "{nav:?}");
        assert!(!nav.iter().any(|t| t == "Notifications"), "{nav:?}");
        // No resolve button for them, and the API refuses.
        assert!(
            !page
                .text
                .contains(&routes::alert_resolve(list[0]["id"].as_i64().unwrap()))
        );
        let r = c
            .post(app.at(&routes::api_alert_resolve(list[0]["id"].as_i64().unwrap())))
            .send()
            .await
            .unwrap();
        assert_error(r, 403, "forbidden").await;

        let page = Page::from(
            c.get(app.at(routes::NOTIFICATIONS_PAGE))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, 403, "{role:?} reached the settings page");
        page.assert_html();
        assert!(!page.text.contains("127.0.0.1:9"));
        for (path, pairs) in [
            (
                routes::NOTIFICATIONS_PAGE.to_string(),
                vec![
                    ("name", "evil"),
                    ("url", "http://evil.example/"),
                    ("secret", ""),
                ],
            ),
            (routes::notification_target_test(id), vec![]),
            (routes::notification_target_delete(id), vec![]),
        ] {
            let page = post_form(&c, app.at(&path), &pairs).await;
            assert_eq!(page.status, 403, "{role:?} POST {path}");
        }
    }
    assert_eq!(app.count("notification_targets").await, 1);
    assert_eq!(app.count("notification_deliveries").await, 1);

    // Everyone needs a session; bad filters are refused.
    let r = app
        .anon()
        .get(app.at(routes::API_ALERTS))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let admin = app.admin().await;
    let r = admin
        .get(app.at(&format!("{}?state=open", routes::API_ALERTS)))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_state").await;

    // Admins see the nav entry and can resolve by hand, once.
    let page = Page::from(admin.get(app.at(routes::ALERTS_PAGE)).send().await.unwrap()).await;
    assert!(
        page.texts("header nav a")
            .iter()
            .any(|t| t == "Notifications")
    );
    let alert_id = api_alerts(&admin, &app, "").await[0]["id"]
        .as_i64()
        .unwrap();
    let r = admin
        .post(app.at(&routes::api_alert_resolve(alert_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin
        .post(app.at(&routes::api_alert_resolve(alert_id)))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "already_resolved").await;
}

#[tokio::test]
async fn the_alerts_page_refreshes_itself_with_a_partial() {
    let app = TestApp::spawn_with(fast_retries).await;
    alerts::raise(
        app.state(),
        "test_kind",
        "test:p",
        None,
        Severity::Critical,
        "now",
    )
    .await
    .unwrap();
    let viewer = app.as_role(Role::Viewer).await;
    let full = Page::from(
        viewer
            .get(app.at(routes::ALERTS_PAGE))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        full.attr("#alerts-body", "hx-trigger").as_deref(),
        Some("every 10s")
    );
    assert_eq!(
        full.attr("#alerts-body", "hx-get").as_deref(),
        Some(routes::ALERTS_PAGE)
    );
    assert_eq!(full.one("[data-testid=severity]"), "critical");

    alerts::resolve(app.state(), "test:p").await.unwrap();
    let r = viewer
        .get(app.at(routes::ALERTS_PAGE))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    let partial = Page::from(r).await;
    assert_eq!(partial.status, 200);
    assert!(!partial.text.contains("<html"), "a partial, not a page");
    assert!(partial.has("#alerts-body"));
    assert!(!partial.has("[data-testid=active-alerts] tr[data-testid=alert-row]"));
    assert_eq!(
        partial.one("[data-testid=resolved-alerts] td[data-testid=alert-message]"),
        "now"
    );
}

#[tokio::test]
async fn concurrent_raises_of_one_key_make_one_alert() {
    let app = TestApp::spawn_with(fast_retries).await;
    let st = app.state().clone();
    let raises: Vec<_> = (0..12)
        .map(|i| {
            let st = st.clone();
            tokio::spawn(async move {
                alerts::raise(
                    &st,
                    "test_kind",
                    "test:race",
                    None,
                    Severity::Warning,
                    &format!("r{i}"),
                )
                .await
                .unwrap()
                .is_new()
            })
        })
        .collect();
    let mut new = 0;
    for r in raises {
        new += usize::from(r.await.unwrap());
    }
    assert_eq!(new, 1, "exactly one raise opened the alert");
    let all = api_alerts(&app.admin().await, &app, "").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["count"], 12);
}

/// Removes every data pack of a local restic repository.
fn remove_packs(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += remove_packs(&p);
        } else {
            std::fs::remove_file(&p).unwrap();
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_failed_repository_check_raises_an_alert_that_webhooks_carry_and_a_passing_check_resolves()
 {
    use crate::restic::{Api, Lab, backup, restic_bin};
    let hook = Receiver::start(&[]).await;
    let app = TestApp::spawn().await;
    add_target(&app, "ops", &hook.url, "").await;
    let lab = Lab::new();
    let api = Api::new(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = lab.agent(&cfg, &restic_bin());
    wait_acked(&agent).await;
    let path = lab.path("repo");
    let repo = api.repo("vault", path.to_str().unwrap(), "pw").await;
    let init = api.job(repo, "init", cfg.host_id).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let data = lab.data("data", 0);
    let b = backup(&app, repo, cfg.host_id, &[&data]).await;
    assert_eq!(api.finished(b).await["status"], "succeeded");

    // Lose the data packs: restic's check finds the index pointing nowhere.
    assert!(remove_packs(&path.join("data")) > 0);
    let c = api.job(repo, "check", cfg.host_id).await;
    let j = api.finished(c).await;
    assert_eq!(j["status"], "failed", "{}", api.log(c).await);
    let admin = app.admin().await;
    let active = api_alerts(&admin, &app, "?state=active").await;
    let alert = active
        .iter()
        .find(|a| a["kind"] == "repository_check_failed")
        .unwrap_or_else(|| panic!("no repository_check_failed alert: {active:?}"));
    assert_eq!(alert["host_id"], cfg.host_id);
    assert!(
        alert["message"].as_str().unwrap().contains("vault"),
        "{alert}"
    );
    let got = hook.wait_for(1).await;
    let sent = got
        .iter()
        .map(Received::json)
        .find(|b| b["alert"]["kind"] == "repository_check_failed")
        .expect("the webhook carried the alert");
    assert_eq!(sent["event"], "alert.raised");

    // A sound repository again: the next passing check resolves it.
    std::fs::remove_dir_all(&path).unwrap();
    let init = api.job(repo, "init", cfg.host_id).await;
    assert_eq!(api.finished(init).await["status"], "succeeded");
    let c = api.job(repo, "check", cfg.host_id).await;
    assert_eq!(api.finished(c).await["status"], "succeeded");
    // The job reads as ended once its row is written; what its end means
    // (the resolve and its webhook, one transaction) follows just after.
    eventually("the check alert resolved", || async {
        let active = api_alerts(&admin, &app, "?state=active").await;
        (!active
            .iter()
            .any(|a| a["kind"] == "repository_check_failed"))
        .then_some(())
    })
    .await;
    let got = hook.wait_for(2).await;
    assert!(
        got.iter()
            .map(Received::json)
            .any(|b| b["event"] == "alert.resolved"
                && b["alert"]["kind"] == "repository_check_failed"),
        "the webhook carried the resolve"
    );
    agent.shutdown().await;
}

/// Marks an alert message whose webhook delivery the database refuses.
const REFUSED: &str = "REFUSE-DELIVERY";

/// A trigger that makes inserting a delivery whose payload holds
/// [`REFUSED`] fail: a failure injected between an alert and its
/// deliveries, switched by the alert's message (no DDL while the server
/// runs, whose SQLite connections cache the schema).
async fn refuse_marked_deliveries(app: &TestApp) {
    use sea_orm::ConnectionTrait;
    let sql: &[&str] = if app.is_sqlite() {
        &[
            "CREATE TRIGGER refuse_deliveries BEFORE INSERT ON notification_deliveries \
           WHEN NEW.payload LIKE '%REFUSE-DELIVERY%' \
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        ]
    } else {
        &[
            "CREATE FUNCTION refuse_delivery() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.payload LIKE '%REFUSE-DELIVERY%' THEN RAISE EXCEPTION 'injected failure'; \
             END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_deliveries BEFORE INSERT ON notification_deliveries \
             FOR EACH ROW EXECUTE FUNCTION refuse_delivery()",
        ]
    };
    for s in sql {
        app.db().execute_unprepared(s).await.unwrap();
    }
}

#[tokio::test]
async fn an_alert_and_its_webhook_deliveries_are_written_together() {
    let app = TestApp::spawn_with(fast_retries).await;
    let hook = Receiver::start(&[]).await;
    add_target(&app, "ops", &hook.url, "").await;
    refuse_marked_deliveries(&app).await;
    let st = app.state();
    let raise = |message: &'static str| {
        alerts::raise(st, "test_kind", "test:tx", None, Severity::Warning, message)
    };
    let refused = "disk full REFUSE-DELIVERY";
    assert!(refused.contains(REFUSED));

    // Writing the delivery fails: the alert is not recorded either.
    let r = raise(refused).await;
    assert!(r.is_err(), "the raise reported success: {r:?}");
    assert_eq!(
        app.count("alerts").await,
        0,
        "an alert without its delivery"
    );

    assert!(raise("disk full").await.unwrap().is_new());
    assert_eq!(app.count("notification_deliveries").await, 1);

    // Resolving: the same; the alert stays active without its delivery. (A
    // repeat raise sends nothing, and makes the resolve's payload refused.)
    assert!(!raise(refused).await.unwrap().is_new());
    assert!(alerts::resolve(st, "test:tx").await.is_err());
    let active = || app.count("alerts WHERE resolved_at IS NULL");
    assert_eq!(active().await, 1, "resolved without its delivery");
    assert!(!raise("disk full").await.unwrap().is_new());
    assert!(alerts::resolve(st, "test:tx").await.unwrap().is_some());
    assert_eq!(active().await, 0);
    assert_eq!(app.count("notification_deliveries").await, 2);

    let events: Vec<_> = hook
        .wait_for(2)
        .await
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["alert.raised", "alert.resolved"]);
}
