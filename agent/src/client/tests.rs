use super::backoff::jitter;
use super::session::ws_request;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::*;
use crate::config::{AgentConfig, ServerUrlError};
use crate::version;
use crate::wire::{
    self, CommandUpdate, Envelope, FinishedStatus, Hello, HelloAck, HelloRejected, JobFinished,
    Message, UpdateReport,
};
use crate::wire::{JOB_FINISHED, UpdateOutcome};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

const SECRET: &str = "test-secret-1";
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn ws_urls_follow_the_server_url() {
    let cases = [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/agent/ws"),
        ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/agent/ws"),
        ("https://rm.example.com", "wss://rm.example.com/agent/ws"),
        (
            "https://rm.example.com/rm/",
            "wss://rm.example.com/rm/agent/ws",
        ),
        (
            "https://rm.example.com:8443/a/b",
            "wss://rm.example.com:8443/a/b/agent/ws",
        ),
    ];
    for (server, want) in cases {
        assert_eq!(ws_url(server).unwrap().as_str(), want, "{server}");
    }
    assert!(matches!(
        ws_url("ftp://rm.example.com"),
        Err(ServerUrlError::Scheme { .. })
    ));
    assert!(ws_url("rm.example.com").is_err());
}

#[test]
fn request_carries_the_bearer_secret_but_never_shows_it() {
    let url = ws_url("http://127.0.0.1:1").unwrap();
    let request = ws_request(&url, SECRET).unwrap();
    let auth = request.headers().get(http::header::AUTHORIZATION).unwrap();
    assert_eq!(auth.to_str().unwrap(), format!("Bearer {SECRET}"));
    assert!(!format!("{request:?}").contains(SECRET));
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter_in_bounds() {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    for base in [1, 2, 4, 8, 16, 30, 30, 30] {
        let base = Duration::from_secs(base);
        let delay = backoff.next_delay();
        assert!(delay >= base / 2 && delay <= base, "{delay:?} vs {base:?}");
    }
    backoff.reset();
    let delay = backoff.next_delay();
    assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1));
    let capped = backoff.cap_delay();
    assert!(capped >= Duration::from_secs(15) && capped <= Duration::from_secs(30));
}

#[test]
fn jitter_spreads_within_half_to_full() {
    let delay = Duration::from_secs(10);
    let samples: Vec<_> = (0..200).map(|_| jitter(delay)).collect();
    assert!(samples.iter().all(|d| *d >= delay / 2 && *d <= delay));
    let distinct: std::collections::HashSet<_> = samples.iter().collect();
    assert!(
        distinct.len() > 100,
        "jitter is not random: {}",
        distinct.len()
    );
    assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
}

#[test]
fn backoff_tolerates_silly_settings() {
    // A cap below the initial delay means "always the initial delay".
    let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
    assert!(backoff.next_delay() <= Duration::from_secs(5));
    assert!(backoff.next_delay() <= Duration::from_secs(5));
}

fn test_config(url: &str) -> AgentConfig {
    AgentConfig {
        server_url: url.to_string(),
        host_id: 7,
        secret: SECRET.to_string(),
        ..AgentConfig::default()
    }
}

fn fast_opts() -> RunOptions {
    RunOptions {
        identity: Identity {
            hostname: "test-host".into(),
            ..Identity::default()
        },
        backoff_initial: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        idle_timeout: Duration::from_secs(5),
        ..RunOptions::default()
    }
}

type ServerWs = WebSocketStream<TcpStream>;

/// A minimal agent endpoint: checks the bearer secret at the handshake
/// (401 otherwise) and hands each accepted socket, numbered from 1, to
/// `per_conn`. Returns the base URL to give the agent.
async fn serve<F, Fut>(per_conn: F) -> String
where
    F: Fn(u64, ServerWs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((socket, _)) = listener.accept().await {
            // The Err type is tungstenite's, not ours to shrink.
            #[allow(clippy::result_large_err)]
            let check = |request: &Request, response: Response| {
                assert_eq!(request.uri().path(), "/agent/ws");
                let auth = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if auth == Some(format!("Bearer {SECRET}").as_str()) {
                    Ok(response)
                } else {
                    let mut refusal = ErrorResponse::new(Some("bad secret".into()));
                    *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                    Err(refusal)
                }
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(socket, check).await {
                n += 1;
                tokio::spawn(per_conn(n, ws));
            }
        }
    });
    url
}

