//! Updater tests against a hand-rolled HTTP/1.1 responder. The "new
//! binaries" are small shell scripts, so the preflight really runs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::client::{CommandHandler, FrameSender};
use crate::config::AgentConfig;
use crate::wire::{
    self, CommandUpdate, Envelope, FinishedStatus, JobFinished, JobKind, JobStarted, LogStream,
    LogStreamKind, Message,
};

const SECRET: &str = "agent-secret-1";
const WAIT: Duration = Duration::from_secs(20);

fn script(version_line: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho \"{version_line}\"\necho \"commit abc\"\n").into_bytes()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn command(body: &[u8]) -> CommandUpdate {
    CommandUpdate {
        job_id: 5,
        target_version: "v2".into(),
        sha256: sha(body),
        size: body.len() as u64,
        stage_within_secs: None,
    }
}

/// What the test server answers.
#[derive(Clone)]
struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// `Some(n)`: declare `content-length: n` (even if `body` is shorter,
    /// then hang up). `None`: no length; the body ends when the socket closes.
    content_length: Option<usize>,
    /// `Some(n)`: send only `n` bytes of the body, then hold the connection
    /// open without sending more (a stalled or trickling link).
    stall_after: Option<usize>,
}

impl Reply {
    /// A correct answer for `body`, as the real server sends it.
    fn binary(body: &[u8]) -> Self {
        Reply {
            status: "200 OK",
            headers: vec![
                (SHA256_HEADER, sha(body).to_uppercase()),
                (VERSION_HEADER, "v2".into()),
                ("content-type", "application/octet-stream".into()),
            ],
            body: body.to_vec(),
            content_length: Some(body.len()),
            stall_after: None,
        }
    }

    fn json_error(status: &'static str, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
            content_length: Some(body.len()),
            stall_after: None,
        }
    }
}

/// Serves `reply` to every connection; returns the base URL and the
/// request heads received.
async fn serve(reply: Reply) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let reply = reply.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let mut out = format!("HTTP/1.1 {}\r\nconnection: close\r\n", reply.status);
                for (name, value) in &reply.headers {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                if let Some(len) = reply.content_length {
                    out.push_str(&format!("content-length: {len}\r\n"));
                }
                out.push_str("\r\n");
                let _ = sock.write_all(out.as_bytes()).await;
                if let Some(n) = reply.stall_after {
                    let _ = sock.write_all(&reply.body[..n]).await;
                    // Hold the socket until the client gives up.
                    let _ = sock.read(&mut buf).await;
                    return;
                }
                let _ = sock.write_all(&reply.body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, rx)
}

/// A binary directory holding only `agent` ("OLD", mode 0755).
fn setup() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("agent");
    std::fs::write(&bin, "OLD").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// The running binary is as it was and nothing was left beside it.
fn assert_untouched(bin: &Path) {
    assert_eq!(std::fs::read_to_string(bin).unwrap(), "OLD");
    let names: Vec<String> = std::fs::read_dir(bin.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["agent".to_string()],
        "leftovers beside the binary"
    );
}

async fn update(
    url: &str,
    bin: &Path,
    cmd: &CommandUpdate,
) -> (Result<(), UpdateError>, Vec<String>) {
    let mut lines = Vec::new();
    let result =
        fetch_verify_and_swap(url, SECRET, bin, cmd, "v1", &mut |line| lines.push(line)).await;
    (result, lines)
}

/// Runs an update that must fail, checks nothing changed, returns the message.
async fn failing_update(reply: Reply, cmd: &CommandUpdate) -> String {
    let (url, _) = serve(reply).await;
    let (_dir, bin) = setup();
    let (result, _) = update(&url, &bin, cmd).await;
    let err = result.expect_err("the update must fail");
    assert_untouched(&bin);
    err.to_string()
}

