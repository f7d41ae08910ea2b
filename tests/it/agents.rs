//! Real agents over real WebSockets: enroll, hello, online → offline,
//! replacement on reconnect.
use crate::common::*;

#[tokio::test]
async fn enrolled_agent_says_hello_and_goes_offline_when_it_stops() {
    let app = TestApp::spawn().await;
    let (cfg, agent) = app.host("web-1").version("v1.0.0").online().await;

    let h = app.host_json(cfg.host_id).await;
    assert_eq!(h["online"], true, "{h}");
    assert_eq!(h["agent_version"], "v1.0.0");
    assert_eq!(h["os"], "linux");
    assert_eq!(h["arch"], "x86_64");
    assert_eq!(h["hostname"], format!("host-{}", cfg.host_id));
    assert!(h["last_seen_at"].is_string());

    agent.shutdown().await;
    eventually("host goes offline", || async {
        (app.host_json(cfg.host_id).await["online"] == false).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_host_replaces_the_first() {
    let app = TestApp::spawn().await;
    let (cfg, first) = app.host("web-1").online().await;
    let second = app.agent(&cfg, "v2");
    wait_acked(&second).await;
    // The first is closed by the server; it keeps reconnecting and in turn
    // replaces the second, but the host stays online throughout.
    first
        .wait_for(WAIT, |s| s.connects >= 2)
        .await
        .expect("first agent was disconnected and reconnected");
    first.shutdown().await;
    wait_acked(&second).await;
    eventually("host online with the remaining agent", || async {
        let h = app.host_json(cfg.host_id).await;
        (h["online"] == true && h["agent_version"] == "v2").then_some(())
    })
    .await;
    second.shutdown().await;
}

#[tokio::test]
async fn agent_with_a_wrong_secret_is_refused() {
    let app = TestApp::spawn().await;
    let mut cfg = app.enrolled_host("web-1").await;
    cfg.secret = "not-the-secret".into();
    let agent = app.agent(&cfg, "v1");
    let s = agent
        .wait_for(WAIT, |s| s.last_error.is_some())
        .await
        .expect("connection refused");
    assert!(!s.acked);
    assert_eq!(app.host_json(cfg.host_id).await["online"], false);
    agent.shutdown().await;
}

/// An agent that keeps sending pings but never reads what the server sends
/// (pongs, pings, its hello ack) is dropped within the ping timeout: its
/// pings are no sign that it reads.
#[tokio::test]
async fn an_agent_that_pings_but_never_reads_is_dropped_within_the_ping_timeout() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::spawn().await;
    let cfg = app.enrolled_host("deaf-1").await;
    let mut ws = app.ws(Some(&cfg.secret)).await.expect("handshake");
    ws.send(Message::text(hello_frame(
        "v1", "linux", "x86_64", "deaf-1",
    )))
    .await
    .unwrap();
    eventually("host online", || async {
        (app.host_json(cfg.host_id).await["online"] == true).then_some(())
    })
    .await;
    let since = std::time::Instant::now();
    // Only ever writes; the server's frames pile up unread.
    let pinger = tokio::spawn(async move {
        loop {
            if ws.send(Message::Ping(vec![1].into())).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let limit = app.settings.agent_ping_timeout + app.settings.agent_ping_interval * 4;
    eventually_within(limit, "the deaf agent is dropped", || async {
        (app.host_json(cfg.host_id).await["online"] == false).then_some(())
    })
    .await;
    assert!(
        since.elapsed() >= app.settings.agent_ping_timeout / 2,
        "dropped for silence, not at once"
    );
    assert!(!app.state().hub.is_online(cfg.host_id));
    pinger.abort();
}
