//! Bad input, on HTTP and on the agent WebSocket: malformed JSON, unknown
//! and non-numeric ids, bad filters, paging limits, broken or hostile agent
//! frames, oversized frames, missing credentials. Every refusal is a clear
//! status and code, and changes nothing. Plus the rustls provider check
//! (wss:// must fail with an error, never a panic).
use std::time::Duration;

use crate::common::*;
use agent::wire::{self, Message as _};
use futures_util::SinkExt;
use restic_manager::{routes, store::users::Role};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, Message as WsMessage,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

// ---- Malformed JSON --------------------------------------------------------

#[tokio::test]
async fn malformed_json_on_every_json_post_is_400_invalid_json_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (host_id, _) = app.add_host_direct("web-1").await;
    let user_id = app.user("vera", Role::Viewer).await;
    // (endpoint, takes every bad body): the fleet start takes an optional
    // body of optional fields, so an empty body or unknown fields are fine
    // there; what is not JSON, or the wrong shape, is not.
    let endpoints = [
        (routes::API_LOGIN.to_string(), true),
        (routes::API_HOSTS.to_string(), true),
        (routes::API_USERS.to_string(), true),
        (routes::api_user_role(user_id), true),
        (routes::api_user_password(user_id), true),
        (routes::AGENT_ENROLL.to_string(), true),
        (routes::API_FLEET_UPDATE.to_string(), false),
    ];
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100 * 1024));
    // (content type, body, bad for every endpoint)
    let bodies: [(&str, &str, bool); 9] = [
        ("application/json", "{not json", true),
        ("application/json", "", false),
        ("application/json", "null", true),
        ("application/json", "[]", true),
        (
            "application/json",
            r#"{"name":5,"username":5,"role":5,"password":5,"token":5,"target_version":5}"#,
            true,
        ),
        ("application/json", r#"{"unrelated":"field"}"#, false),
        ("application/json", "{\"name\":\"web-2\"}trailing", true),
        ("text/plain", r#"{"name":"web-3"}"#, false),
        ("application/json", big.as_str(), false),
    ];
    let before = app.snapshot().await;
    let sessions = app.count("sessions").await;
    let mut failures = Vec::new();
    for (path, strict) in &endpoints {
        for (ctype, body, bad_everywhere) in bodies {
            if !strict && !bad_everywhere {
                continue;
            }
            let r = admin
                .post(app.at(path))
                .header("Content-Type", ctype)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            if status != 400 || v["error"] != "invalid_json" || !v["message"].is_string() {
                failures.push(format!("POST {path} ({ctype}) {:.40?}: {status} {v}", body));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.count("sessions").await, sessions, "no login happened");
    assert!(app.host_row(host_id).await.is_some());
}

// ---- Unknown and malformed ids --------------------------------------------

#[tokio::test]
async fn unknown_ids_are_404_with_the_kind_of_thing_missing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let before = app.snapshot().await;
    let id = 987_654;
    let api = [
        ("GET", routes::api_host(id), None, "host_not_found"),
        ("DELETE", routes::api_host(id), None, "host_not_found"),
        ("POST", routes::api_host_token(id), None, "host_not_found"),
        ("GET", "/api/hosts/-1".into(), None, "host_not_found"),
        ("POST", routes::api_host_update(id), None, "host_not_found"),
        ("GET", routes::api_job(id), None, "job_not_found"),
        ("GET", routes::api_job_logs(id), None, "job_not_found"),
        (
            "GET",
            routes::api_fleet_run(id),
            None,
            "fleet_update_not_found",
        ),
        (
            "POST",
            routes::api_fleet_run_cancel(id),
            None,
            "fleet_update_not_found",
        ),
        ("DELETE", routes::api_user(id), None, "user_not_found"),
        (
            "POST",
            routes::api_user_role(id),
            Some(json!({"role": "viewer"})),
            "user_not_found",
        ),
        (
            "POST",
            routes::api_user_password(id),
            Some(json!({"password": "long-enough-1"})),
            "user_not_found",
        ),
    ];
    for (method, path, body, code) in api {
        let mut req = match method {
            "GET" => admin.get(app.at(&path)),
            "POST" => admin.post(app.at(&path)),
            _ => admin.delete(app.at(&path)),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert_error(r, 404, code).await;
    }
    let r = admin
        .post(app.at(&routes::api_alert_resolve(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.ends_with("not_found")),
        "{v}"
    );
    // Pages answer with a readable 404.
    for (method, path) in [
        ("GET", routes::host(id)),
        ("POST", routes::host_token(id)),
        ("POST", routes::host_delete(id)),
    ] {
        let req = if method == "GET" {
            admin.get(app.at(&path))
        } else {
            admin.post(app.at(&path))
        };
        let page = Page::from(req.send().await.unwrap()).await;
        assert_eq!(page.status, 404, "{method} {path}");
        page.assert_html();
        assert!(
            page.one("[data-testid=error-message]")
                .contains("no such host"),
            "{}",
            page.text
        );
    }
    for action in ["delete", "role", "password"] {
        let page = Page::from(
            admin
                .post(app.at(&format!("/settings/users/{id}/{action}")))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("role=viewer&password=long-enough-1")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, 404, "{action}: {}", page.text);
        assert!(
            page.text.contains("no such user"),
            "{action}: {}",
            page.text
        );
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn non_numeric_ids_are_404_not_500() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for path in [
        "/api/hosts/abc",
        "/api/hosts/1.5",
        "/api/hosts/99999999999999999999",
        "/api/hosts/%2e%2e",
        "/api/users/abc/role",
    ] {
        let r = if path.ends_with("/role") {
            admin
                .post(app.at(path))
                .json(&json!({"role": "viewer"}))
                .send()
                .await
        } else {
            admin.get(app.at(path)).send().await
        }
        .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.ends_with("not_found")),
            "{path}: {v}"
        );
    }
    for path in ["/hosts/abc", "/hosts/1e3"] {
        let page = Page::from(admin.get(app.at(path)).send().await.unwrap()).await;
        assert_eq!(page.status, 404, "{path}");
        page.assert_html();
        assert!(page.has("[data-testid=error-message]"));
    }
}

/// Every route with an `{id}` answers a non-number like an unknown number:
/// 404 with the resource's own code (JSON) or its readable page, never the
/// generic page-not-found.
#[tokio::test]
async fn a_non_numeric_id_answers_like_an_unknown_one_on_every_route() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let mut checked = 0;
    for r in routes::ALL.iter().filter(|r| r.path.contains("{id}")) {
        let rest = r.path.strip_prefix("/api").unwrap_or(r.path);
        let rest = rest.strip_prefix("/settings").unwrap_or(rest);
        let (code, what) = match rest.split('/').nth(1).unwrap() {
            "hosts" => ("host_not_found", "no such host"),
            "jobs" => ("job_not_found", "no such job"),
            "repositories" => ("repository_not_found", "no such repository"),
            "plans" => ("plan_not_found", "no such plan"),
            "users" => ("user_not_found", "no such user"),
            "alerts" => ("alert_not_found", "no such alert"),
            "notifications" => ("target_not_found", "no such notification target"),
            "fleet-updates" | "fleet-update" => ("fleet_update_not_found", "no such fleet update"),
            other => panic!("{}: which resource is {other}?", r.path),
        };
        let path = r
            .path
            .replacen("{id}", "abc", 1)
            .replacen("{snapshot_id}", "ab12", 1);
        let m = reqwest::Method::from_bytes(r.method.as_str().as_bytes()).unwrap();
        let req = admin.request(m, app.at(&path));
        let req = if path.starts_with("/api/") {
            req.json(&json!({}))
        } else {
            req.header("Content-Type", "application/x-www-form-urlencoded")
                .body("")
        };
        let resp = req.send().await.unwrap();
        let what_path = format!("{} {path}", r.method.as_str());
        if path.starts_with("/api/") {
            assert_error(resp, 404, code).await;
        } else {
            let page = Page::from(resp).await;
            assert_eq!(page.status, 404, "{what_path}: {}", page.text);
            assert!(
                page.one("[data-testid=error-message]").contains(what),
                "{what_path}: {}",
                page.text
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "{checked} routes");
}

// ---- List filters and paging ----------------------------------------------

#[tokio::test]
async fn bad_list_filters_are_400() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for (q, code) in [
        ("status=bogus", "invalid_status"),
        ("status=ONLINE", "invalid_status"),
        ("updates=ahead", "invalid_updates"),
        ("limit=abc", "invalid_query"),
        ("limit=-1", "invalid_query"),
        ("offset=x", "invalid_query"),
    ] {
        let r = admin
            .get(format!("{}?{q}", app.at(routes::API_HOSTS)))
            .send()
            .await
            .unwrap();
        assert_error(r, 400, code).await;
    }
    for q in [
        "actor=a%00b",
        "action=%0Aforged",
        &format!("actor={}", "x".repeat(200)),
    ] {
        let r = admin
            .get(format!("{}?{q}", app.at(routes::API_AUDIT)))
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "invalid_query").await;
        let page = Page::from(
            admin
                .get(app.at(&format!("/audit?{q}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, 400, "{q}");
    }
    let page = Page::from(admin.get(app.at("/?status=bogus")).send().await.unwrap()).await;
    assert_eq!(page.status, 400);
    page.assert_html();
    assert!(
        page.one("[data-testid=error-message]")
            .contains("online or offline")
    );
}

async fn names(app: &TestApp, admin: &reqwest::Client, q: &str) -> Vec<String> {
    let r = admin
        .get(format!("{}?{q}", app.at(routes::API_HOSTS)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{q}");
    r.json::<Vec<Value>>()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn host_lists_page_in_name_order_with_limit_and_offset() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for n in ["delta", "alpha", "echo", "charlie", "bravo"] {
        app.add_host(n).await;
    }
    assert_eq!(
        names(&app, &admin, "").await,
        ["alpha", "bravo", "charlie", "delta", "echo"]
    );
    assert_eq!(names(&app, &admin, "limit=2").await, ["alpha", "bravo"]);
    assert_eq!(
        names(&app, &admin, "limit=2&offset=2").await,
        ["charlie", "delta"]
    );
    assert_eq!(names(&app, &admin, "limit=2&offset=4").await, ["echo"]);
    assert!(names(&app, &admin, "limit=2&offset=5").await.is_empty());
    assert!(names(&app, &admin, "offset=1000000").await.is_empty());
    // Filters page the same way.
    assert_eq!(
        names(&app, &admin, "status=offline&limit=1&offset=1").await,
        ["bravo"]
    );
    assert!(names(&app, &admin, "status=online").await.is_empty());
}

#[tokio::test]
async fn huge_offsets_are_an_empty_page_not_a_crash() {
    // Past i64 the database driver cannot take the value; past u64 the
    // query does not parse (400, covered above).
    let app = TestApp::spawn().await;
    app.add_host("alpha").await;
    let admin = app.admin().await;
    for big in [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        for path in [
            "/api/hosts",
            "/api/jobs",
            "/api/alerts",
            "/api/audit",
            "/",
            "/jobs",
            "/alerts",
            "/audit",
        ] {
            let url = app.at(&format!("{path}?offset={big}"));
            let r = admin.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("alpha"), "an empty page at {url}: {body}");
        }
        let r = admin
            .get(app.at(&format!("/alerts?resolved_offset={big}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Still serving.
    assert_eq!(names(&app, &admin, "").await, ["alpha"]);
}

#[tokio::test]
async fn list_limit_defaults_to_100_and_is_capped_at_1000() {
    let app = TestApp::spawn().await;
    let values: Vec<String> = (0..1005)
        .map(|i| format!("('bulk-{i:04}', '', '', '', '', FALSE, 0)"))
        .collect();
    app.db()
        .execute_unprepared(&format!(
            "INSERT INTO hosts (name, hostname, os, arch, agent_version, online, created_at) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    let admin = app.admin().await;
    let all = names(&app, &admin, "limit=5000").await;
    assert_eq!(all.len(), 1000, "limit is capped at 1000");
    assert_eq!(all[0], "bulk-0000");
    assert_eq!(all[999], "bulk-0999");
    assert_eq!(names(&app, &admin, "").await.len(), 100, "default limit");
    assert_eq!(
        names(&app, &admin, "limit=1000&offset=1000").await,
        [
            "bulk-1000",
            "bulk-1001",
            "bulk-1002",
            "bulk-1003",
            "bulk-1004"
        ]
    );
}

// ---- Agent WebSocket -------------------------------------------------------

/// An enrolled host and its secret, with nothing connected yet.
async fn enrolled(app: &TestApp) -> (i64, String) {
    let cfg = app.enrolled_host("web-1").await;
    (cfg.host_id, cfg.secret)
}

async fn online(app: &TestApp, id: i64) -> bool {
    app.host_row(id).await.is_some_and(|h| h.online)
}

#[tokio::test]
async fn a_malformed_frame_is_ignored_and_a_later_hello_still_works() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    for junk in [
        "{not json",
        "[1,2",
        r#"{"type":5}"#,
        "",
        r#"{"payload":{}}"#,
    ] {
        ws_send(&mut ws, junk).await;
    }
    ws_assert_alive(&mut ws).await;
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    let ack: wire::HelloAck = ws_expect(&mut ws, wire::HELLO_ACK).await.payload().unwrap();
    assert_eq!(ack.host_id, id);
    assert_eq!(ack.server_version, restic_manager::version::VERSION);
    eventually("host online", || async {
        online(&app, id).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_message_before_hello_is_ignored() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(
        &mut ws,
        wire::JobStarted {
            job_id: 1,
            kind: None,
        }
        .envelope()
        .to_text(),
    )
    .await;
    ws_send(&mut ws, r#"{"type":"log.stream","payload":{"job_id":1}}"#).await;
    ws_assert_alive(&mut ws).await;
    let h = app.host_row(id).await.unwrap();
    assert!(!h.online, "no hello yet: not online");
    assert_eq!(h.agent_version, "");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
}

#[tokio::test]
async fn an_unknown_message_type_is_ignored_and_the_connection_stays_acked() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    ws_send(
        &mut ws,
        r#"{"type":"future.thing","id":"x","payload":{"a":[1,2]}}"#,
    )
    .await;
    ws_send(
        &mut ws,
        r#"{"type":"job.finished","payload":"not an object"}"#,
    )
    .await;
    ws.send(WsMessage::binary(vec![0u8, 1, 2])).await.unwrap();
    ws_assert_alive(&mut ws).await;
    // Still the host's live connection: a new hello is acknowledged (a
    // repeat on one connection is not taken in; see below).
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    assert!(app.host_row(id).await.is_some_and(|h| h.online));
}

#[tokio::test]
async fn an_oversized_frame_closes_with_policy_violation_and_the_host_goes_offline() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    eventually("host online", || async {
        online(&app, id).await.then_some(())
    })
    .await;

    let big = format!(
        r#"{{"type":"log.stream","payload":{{"data":"{}"}}}}"#,
        "x".repeat(wire::MAX_FRAME_BYTES)
    );
    // The server may hang up before the whole frame is written.
    let _ = ws.send(WsMessage::text(big)).await;
    match ws_next(&mut ws).await {
        WsEvent::Close(code) => assert_eq!(code, Some(1008), "close code"),
        other => panic!("expected a policy-violation close, got {other:?}"),
    }
    eventually("host offline", || async {
        (!online(&app, id).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_oversized_message_in_small_fragments_closes_with_policy_violation() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;

    // Each fragment is under the limit; the message is over it.
    let part = "y".repeat(wire::MAX_FRAME_BYTES / 2 + 1);
    let frames = [
        Frame::message(part.clone(), OpCode::Data(Data::Text), false),
        Frame::message(part.clone(), OpCode::Data(Data::Continue), false),
        Frame::message("z", OpCode::Data(Data::Continue), true),
    ];
    for f in frames {
        if ws.send(WsMessage::Frame(f)).await.is_err() {
            break;
        }
    }
    match ws_next(&mut ws).await {
        WsEvent::Close(code) => assert_eq!(code, Some(1008), "close code"),
        other => panic!("expected a policy-violation close, got {other:?}"),
    }
    eventually("host offline", || async {
        (!online(&app, id).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hello_with_hostile_fields_is_rejected_and_not_recorded() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    // A good hello first, so there is something to overwrite.
    {
        let mut ws = app.ws(Some(&secret)).await.expect("handshake");
        ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "good-host")).await;
        ws_expect(&mut ws, wire::HELLO_ACK).await;
        ws.close(None).await.unwrap();
    }
    eventually("host offline after the good connection", || async {
        app.host_row(id).await.filter(|h| !h.online)
    })
    .await;
    let long_host = "h".repeat(254);
    let long_version = "v".repeat(65);
    let cases = [
        ("v2", "../../etc", "x86_64", "good-host"),
        ("v2", "linux", "<script>", "good-host"),
        ("v2", "linux/../x", "x86_64", "good-host"),
        ("v2", "", "", "good-host"),
        ("v2", "linux", "x86_64", long_host.as_str()),
        ("v2", "linux", "x86_64", "bad host;rm -rf"),
        ("v2", "linux", "x86_64", ""),
        ("", "linux", "x86_64", "good-host"),
        (long_version.as_str(), "linux", "x86_64", "good-host"),
        ("v2\n<b>", "linux", "x86_64", "good-host"),
    ];
    for (version, os, arch, hostname) in cases {
        let what = format!("{version:.10?}/{os:?}/{arch:?}/{hostname:.20?}");
        let mut ws = app.ws(Some(&secret)).await.expect("handshake");
        ws_send(&mut ws, hello_frame(version, os, arch, hostname)).await;
        let rejected: wire::HelloRejected = ws_expect(&mut ws, wire::HELLO_REJECTED)
            .await
            .payload()
            .unwrap();
        assert!(!rejected.reason.is_empty(), "{what}");
        assert!(
            !rejected.reason.contains("<script>") || rejected.reason.len() < 100,
            "{what}"
        );
        match ws_next(&mut ws).await {
            WsEvent::Close(code) => assert_eq!(code, Some(1008), "{what}"),
            other => panic!("{what}: expected a close after hello.rejected, got {other:?}"),
        }
        let h = app.host_row(id).await.unwrap();
        assert_eq!(
            (
                h.agent_version.as_str(),
                h.os.as_str(),
                h.arch.as_str(),
                h.hostname.as_str()
            ),
            ("v1", "linux", "x86_64", "good-host"),
            "{what} was recorded"
        );
    }
    // A hello whose payload has the wrong shape is rejected the same way.
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, r#"{"type":"agent.hello","payload":{"os":3}}"#).await;
    ws_expect(&mut ws, wire::HELLO_REJECTED).await;
    assert!(!online(&app, id).await);
}

#[tokio::test]
async fn the_websocket_handshake_needs_the_agent_secret() {
    let app = TestApp::spawn().await;
    let (id, token) = app.add_host("web-1").await;
    let expect_401 = |r: Result<Ws, tungstenite::Error>, what: &str| match r {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401, "{what}");
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            assert!(body["error"].is_string(), "{what}: JSON error body {body}");
        }
        Err(e) => panic!("{what}: expected HTTP 401, got {e}"),
        Ok(_) => panic!("{what}: the handshake succeeded"),
    };
    expect_401(app.ws(None).await, "no Authorization");
    expect_401(app.ws(Some("not-a-secret")).await, "wrong secret");
    // An enrollment token is not an agent secret.
    expect_401(app.ws(Some(&token)).await, "enrollment token");
    // Nor is an admin's session.
    let session = app.session_token("admin", ADMIN_PASSWORD).await;
    expect_401(app.ws(Some(&session)).await, "session token");
    assert!(!online(&app, id).await);
}

// ---- TLS provider ----------------------------------------------------------

/// A plain TCP server that answers anything with plain-text HTTP: a TLS
/// client talking to it must fail its handshake.
async fn plain_tcp_listener() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn wss_and_https_fail_with_tls_errors_not_a_crypto_provider_panic() {
    // Both installers may run, in any order, any number of times.
    agent::install_crypto_provider();
    restic_manager::install_crypto_provider();
    agent::install_crypto_provider();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());

    let addr = plain_tcp_listener().await;
    // tokio-tungstenite's rustls connector (the agent's WebSocket path).
    let r = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("wss://{addr}/agent/ws")),
    )
    .await
    .expect("wss connect finished");
    match r {
        Err(tungstenite::Error::Tls(_) | tungstenite::Error::Io(_)) => {}
        Err(e) => panic!("expected a TLS failure, got {e}"),
        Ok(_) => panic!("a TLS handshake with a plain-text server succeeded"),
    }

    // reqwest's rustls client (enrollment, downloads).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("building a rustls reqwest client");
    let e = client
        .get(format!("https://{addr}/api/version"))
        .send()
        .await
        .expect_err("https to a plain-text server must fail");
    assert!(e.is_connect() || e.is_request(), "{e:?}");

    // The agent's own paths, end to end.
    let e = agent::enroll::enroll(&format!("https://{addr}"), "token", "web-1")
        .await
        .expect_err("enrolling over broken TLS must fail");
    assert!(
        matches!(e, agent::enroll::EnrollError::Request { .. }),
        "{e:?}"
    );
    let cfg = agent::config::AgentConfig {
        server_url: format!("https://{addr}"),
        host_id: 1,
        secret: "s".repeat(43),
        ..Default::default()
    };
    let handle = agent::client::spawn(cfg, agent::client::RunOptions::default());
    let s = handle
        .wait_for(WAIT, |s| s.last_error.is_some())
        .await
        .expect("the agent reports the TLS failure");
    assert_eq!(s.connects, 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_htmx_request_gets_a_banner_for_the_error_slot_and_a_plain_one_a_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let viewer = app.as_role(Role::Viewer).await;
    // (client, method, path, extra header, status, words of the message)
    let cases = [
        (
            &admin,
            "GET",
            routes::host(424242),
            None,
            404,
            "no such host",
        ),
        (
            &admin,
            "GET",
            "/no-such-page".to_string(),
            None,
            404,
            "no such page",
        ),
        (
            &viewer,
            "GET",
            routes::USERS_PAGE.to_string(),
            None,
            403,
            "your role",
        ),
        (
            &admin,
            "POST",
            routes::HOST_NEW.to_string(),
            Some(("Origin", "http://evil.example")),
            403,
            "cross-site",
        ),
    ];
    for (client, method, path, extra, status, words) in cases {
        for htmx in [true, false] {
            let mut req = client.request(method.parse().unwrap(), app.at(&path));
            if htmx {
                req = req.header("HX-Request", "true");
            }
            if let Some((k, v)) = extra {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), status, "{method} {path} htmx={htmx}");
            let retarget = r.headers().get("HX-Retarget").cloned();
            let body = r.text().await.unwrap();
            assert!(body.contains(words), "{method} {path}: {body}");
            if htmx {
                assert_eq!(retarget.unwrap(), "#page-error", "{method} {path}");
                assert!(
                    body.contains("data-testid=\"error-banner\"") && !body.contains("<html"),
                    "{method} {path}: not a banner fragment: {body}"
                );
            } else {
                assert!(retarget.is_none(), "{method} {path}");
                assert!(
                    body.contains("<html"),
                    "{method} {path}: not a page: {body}"
                );
            }
        }
    }
}

// ---- Hostile agents: floods cost little -------------------------------------

/// Lines for another host's job or for a finished one are refused without a
/// write transaction: with a writer holding the database (SQLite) or the
/// job's row (Postgres), the flood is still read through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_lines_for_jobs_that_take_none_needs_no_write_lock() {
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let other = app.enrolled_host("web-2").await;
    let theirs = crate::common::sim::new_job(&app, other.host_id).await;
    let mine = crate::common::sim::new_job(&app, id).await;
    restic_manager::store::jobs::finish(
        app.db(),
        mine,
        None,
        restic_manager::store::jobs::JobStatus::Cancelled,
        None,
        None,
        1,
    )
    .await
    .unwrap()
    .unwrap();
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    // What follows the ack (updates, restic jobs) is done once this answers.
    ws_assert_alive(&mut ws).await;

    let writer = app.db().begin().await.unwrap();
    for job in [theirs, mine] {
        writer
            .execute_unprepared(&format!("UPDATE jobs SET status = status WHERE id = {job}"))
            .await
            .unwrap();
    }
    for seq in 1..=300 {
        let job = if seq % 2 == 0 { theirs } else { mine };
        ws_send(
            &mut ws,
            crate::common::sim::log_line(job, seq, "flood")
                .envelope()
                .to_text(),
        )
        .await;
    }
    tokio::time::timeout(Duration::from_secs(3), ws_assert_alive(&mut ws))
        .await
        .expect("the flood was read without waiting for the write lock");
    writer.rollback().await.unwrap();
    assert_eq!(app.count("job_logs").await, 0);
}

/// One connection's messages are read at its rate: past the burst, the
/// server reads more slowly instead of working as fast as the agent sends.
#[tokio::test]
async fn an_agent_connection_is_read_at_its_message_rate() {
    let app = TestApp::spawn_with(|s| {
        s.agent_messages_per_sec = 20;
        s.agent_messages_burst = 20;
    })
    .await;
    let (_, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    let since = std::time::Instant::now();
    for _ in 0..60 {
        ws_send(&mut ws, r#"{"type":"no.such.message","payload":{}}"#).await;
    }
    ws_assert_alive(&mut ws).await;
    // 60 messages and a ping at 20 a second after a burst of 20: about 2 s.
    assert!(
        since.elapsed() >= Duration::from_millis(1500),
        "read in {:?}",
        since.elapsed()
    );
}

/// A second hello on one connection is acknowledged and changes nothing.
#[tokio::test]
async fn a_repeated_hello_on_one_connection_costs_nothing() {
    let app = TestApp::spawn().await;
    let (id, secret) = enrolled(&app).await;
    let mut ws = app.ws(Some(&secret)).await.expect("handshake");
    ws_send(&mut ws, hello_frame("v1", "linux", "x86_64", "web-1")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    ws_assert_alive(&mut ws).await;
    // Taken in, a new version would dispatch nothing here but would be
    // recorded: watch the host row instead.
    ws_send(&mut ws, hello_frame("v2", "linux", "x86_64", "web-9")).await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;
    ws_assert_alive(&mut ws).await;
    let h = app.host_json(id).await;
    assert_eq!(h["agent_version"], "v1", "{h}");
    assert_eq!(h["hostname"], "web-1", "{h}");
}

/// `/agent/enroll` checks the token before it writes: a wrong token is
/// refused at once even while another writer holds the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_enrollment_token_is_refused_without_a_write() {
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn().await;
    let (_, token) = app.add_host("web-1").await;
    let writer = app.db().begin().await.unwrap();
    writer
        .execute_unprepared("UPDATE enrollment_tokens SET expires_at = expires_at")
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        app.anon()
            .post(app.at(routes::AGENT_ENROLL))
            .json(&json!({"token": "rme_not-a-token", "hostname": "x"}))
            .send(),
    )
    .await
    .expect("answered without waiting for the writer")
    .unwrap();
    assert_error(r, 401, "invalid_token").await;
    writer.rollback().await.unwrap();
    // The right token still enrolls.
    let r = app
        .anon()
        .post(app.at(routes::AGENT_ENROLL))
        .json(&json!({"token": token, "hostname": "web-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The agent endpoints answer anyone: each client address gets so many
/// requests a minute, then 429 `rate_limited` (others are not affected).
#[tokio::test]
async fn agent_endpoints_are_rate_limited_per_address() {
    let app = TestApp::spawn_with(|s| {
        s.agent_requests_per_min = 5;
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let get = |from: &'static str| {
        app.anon()
            .get(app.at(routes::AGENT_INSTALL_SH))
            .header("X-Forwarded-For", from)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
    }
    assert_error(get("198.51.100.1").await.unwrap(), 429, "rate_limited").await;
    let r = app
        .anon()
        .post(app.at(routes::AGENT_ENROLL))
        .header("X-Forwarded-For", "198.51.100.1")
        .json(&json!({"token": "rme_x", "hostname": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 429, "rate_limited").await;
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 200);
}