#[tokio::test]
async fn a_good_update_swaps_atomically_and_leaves_a_marker() {
    use std::os::unix::fs::PermissionsExt;
    let new = script("restic-manager-agent v2");
    let (url, mut requests) = serve(Reply::binary(&new)).await;
    let (_dir, bin) = setup();
    // A leftover from an interrupted update is replaced, not appended to.
    std::fs::write(new_path(&bin), "STALE PARTIAL DOWNLOAD").unwrap();

    let (result, lines) = update(&url, &bin, &command(&new)).await;
    result.unwrap();

    assert_eq!(std::fs::read(&bin).unwrap(), new);
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert_eq!(std::fs::read_to_string(old_path(&bin)).unwrap(), "OLD");
    assert!(!new_path(&bin).exists(), ".new is gone after the swap");
    let marker = UpdateMarker::load(&marker_path(&bin)).unwrap().unwrap();
    assert_eq!(
        marker,
        UpdateMarker {
            job_id: 5,
            from_version: "v1".into(),
            to_version: "v2".into(),
            state: MarkerState::Swapped,
            boots: 0,
            reason: None,
        }
    );

    let request = requests.recv().await.unwrap();
    let want = format!(
        "GET /agent/binary?os={}&arch={} HTTP/1.1",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    assert!(request.starts_with(&want), "{request}");
    assert!(
        request.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            SECRET.to_ascii_lowercase()
        )),
        "{request}"
    );

    let all = lines.join("\n");
    for step in [
        "updating",
        "downloading",
        "match",
        "reports \"restic-manager-agent v2\"",
        "marker",
        "kept the running binary",
        "swapped the new binary",
    ] {
        assert!(all.contains(step), "no {step:?} step in:\n{all}");
    }
    assert!(!all.contains(SECRET));
}

#[tokio::test]
async fn a_checksum_mismatch_leaves_the_binary_untouched() {
    let new = script("restic-manager-agent v2");
    let mut cmd = command(&new);
    cmd.sha256 = sha(b"something else").to_uppercase();
    let mut reply = Reply::binary(&new);
    reply.headers.retain(|(name, _)| *name != SHA256_HEADER);
    let message = failing_update(reply, &cmd).await;
    assert_eq!(
        message,
        format!(
            "checksum mismatch: expected {}, got {}",
            sha(b"something else"),
            sha(&new)
        )
    );
}

#[tokio::test]
async fn a_download_cut_off_mid_body_is_refused() {
    let new = script("restic-manager-agent v2");
    let mut reply = Reply::binary(&new);
    reply.body.truncate(10);
    let message = failing_update(reply, &command(&new)).await;
    let want = format!("download cut off after 10 of {} bytes", new.len());
    assert!(message.starts_with(&want), "{message}");
}

#[tokio::test]
async fn a_body_shorter_than_the_size_is_refused() {
    let new = script("restic-manager-agent v2");
    let mut reply = Reply::binary(&new);
    reply.body.truncate(10);
    reply.content_length = None;
    let message = failing_update(reply, &command(&new)).await;
    assert_eq!(
        message,
        format!("download cut off after 10 of {} bytes", new.len())
    );
}

#[tokio::test]
async fn a_body_larger_than_the_size_is_refused() {
    let new = script("restic-manager-agent v2");
    let mut cmd = command(&new);
    cmd.size -= 1;
    let mut reply = Reply::binary(&new);
    reply.content_length = None;
    let message = failing_update(reply.clone(), &cmd).await;
    assert_eq!(
        message,
        format!("download is larger than the expected {} bytes", cmd.size)
    );
    // Announced up front: refused before reading.
    reply.content_length = Some(new.len());
    assert_eq!(failing_update(reply, &cmd).await, message);
}

#[tokio::test]
async fn a_new_binary_reporting_another_version_is_refused() {
    let new = script("restic-manager-agent v3");
    let message = failing_update(Reply::binary(&new), &command(&new)).await;
    assert_eq!(message, "new binary reports version v3, expected v2");

    let new = script("something else entirely");
    let message = failing_update(Reply::binary(&new), &command(&new)).await;
    assert_eq!(
        message,
        "new binary printed \"something else entirely\" for --version, \
         expected \"restic-manager-agent v2\""
    );
}

