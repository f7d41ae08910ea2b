//! The server's own log, read from the real `restic-manager` binary's
//! stderr: text an agent sends (here, an update error that spans lines and
//! imitates a log line) stays on the line of the event that quotes it.

use std::path::Path;
use std::process::{Command, Stdio};

use agent::wire::{self, CommandUpdate, FinishedStatus, JobFinished, Message as _};
use restic_manager::routes;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

/// How a forged line would begin: a date no real event of this run has.
const FORGED: &str = "1999-01-01T00:00:00.000000Z  INFO restic_manager: admin logged in";

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_an_agent_cannot_forge_a_line_of_the_server_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Command::new(env!("CARGO_BIN_EXE_restic-manager"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RM_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RM_DATABASE_URL")
        .env_remove("RM_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting the server");
    let _server = ChildGuard::new(server);
    let addr = eventually("the server listening", || async {
        read(&log)
            .lines()
            .find(|l| l.contains("restic-manager listening"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
            .map(str::to_string)
    })
    .await;
    let url = format!("http://{addr}");

    // A host, enrolled, connected through a raw WebSocket that says hello.
    let added = Command::new(env!("CARGO_BIN_EXE_restic-manager"))
        .args(["host", "add", "web-1", "--data-dir"])
        .arg(&data)
        .env_remove("RM_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&added.stdout).to_string();
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("enrollment_token: "))
        .unwrap_or_else(|| panic!("no token in {stdout}"))
        .trim()
        .to_string();
    let cfg = agent::enroll::enroll(&url, &token, "web-1").await.unwrap();
    let mut req = format!("ws://{addr}{}", routes::AGENT_WS)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", cfg.secret).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws_send(
        &mut ws,
        hello_frame("0.0.1", "linux", std::env::consts::ARCH, "web-1"),
    )
    .await;
    ws_expect(&mut ws, wire::HELLO_ACK).await;

    // An update (of the agent the server staged from beside itself), which
    // the agent fails with an error that looks like a log line of its own.
    restic_manager::install_crypto_provider();
    let admin = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let r = admin
        .post(format!("{url}{}", routes::API_LOGIN))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin
        .post(format!("{url}{}", routes::api_host_update(cfg.host_id)))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "update refused: {}",
        r.text().await.unwrap_or_default()
    );
    let cmd: CommandUpdate = ws_expect(&mut ws, wire::COMMAND_UPDATE)
        .await
        .payload()
        .unwrap();
    let error = format!("download failed\n{FORGED}\r\n{FORGED} again");
    let finished = JobFinished {
        status: FinishedStatus::Failed,
        ..JobFinished::failed(cmd.job_id, error)
    };
    ws_send(&mut ws, finished.envelope().to_text()).await;

    // The server logs the alert the failure raises, quoting the error.
    let logged = tokio::time::timeout(WAIT, async {
        loop {
            let text = read(&log);
            if text.contains("alert raised") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let Ok(text) = logged else {
        panic!("the alert is not in the server log:\n{}", read(&log));
    };
    let quoting: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("admin logged in"))
        .collect();
    assert!(
        !quoting.is_empty(),
        "the alert should quote the agent's error:\n{text}"
    );
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("1999-"),
            "a forged line in the server log: {line:?}\n{text}"
        );
        assert!(
            !line.contains('\r'),
            "a carriage return from the agent in the server log: {line:?}\n{text}"
        );
    }
    for line in quoting {
        assert!(
            line.contains("alert raised"),
            "the agent's error on a line of its own: {line:?}"
        );
    }
}