/// The next text frame as an envelope, skipping control frames.
async fn next_frame(ws: &mut ServerWs) -> Option<Envelope> {
    loop {
        match ws.next().await? {
            Ok(WsMessage::Text(text)) => return Envelope::parse(&text).ok(),
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(ws: &mut ServerWs, text: String) {
    ws.send(WsMessage::text(text)).await.unwrap();
}

fn ack() -> String {
    HelloAck {
        host_id: 7,
        server_version: "v-test".into(),
    }
    .envelope()
    .to_text()
}

#[tokio::test]
async fn hellos_then_reconnects_when_the_server_closes() {
    let (hellos_tx, mut hellos) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let hellos_tx = hellos_tx.clone();
        async move {
            let hello = next_frame(&mut ws).await;
            let _ = hellos_tx.send(hello);
            send(&mut ws, ack()).await;
            let _ = ws.close(None).await;
        }
    })
    .await;

    let agent = spawn(test_config(&url), fast_opts());
    let state = agent
        .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 1)
        .await
        .expect("agent reconnected");
    assert!(state.last_reject.is_none());

    let hello = hellos.recv().await.flatten().expect("a hello frame");
    assert_eq!(hello.kind, wire::AGENT_HELLO);
    let hello: Hello = hello.payload().unwrap();
    assert_eq!(
        hello,
        Hello {
            agent_version: version::VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            hostname: "test-host".into(),
            update: None,
            ..Default::default()
        }
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn unknown_and_malformed_frames_do_not_break_the_connection() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let seen_tx = seen_tx.clone();
        async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            send(
                &mut ws,
                r#"{"type":"future.thing","payload":{"x":1}}"#.into(),
            )
            .await;
            send(&mut ws, "{not json".into()).await;
            send(
                &mut ws,
                r#"{"type":"command.update","payload":{"oops":1}}"#.into(),
            )
            .await;
            ws.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
            ws.send(WsMessage::Ping(b"still there?".to_vec().into()))
                .await
                .unwrap();
            let mut update = CommandUpdate {
                job_id: 31,
                target_version: "v2".into(),
                sha256: "00".repeat(32),
                size: 10,
                stage_within_secs: None,
            }
            .envelope();
            update.id = Some("c-1".into());
            send(&mut ws, update.to_text()).await;
            // The connection must still answer: a pong, then the job result.
            let mut ponged = false;
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    WsMessage::Pong(data) => ponged = data.as_ref() == b"still there?",
                    WsMessage::Text(text) => {
                        let _ = seen_tx.send((ponged, Envelope::parse(&text).ok()));
                    }
                    WsMessage::Close(frame) => {
                        let _ = seen_tx.send((
                            ponged,
                            frame.map(|f| {
                                Envelope::of_kind(&format!("close:{}", u16::from(f.code)), &())
                            }),
                        ));
                    }
                    _ => {}
                }
            }
        }
    })
    .await;

    let agent = spawn(test_config(&url), fast_opts());
    let (ponged, reply) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("a reply in time")
        .expect("server task alive");
    assert!(ponged, "the ping was answered before the reply");
    let reply = reply.expect("a well-formed reply");
    assert_eq!(reply.kind, JOB_FINISHED);
    assert_eq!(reply.id.as_deref(), Some("c-1"));
    let finished: JobFinished = reply.payload().unwrap();
    assert_eq!(finished.job_id, 31);
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(finished.error.as_deref(), Some(UPDATE_UNSUPPORTED));

    let state = agent.state().borrow().clone();
    assert_eq!(
        (state.connects, state.connected, state.acked),
        (1, true, true)
    );

    // Shutting down sends a normal Close (1000).
    agent.shutdown().await;
    let (_, close) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("close in time")
        .expect("server task alive");
    assert_eq!(close.map(|c| c.kind).as_deref(), Some("close:1000"));
}