#[tokio::test]
async fn a_garbage_binary_is_refused_by_the_preflight() {
    let new = b"\x00\x01 definitely not an executable \xff".to_vec();
    let message = failing_update(Reply::binary(&new), &command(&new)).await;
    assert!(
        message.starts_with("new binary could not run: "),
        "{message}"
    );
}

#[tokio::test]
async fn a_new_binary_that_fails_is_refused_with_its_stderr() {
    let new = b"#!/bin/sh\necho 'missing libfoo.so' >&2\nexit 3\n".to_vec();
    let message = failing_update(Reply::binary(&new), &command(&new)).await;
    assert!(
        message.starts_with("new binary could not run: `--version` failed"),
        "{message}"
    );
    assert!(message.contains("missing libfoo.so"), "{message}");
}

#[tokio::test]
async fn the_servers_json_error_is_surfaced() {
    let reply = Reply::json_error(
        "404 Not Found",
        r#"{"error":"no_binary","message":"no agent binary is staged for linux/x86_64"}"#,
    );
    let new = script("restic-manager-agent v2");
    let message = failing_update(reply, &command(&new)).await;
    assert_eq!(
        message,
        "server refused the download (HTTP 404, no_binary): \
         no agent binary is staged for linux/x86_64"
    );

    let reply = Reply::json_error("502 Bad Gateway", "<html>upstream down</html>");
    let message = failing_update(reply, &command(&new)).await;
    assert_eq!(
        message,
        "server answered the download with HTTP 502: <html>upstream down</html>"
    );
}

#[tokio::test]
async fn a_restaged_binary_is_refused_before_downloading() {
    let new = script("restic-manager-agent v2");
    let mut reply = Reply::binary(&new);
    reply.headers.retain(|(name, _)| *name != VERSION_HEADER);
    reply.headers.push((VERSION_HEADER, "v3".into()));
    let message = failing_update(reply, &command(&new)).await;
    assert_eq!(
        message,
        "server now offers version v3, but this update expects v2; start the update again"
    );
}

#[tokio::test]
async fn a_download_that_does_not_finish_in_time_is_given_up_and_leaves_nothing() {
    // The link stalls after a few bytes, well inside the read timeout: only
    // the time the server granted ends it, before its deadline would.
    let new = script("restic-manager-agent v2");
    let mut reply = Reply::binary(&new);
    reply.stall_after = Some(5);
    let mut cmd = command(&new);
    cmd.stage_within_secs = Some(1);
    let err = failing_update(reply, &cmd).await;
    assert!(err.contains("within 1s"), "{err}");
}

#[tokio::test]
async fn an_unusable_command_fails_without_a_request() {
    let (url, mut requests) = serve(Reply::binary(b"x")).await;
    let (_dir, bin) = setup();
    let mut cmd = command(b"x");
    cmd.sha256 = "not-hex".into();
    let (result, _) = update(&url, &bin, &cmd).await;
    assert!(
        matches!(result, Err(UpdateError::BadCommand(_))),
        "{result:?}"
    );
    let mut cmd = command(b"x");
    cmd.size = 0;
    let (result, _) = update(&url, &bin, &cmd).await;
    assert!(
        matches!(result, Err(UpdateError::BadCommand(_))),
        "{result:?}"
    );
    // Versions the server would refuse in a hello.
    for version in [
        "v 2".to_string(),
        "v2\n".into(),
        "x".repeat(65),
        String::new(),
    ] {
        let mut cmd = command(b"x");
        cmd.target_version = version.clone();
        let (result, _) = update(&url, &bin, &cmd).await;
        assert!(
            matches!(result, Err(UpdateError::BadCommand(_))),
            "{version:?}: {result:?}"
        );
    }
    assert!(requests.try_recv().is_err(), "no request was made");
    assert_untouched(&bin);
}

