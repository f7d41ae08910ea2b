//! The real `restic-manager-agent run`, copied into a temp dir, against a
//! fake server: the update swaps and exits 0; the boot watchdog rolls back
//! (exit 1) after a crash loop or a rejected hello; a rollback is reported
//! in the hello and the marker removed once acknowledged.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use agent::updater::{MarkerState, UpdateMarker, marker_path, old_path};
use agent::version::VERSION;
use agent::wire::{
    self, CommandUpdate, Envelope, Hello, HelloAck, HelloRejected, LogStream, Message,
    UpdateOutcome,
};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "agent-secret-1";
const WAIT: Duration = Duration::from_secs(30);

type ServerWs = tokio_tungstenite::WebSocketStream<TcpStream>;

/// What the fake server does with each WebSocket after reading the hello.
#[derive(Clone, Copy)]
enum Script {
    /// Ack, then send `command.update` for the served binary.
    AckAndUpdate,
    Ack,
    Reject,
}

/// Everything the fake server saw on its WebSockets.
#[derive(Debug)]
enum Seen {
    Hello(Hello),
    Frame(Envelope),
    Close,
}

/// One port for both `/agent/binary` (plain HTTP) and `/agent/ws`: the
/// request line is peeked at without consuming it.
async fn fake_server(script: Script, binary: Vec<u8>) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (tx, binary) = (tx.clone(), binary.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 32];
                let mut n = 0;
                for _ in 0..100 {
                    match sock.peek(&mut head).await {
                        Ok(got) if got < head.len() => {
                            n = got;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Ok(got) => {
                            n = got;
                            break;
                        }
                        Err(_) => return,
                    }
                }
                if head[..n].starts_with(b"GET /agent/binary") {
                    serve_binary(sock, &binary).await;
                } else if let Ok(ws) = tokio_tungstenite::accept_async(sock).await {
                    agent_session(ws, script, &binary, tx).await;
                }
            });
        }
    });
    (url, rx)
}

async fn serve_binary(mut sock: TcpStream, binary: &[u8]) {
    // Drain the request head (small; one read is enough on loopback).
    let mut buf = [0u8; 4096];
    let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
    let head = format!(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\nx-agent-version: v-next\r\n\r\n",
        binary.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(binary).await;
    let _ = sock.shutdown().await;
}

async fn agent_session(
    mut ws: ServerWs,
    script: Script,
    binary: &[u8],
    tx: mpsc::UnboundedSender<Seen>,
) {
    let Some(Ok(WsMessage::Text(text))) = ws.next().await else {
        return;
    };
    let hello: Hello = Envelope::parse(&text).unwrap().payload().unwrap();
    let _ = tx.send(Seen::Hello(hello));
    let reply = match script {
        Script::Reject => HelloRejected {
            reason: "agent build is blocked".into(),
        }
        .envelope(),
        Script::Ack | Script::AckAndUpdate => HelloAck {
            host_id: 1,
            server_version: "v-next".into(),
        }
        .envelope(),
    };
    let _ = ws.send(WsMessage::text(reply.to_text())).await;
    if let Script::AckAndUpdate = script {
        let command = CommandUpdate {
            job_id: 42,
            target_version: "v-next".into(),
            sha256: hex::encode(Sha256::digest(binary)),
            size: binary.len() as u64,
            stage_within_secs: None,
        };
        let _ = ws.send(WsMessage::text(command.envelope().to_text())).await;
    }
    while let Some(Ok(message)) = ws.next().await {
        match message {
            WsMessage::Text(text) => {
                let _ = tx.send(Seen::Frame(Envelope::parse(&text).unwrap()));
            }
            WsMessage::Close(_) => {
                let _ = tx.send(Seen::Close);
            }
            _ => {}
        }
    }
}

/// A temp dir holding a copy of the real agent binary and its config.
struct Host {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    config: PathBuf,
    original: Vec<u8>,
}

fn host(server_url: &str) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("restic-manager-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_restic-manager-agent"), &bin).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("server_url = \"{server_url}\"\nhost_id = 1\nsecret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let original = std::fs::read(&bin).unwrap();
    Host {
        _dir: dir,
        bin,
        config,
        original,
    }
}

fn shell_script(version_line: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho \"{version_line}\"\n").into_bytes()
}

fn write_marker(host: &Host, state: MarkerState, boots: u32, reason: Option<&str>) {
    UpdateMarker {
        job_id: 42,
        from_version: "v-old".into(),
        to_version: VERSION.into(),
        state,
        boots,
        reason: reason.map(str::to_string),
    }
    .save(&marker_path(&host.bin))
    .unwrap();
}