#[tokio::test]
async fn raw_frames_from_the_handle_reach_the_server_after_the_ack() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let seen_tx = seen_tx.clone();
        async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            while let Some(Ok(message)) = ws.next().await {
                if let WsMessage::Text(text) = message {
                    let _ = seen_tx.send(text.to_string());
                }
            }
        }
    })
    .await;

    let agent = spawn(test_config(&url), fast_opts());
    // Queued before the connection exists: goes out after the ack.
    agent.sender().send_text("{not json").await.unwrap();
    let text = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "{not json");
    assert!(matches!(
        agent
            .sender()
            .send_text("x".repeat(wire::MAX_FRAME_BYTES + 1))
            .await,
        Err(SendError::TooLarge(_))
    ));
    agent.shutdown().await;
}

#[tokio::test]
async fn frames_queued_before_shutdown_go_out_before_the_close() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let seen_tx = seen_tx.clone();
        async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    WsMessage::Text(text) => {
                        let _ = seen_tx.send(text.to_string());
                    }
                    WsMessage::Close(_) => {
                        let _ = seen_tx.send("close".to_string());
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let agent = spawn(test_config(&url), fast_opts());
    agent.wait_for(WAIT, |s| s.acked).await.expect("connected");
    for i in 0..50 {
        agent
            .sender()
            .send_text(format!("frame-{i}"))
            .await
            .unwrap();
    }
    agent.stop().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(text)) = tokio::time::timeout(WAIT, seen.recv()).await {
        let closed = text == "close";
        got.push(text);
        if closed {
            break;
        }
    }
    let mut want: Vec<String> = (0..50).map(|i| format!("frame-{i}")).collect();
    want.push("close".into());
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_policy_violation_and_reconnects() {
    let (close_tx, mut closes) = mpsc::unbounded_channel();
    let url = serve(move |n, mut ws| {
        let close_tx = close_tx.clone();
        async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            if n == 1 {
                send(&mut ws, "x".repeat(wire::MAX_FRAME_BYTES + 1)).await;
            }
            while let Some(Ok(message)) = ws.next().await {
                if let WsMessage::Close(frame) = message {
                    let _ = close_tx.send(frame.map(|f| u16::from(f.code)));
                }
            }
        }
    })
    .await;
    let agent = spawn(test_config(&url), fast_opts());
    let code = tokio::time::timeout(WAIT, closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(1008));
    agent
        .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 2)
        .await
        .expect("reconnected");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_refused_secret_is_reported_and_retried() {
    let url = serve(|_, _| async {}).await;
    let mut config = test_config(&url);
    config.secret = "wrong-secret".into();
    let agent = spawn(config, fast_opts());
    let state = agent
        .wait_for(WAIT, |s| s.last_error.as_deref() == Some(SECRET_REJECTED))
        .await
        .expect("401 reported");
    assert_eq!(state.connects, 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_connection_replaced_by_another_machine_is_reported_and_retried_slowly() {
    // The server closes the live connection with the "replaced" reason,
    // as it does when another agent with the same secret connects.
    let (connects_tx, mut connects) = mpsc::unbounded_channel();
    let url = serve(move |n, mut ws| {
        let connects_tx = connects_tx.clone();
        async move {
            let _ = connects_tx.send(Instant::now());
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            if n == 1 {
                let _ = ws
                    .close(Some(tungstenite::protocol::CloseFrame {
                        code: CloseCode::Normal,
                        reason: wire::CLOSE_REPLACED.into(),
                    }))
                    .await;
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let opts = RunOptions {
        backoff_cap: Duration::from_millis(800),
        ..fast_opts()
    };
    let agent = spawn(test_config(&url), opts);
    let state = agent
        .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 2)
        .await
        .expect("agent came back");
    assert_eq!(state.last_error.as_deref(), Some(REPLACED_ELSEWHERE));
    let first = connects.recv().await.unwrap();
    let second = connects.recv().await.unwrap();
    // The capped delay is jittered within [cap/2, cap]; the first
    // ordinary retry would be about 10 ms.
    assert!(
        second.duration_since(first) >= Duration::from_millis(400),
        "came back after {:?}",
        second.duration_since(first)
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_rejected_hello_is_recorded_and_the_agent_closes() {
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let closed_tx = closed_tx.clone();
        async move {
            next_frame(&mut ws).await;
            let rejected = HelloRejected {
                reason: "host deleted".into(),
            };
            send(&mut ws, rejected.envelope().to_text()).await;
            // Do not close: the agent must hang up by itself.
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    let _ = closed_tx.send(());
                }
            }
        }
    })
    .await;
    let agent = spawn(test_config(&url), fast_opts());
    let state = agent
        .wait_for(WAIT, |s| s.last_reject.is_some())
        .await
        .expect("rejection recorded");
    assert_eq!(state.last_reject.as_deref(), Some("host deleted"));
    assert_eq!(state.acks, 0);
    tokio::time::timeout(WAIT, closed.recv())
        .await
        .expect("agent closed the rejected connection");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_silent_server_is_dropped_after_the_idle_timeout() {
    let url = serve(|_, mut ws| async move {
        next_frame(&mut ws).await;
        send(&mut ws, ack()).await;
        // Then say nothing, and do not read either.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    })
    .await;
    let opts = RunOptions {
        idle_timeout: Duration::from_millis(300),
        ..fast_opts()
    };
    let agent = spawn(test_config(&url), opts);
    let state = agent
        .wait_for(WAIT, |s| s.connects >= 2)
        .await
        .expect("reconnected after idling");
    assert!(
        state
            .last_error
            .unwrap_or_default()
            .contains("nothing from the server")
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_that_never_acks_is_dropped() {
    let url = serve(|_, mut ws| async move {
        next_frame(&mut ws).await;
        // Keep the connection lively, but never answer the hello.
        loop {
            if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let opts = RunOptions {
        idle_timeout: Duration::from_millis(300),
        ..fast_opts()
    };
    let agent = spawn(test_config(&url), opts);
    let state = agent
        .wait_for(WAIT, |s| s.connects >= 2)
        .await
        .expect("gave up on the silent handshake");
    assert!(state.last_error.unwrap_or_default().contains("hello.ack"));
    assert_eq!(state.acks, 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn the_update_report_rides_every_hello_until_acknowledged() {
    let (hellos_tx, mut hellos) = mpsc::unbounded_channel();
    let url = serve(move |n, mut ws| {
        let hellos_tx = hellos_tx.clone();
        async move {
            let hello: Option<Hello> = next_frame(&mut ws).await.and_then(|f| f.payload().ok());
            let _ = hellos_tx.send(hello.and_then(|h| h.update).map(|u| u.job_id));
            // The first hello is "lost": no ack.
            if n >= 2 {
                send(&mut ws, ack()).await;
            }
            let _ = ws.close(None).await;
        }
    })
    .await;
    let opts = RunOptions {
        update_report: Some(UpdateReport {
            job_id: 99,
            from_version: "v1".into(),
            to_version: "v2".into(),
            outcome: UpdateOutcome::Updated,
            reason: None,
        }),
        ..fast_opts()
    };
    let agent = spawn(test_config(&url), opts);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            tokio::time::timeout(WAIT, hellos.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen, vec![Some(99), Some(99), None]);
    agent.shutdown().await;
}

#[tokio::test]
async fn wss_failure_is_an_error_not_a_crypto_provider_panic() {
    // A plain TCP server that hangs up: the TLS handshake fails.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let agent = spawn(test_config(&format!("https://{addr}")), fast_opts());
    let state = agent
        .wait_for(WAIT, |s| s.last_error.is_some())
        .await
        .expect("a connection error");
    assert_eq!(state.connects, 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_unusable_config_stops_the_agent_with_an_error() {
    let mut config = test_config("ftp://nope");
    config.host_id = 1;
    let agent = spawn(config.clone(), fast_opts());
    let state = agent.wait_for(WAIT, |s| s.stopped).await.unwrap();
    assert!(state.last_error.unwrap().contains("http"));
    let err = run(config, fast_opts(), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn run_returns_after_the_shutdown_future() {
    let (acked_tx, mut acked) = mpsc::unbounded_channel();
    let url = serve(move |_, mut ws| {
        let acked_tx = acked_tx.clone();
        async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            let _ = acked_tx.send(());
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(test_config(&url), fast_opts(), async {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(WAIT, acked.recv()).await.unwrap();
    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, running)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
}