#[tokio::test]
async fn a_binary_whose_directory_others_can_write_is_not_updated() {
    use std::os::unix::fs::PermissionsExt;
    let new = script("restic-manager-agent v2");
    for (mode, who) in [
        (0o777, "group and others"),
        (0o775, "its group"),
        (0o757, "others"),
    ] {
        let (url, mut requests) = serve(Reply::binary(&new)).await;
        let (dir, bin) = setup();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let (result, _) = update(&url, &bin, &command(&new)).await;
        let err = result.expect_err("refused").to_string();
        assert!(
            err.starts_with("cannot update: the directory")
                && err.contains(&format!("writable by {who} (mode 0{mode:o})"))
                && err.contains("chmod go-w"),
            "{err}"
        );
        assert!(requests.try_recv().is_err(), "no download was made");
        assert_untouched(&bin);
    }
    // The sticky bit does not make /tmp-like directories acceptable either.
    let (url, _requests) = serve(Reply::binary(&new)).await;
    let (dir, bin) = setup();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(update(&url, &bin, &command(&new)).await.0.is_err());
}

#[tokio::test]
async fn links_planted_as_the_old_copy_or_the_marker_temp_file_are_not_followed() {
    let new = script("restic-manager-agent v2");
    let (url, _requests) = serve(Reply::binary(&new)).await;
    let (_dir, bin) = setup();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim_old = elsewhere.path().join("shadow");
    let victim_tmp = elsewhere.path().join("sudoers");
    std::fs::write(&victim_old, "VICTIM-1").unwrap();
    std::fs::write(&victim_tmp, "VICTIM-2").unwrap();
    std::os::unix::fs::symlink(&victim_old, old_path(&bin)).unwrap();
    let marker_tmp = crate::files::with_suffix(&marker_path(&bin), ".tmp");
    std::os::unix::fs::symlink(&victim_tmp, &marker_tmp).unwrap();

    let (result, _) = update(&url, &bin, &command(&new)).await;
    result.unwrap();
    assert_eq!(std::fs::read_to_string(&victim_old).unwrap(), "VICTIM-1");
    assert_eq!(std::fs::read_to_string(&victim_tmp).unwrap(), "VICTIM-2");
    let old_meta = std::fs::symlink_metadata(old_path(&bin)).unwrap();
    assert!(old_meta.file_type().is_file(), "the old copy is a new file");
    assert_eq!(std::fs::read_to_string(old_path(&bin)).unwrap(), "OLD");
    let marker_meta = std::fs::symlink_metadata(marker_path(&bin)).unwrap();
    assert!(marker_meta.file_type().is_file());
    assert!(!marker_tmp.exists());
    assert_eq!(std::fs::read(&bin).unwrap(), new);
}

#[test]
fn own_binary_paths_that_cannot_be_renamed_over_are_refused() {
    for path in ["/proc/self/exe", "/proc/1234/exe"] {
        let err = check_own_binary(Path::new(path)).unwrap_err();
        assert!(err.to_string().contains(path), "{err}");
    }
    let err = check_own_binary(Path::new("/usr/local/bin/agent (deleted)")).unwrap_err();
    assert!(err.to_string().contains("(deleted)"), "{err}");

    let (dir, bin) = setup();
    let link = dir.path().join("link-to-agent");
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    assert_eq!(
        check_own_binary(&link).unwrap(),
        std::fs::canonicalize(&bin).unwrap()
    );
    assert!(check_own_binary(&dir.path().join("missing")).is_err());
    assert!(check_own_binary(dir.path()).is_err(), "a directory");
    // The test binary itself resolves.
    assert!(resolve_own_binary().unwrap().is_file());
}

// ---- the command handler ----

fn handler_for(url: &str, bin: &Path) -> (UpdateHandler, mpsc::Receiver<ExitRequest>) {
    let config = AgentConfig {
        server_url: url.to_string(),
        host_id: 1,
        secret: SECRET.into(),
        ..AgentConfig::default()
    };
    let (exit_tx, exit_rx) = mpsc::channel(1);
    let handler = UpdateHandler::new(&config, Ok(bin.to_path_buf()), "v1", exit_tx);
    (handler, exit_rx)
}