fn start(host: &Host) -> tokio::process::Child {
    tokio::process::Command::new(&host.bin)
        .arg("run")
        .arg("--config")
        .arg(&host.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for the agent to exit by itself; returns its status and stderr.
async fn exited(child: tokio::process::Child) -> (ExitStatus, String) {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the agent exits by itself")
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn load_marker(bin: &Path) -> Option<UpdateMarker> {
    UpdateMarker::load(&marker_path(bin)).unwrap()
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the server saw something in time")
        .expect("server alive")
}

#[tokio::test]
async fn an_update_swaps_the_binary_and_exits_zero() {
    let new = shell_script("restic-manager-agent v-next");
    let (url, mut seen) = fake_server(Script::AckAndUpdate, new.clone()).await;
    let host = host(&url);
    let (status, stderr) = exited(start(&host)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    assert_eq!(std::fs::read(&host.bin).unwrap(), new);
    assert_eq!(std::fs::read(old_path(&host.bin)).unwrap(), host.original);
    let marker = load_marker(&host.bin).expect("a marker");
    assert_eq!(
        (marker.job_id, marker.state, marker.boots),
        (42, MarkerState::Swapped, 0)
    );
    assert_eq!(
        (marker.from_version.as_str(), marker.to_version.as_str()),
        (VERSION, "v-next")
    );

    let Seen::Hello(hello) = next_seen(&mut seen).await else {
        panic!("hello first");
    };
    assert_eq!(hello.update, None);
    let mut kinds = Vec::new();
    let mut last_line = String::new();
    loop {
        match next_seen(&mut seen).await {
            Seen::Frame(frame) => {
                if frame.kind == wire::LOG_STREAM {
                    last_line = frame.payload::<LogStream>().unwrap().data;
                }
                kinds.push(frame.kind);
            }
            Seen::Close => break,
            Seen::Hello(_) => panic!("a second connection"),
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some(wire::JOB_STARTED));
    assert!(!kinds.iter().any(|k| k == wire::JOB_FINISHED), "{kinds:?}");
    assert_eq!(last_line, "binary swapped; restarting to run v-next\n");
}

#[tokio::test]
async fn a_crash_looping_new_binary_is_rolled_back_at_boot() {
    let host = host("http://127.0.0.1:9");
    let old = shell_script("restic-manager-agent v-old");
    std::fs::write(old_path(&host.bin), &old).unwrap();
    write_marker(&host, MarkerState::Swapped, 3, None);

    let (status, stderr) = exited(start(&host)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(std::fs::read(&host.bin).unwrap(), old);
    let marker = load_marker(&host.bin).unwrap();
    assert_eq!(marker.state, MarkerState::RolledBack);
    assert!(
        marker
            .reason
            .unwrap()
            .contains("restarted 4 times without reaching the server"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_new_binary_that_cannot_even_read_its_config_is_rolled_back() {
    // A build that fails before it connects (here: it cannot use the config,
    // as when a new version rejects an old file) must still count its
    // starts: every one of them ends in `error: …` and exit 1.
    let host = host("http://127.0.0.1:9");
    let old = shell_script("restic-manager-agent v-old");
    std::fs::write(old_path(&host.bin), &old).unwrap();
    std::fs::write(&host.config, "server_url = [not toml").unwrap();
    write_marker(&host, MarkerState::Swapped, 0, None);
    for n in 1..=3 {
        let (status, stderr) = exited(start(&host)).await;
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error:"), "{stderr}");
        assert_eq!(load_marker(&host.bin).unwrap().boots, n, "{stderr}");
    }
    let (status, stderr) = exited(start(&host)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(std::fs::read(&host.bin).unwrap(), old, "{stderr}");
    assert_eq!(
        load_marker(&host.bin).unwrap().state,
        MarkerState::RolledBack
    );
}

#[tokio::test]
async fn a_clean_stop_does_not_count_against_a_new_binary() {
    // Restarted by its supervisor (SIGTERM) while the server is away: not a
    // crash, so the new binary keeps its chances.
    let host = host("http://127.0.0.1:9");
    write_marker(&host, MarkerState::Swapped, 2, None);
    let child = start(&host);
    let pid = child.id().expect("running");
    // Wait until it has counted this start (boots 2 → 3) and is running.
    let deadline = tokio::time::Instant::now() + WAIT;
    while load_marker(&host.bin).is_none_or(|m| m.boots != 3) {
        assert!(tokio::time::Instant::now() < deadline, "start not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What systemd sends on `systemctl restart`.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, stderr) = exited(child).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let m = load_marker(&host.bin).unwrap();
    assert_eq!((m.state, m.boots), (MarkerState::Swapped, 2), "{stderr}");
    assert_eq!(std::fs::read(&host.bin).unwrap(), host.original);
}

#[tokio::test]
async fn a_rejected_hello_rolls_the_new_binary_back() {
    let (url, mut seen) = fake_server(Script::Reject, Vec::new()).await;
    let host = host(&url);
    let old = shell_script("restic-manager-agent v-old");
    std::fs::write(old_path(&host.bin), &old).unwrap();
    write_marker(&host, MarkerState::Swapped, 0, None);

    let (status, stderr) = exited(start(&host)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let Seen::Hello(hello) = next_seen(&mut seen).await else {
        panic!("hello first");
    };
    let report = hello.update.expect("the hello carries the update report");
    assert_eq!(
        (report.job_id, report.outcome),
        (42, UpdateOutcome::Updated)
    );
    assert_eq!(std::fs::read(&host.bin).unwrap(), old);
    let marker = load_marker(&host.bin).unwrap();
    assert_eq!(marker.state, MarkerState::RolledBack);
    assert_eq!(
        marker.reason.as_deref(),
        Some(
            format!(
                "server rejected new agent {VERSION} (agent build is blocked); rolled back to v-old"
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn a_rollback_is_reported_and_the_marker_removed_once_acknowledged() {
    let (url, mut seen) = fake_server(Script::Ack, Vec::new()).await;
    let host = host(&url);
    write_marker(&host, MarkerState::RolledBack, 4, Some("it broke"));
    let mut child = start(&host);

    let Seen::Hello(hello) = next_seen(&mut seen).await else {
        panic!("hello first");
    };
    let report = hello.update.expect("the hello carries the report");
    assert_eq!(
        (report.outcome, report.reason.as_deref()),
        (UpdateOutcome::RolledBack, Some("it broke"))
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while marker_path(&host.bin).exists() {
        assert!(tokio::time::Instant::now() < deadline, "marker still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
    assert_eq!(std::fs::read(&host.bin).unwrap(), host.original);
    child.kill().await.unwrap();
}