fn update_frame(cmd: &CommandUpdate) -> Envelope {
    let mut frame = cmd.envelope();
    frame.id = Some(format!("c-{}", cmd.job_id));
    frame
}

async fn next(frames: &mut mpsc::Receiver<String>) -> Envelope {
    let text = tokio::time::timeout(WAIT, frames.recv())
        .await
        .expect("a frame in time")
        .expect("sender alive");
    Envelope::parse(&text).unwrap()
}

/// Frames up to and including the first `job.finished` for `job_id`.
async fn frames_until_finished(frames: &mut mpsc::Receiver<String>, job_id: i64) -> Vec<Envelope> {
    let mut seen = Vec::new();
    loop {
        let frame = next(frames).await;
        let done = frame.kind == wire::JOB_FINISHED
            && frame.payload::<JobFinished>().unwrap().job_id == job_id;
        seen.push(frame);
        if done {
            return seen;
        }
    }
}

/// The `log.stream` payloads among `frames`, checking seq runs 1, 2, 3….
fn log_lines(frames: &[Envelope], job_id: i64) -> Vec<LogStream> {
    let lines: Vec<LogStream> = frames
        .iter()
        .filter(|f| f.kind == wire::LOG_STREAM)
        .map(|f| f.payload().unwrap())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.seq, i as i64 + 1, "seq of {line:?}");
        assert_eq!(line.job_id, job_id);
        assert_eq!(line.stream, LogStreamKind::System);
        assert!(line.data.ends_with('\n'));
        assert!(
            chrono::DateTime::parse_from_rfc3339(&line.at).is_ok(),
            "{}",
            line.at
        );
    }
    lines
}

#[tokio::test]
async fn the_handler_reports_a_failed_update_as_a_job() {
    let new = script("restic-manager-agent v2");
    let mut cmd = command(&new);
    cmd.sha256 = sha(b"other");
    let mut reply = Reply::binary(&new);
    reply.headers.retain(|(name, _)| *name != SHA256_HEADER);
    let (url, _) = serve(reply).await;
    let (_dir, bin) = setup();
    let (handler, mut exits) = handler_for(&url, &bin);
    let (sender, mut frames) = FrameSender::detached(64);

    handler.handle(update_frame(&cmd), sender.clone());
    let seen = frames_until_finished(&mut frames, 5).await;

    assert_eq!(seen[0].kind, wire::JOB_STARTED);
    assert_eq!(seen[0].id.as_deref(), Some("c-5"));
    assert_eq!(
        seen[0].payload::<JobStarted>().unwrap(),
        JobStarted {
            job_id: 5,
            kind: Some(JobKind::Update)
        }
    );
    let lines = log_lines(&seen, 5);
    assert!(lines.len() >= 3, "{lines:?}");
    let last = lines.last().unwrap();
    assert!(
        last.data.starts_with("update failed: checksum mismatch"),
        "{last:?}"
    );
    let finished: JobFinished = seen.last().unwrap().payload().unwrap();
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(
        finished.error.unwrap(),
        format!(
            "checksum mismatch: expected {}, got {}",
            sha(b"other"),
            sha(&new)
        )
    );
    assert!(exits.try_recv().is_err(), "no restart after a failure");
    assert_untouched(&bin);

    // The failure released the handler: a corrected retry runs and swaps.
    let mut retry = command(&new);
    retry.job_id = 6;
    handler.handle(update_frame(&retry), sender);
    let exit = tokio::time::timeout(WAIT, exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        exit,
        ExitRequest {
            job_id: 6,
            to_version: "v2".into()
        }
    );
    // Every frame is queued before the exit request goes out.
    let mut seen = Vec::new();
    while let Ok(text) = frames.try_recv() {
        seen.push(Envelope::parse(&text).unwrap());
    }
    assert_eq!(seen[0].kind, wire::JOB_STARTED);
    assert!(
        seen.iter().all(|f| f.kind != wire::JOB_FINISHED),
        "{seen:?}"
    );
    let lines = log_lines(&seen, 6);
    assert_eq!(
        lines.last().unwrap().data,
        "binary swapped; restarting to run v2\n"
    );
    assert_eq!(std::fs::read(&bin).unwrap(), new);
}

#[tokio::test]
async fn the_handler_fails_an_unreadable_command_at_once_and_stays_free() {
    let new = script("restic-manager-agent v2");
    let (url, _) = serve(Reply::binary(&new)).await;
    let (_dir, bin) = setup();
    let (handler, mut exits) = handler_for(&url, &bin);
    let (sender, mut frames) = FrameSender::detached(64);
    // No sha256, a negative size: not a command this agent can follow.
    let mut bad = Envelope::parse(
        r#"{"type":"command.update","id":"c-3","payload":{"job_id":3,"target_version":"v2","size":-1}}"#,
    )
    .unwrap();
    bad.id = Some("c-3".into());
    handler.handle(bad, sender.clone());
    let reply = next(&mut frames).await;
    assert_eq!(reply.id.as_deref(), Some("c-3"));
    let finished: JobFinished = reply.payload().unwrap();
    assert_eq!(
        (finished.job_id, finished.status),
        (3, FinishedStatus::Failed)
    );
    assert!(
        finished.error.as_deref().unwrap().contains("unusable"),
        "{finished:?}"
    );
    // Nothing is left running: the next good update goes ahead.
    handler.handle(update_frame(&command(&new)), sender.clone());
    let exit = tokio::time::timeout(WAIT, exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.job_id, 5);
    assert_eq!(std::fs::read(&bin).unwrap(), new);
}

#[tokio::test]
async fn the_handler_runs_one_update_at_a_time() {
    // A server that accepts and never answers: the first update hangs.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
            let _ = accepted_tx.send(());
        }
    });
    let (_dir, bin) = setup();
    let (handler, _exits) = handler_for(&url, &bin);
    let (sender, mut frames) = FrameSender::detached(64);
    let new = script("restic-manager-agent v2");

    handler.handle(update_frame(&command(&new)), sender.clone());
    tokio::time::timeout(WAIT, accepted.recv()).await.unwrap();

    // The same job again (a re-send) is ignored; another job is refused.
    handler.handle(update_frame(&command(&new)), sender.clone());
    let mut other = command(&new);
    other.job_id = 9;
    handler.handle(update_frame(&other), sender.clone());
    let seen = frames_until_finished(&mut frames, 9).await;
    let refusal = seen.last().unwrap();
    assert_eq!(refusal.id.as_deref(), Some("c-9"));
    let finished: JobFinished = refusal.payload().unwrap();
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(finished.error.as_deref(), Some(UPDATE_ALREADY_RUNNING));
    assert!(
        seen.iter().all(
            |f| f.kind != wire::JOB_FINISHED || f.payload::<JobFinished>().unwrap().job_id == 9
        ),
        "job 5 must not be failed: {seen:?}"
    );
    assert!(
        accepted.try_recv().is_err(),
        "only one download ever started"
    );
}

#[tokio::test]
async fn the_handler_fails_updates_when_its_binary_is_unknown() {
    let config = AgentConfig {
        server_url: "http://127.0.0.1:9".into(),
        host_id: 1,
        secret: SECRET.into(),
        ..AgentConfig::default()
    };
    let (exit_tx, _exit_rx) = mpsc::channel(1);
    let reason = "this agent's executable /proc/self/exe cannot be resolved".to_string();
    let handler = UpdateHandler::new(&config, Err(reason.clone()), "v1", exit_tx);
    assert!(!format!("{handler:?}").contains(SECRET));
    let (sender, mut frames) = FrameSender::detached(16);
    handler.handle(update_frame(&command(b"x")), sender);
    let seen = frames_until_finished(&mut frames, 5).await;
    let finished: JobFinished = seen.last().unwrap().payload().unwrap();
    assert_eq!(finished.error, Some(format!("cannot update: {reason}")));
}
