//! Boot watchdog tests on real files in a temp dir (unix: the binaries are
//! shell scripts).
use super::*;
use crate::updater::old_path;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A binary dir after a swap from v1 to v2: `agent` holds the new
/// binary, `agent.old` the old one, the marker says "swapped".
fn swapped() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("agent");
    std::fs::write(&bin, "NEW").unwrap();
    std::fs::write(old_path(&bin), "OLD").unwrap();
    marker(7, MarkerState::Swapped, 0)
        .save(&marker_path(&bin))
        .unwrap();
    (dir, bin)
}

fn marker(job_id: i64, state: MarkerState, boots: u32) -> UpdateMarker {
    UpdateMarker {
        job_id,
        from_version: "v1".into(),
        to_version: "v2".into(),
        state,
        boots,
        reason: None,
    }
}

fn load(bin: &Path) -> Option<UpdateMarker> {
    UpdateMarker::load(&marker_path(bin)).unwrap()
}

fn contents(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn marker_round_trips_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.update-marker");
    assert_eq!(UpdateMarker::load(&path).unwrap(), None);
    let mut m = marker(12, MarkerState::Swapped, 2);
    m.save(&path).unwrap();
    assert_eq!(UpdateMarker::load(&path).unwrap(), Some(m.clone()));
    let json: serde_json::Value = serde_json::from_str(&contents(&path)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"job_id": 12, "from_version": "v1", "to_version": "v2",
                           "state": "swapped", "boots": 2})
    );
    m.state = MarkerState::RolledBack;
    m.reason = Some("because".into());
    m.save(&path).unwrap();
    assert_eq!(UpdateMarker::load(&path).unwrap(), Some(m));
    assert!(contents(&path).contains(r#""state": "rolled_back""#));
    // Only the marker is left: no temp file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    std::fs::write(&path, "{half a mark").unwrap();
    assert!(UpdateMarker::load(&path).is_err());
}

#[test]
fn no_marker_means_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("agent");
    std::fs::write(&bin, "BIN").unwrap();
    assert_eq!(
        on_boot(&bin, "v1"),
        BootDecision::Run {
            report: None,
            probation: false
        }
    );
}

#[test]
fn an_unusable_marker_is_dropped_not_fatal() {
    let (_dir, bin) = swapped();
    std::fs::write(marker_path(&bin), "garbage").unwrap();
    assert_eq!(
        on_boot(&bin, "v2"),
        BootDecision::Run {
            report: None,
            probation: false
        }
    );
    assert!(!marker_path(&bin).exists());
    assert_eq!(contents(&bin), "NEW");
}

#[test]
fn a_crash_looping_new_binary_is_rolled_back_after_max_starts() {
    let (_dir, bin) = swapped();
    for boot in 1..=MAX_BOOTS_WITHOUT_HELLO {
        let decision = on_boot(&bin, "v2");
        let BootDecision::Run {
            report: Some(report),
            probation: true,
        } = decision
        else {
            panic!("start {boot}: {decision:?}");
        };
        assert_eq!(report.outcome, UpdateOutcome::Updated);
        assert_eq!((report.job_id, report.to_version.as_str()), (7, "v2"));
        assert_eq!(load(&bin).unwrap().boots, boot, "start {boot} is counted");
        assert_eq!(contents(&bin), "NEW");
    }

    let decision = on_boot(&bin, "v2");
    let want = "new agent v2 restarted 4 times without reaching the server; rolled back to v1";
    assert_eq!(
        decision,
        BootDecision::RolledBack {
            reason: want.into()
        }
    );
    assert_eq!(contents(&bin), "OLD", "the old binary is back");
    assert!(!old_path(&bin).exists());
    let m = load(&bin).unwrap();
    assert_eq!(m.state, MarkerState::RolledBack);
    assert_eq!(m.reason.as_deref(), Some(want));

    // The old binary starts and reports the rollback, without probation.
    assert_eq!(
        on_boot(&bin, "v1"),
        BootDecision::Run {
            report: Some(UpdateReport {
                job_id: 7,
                from_version: "v1".into(),
                to_version: "v2".into(),
                outcome: UpdateOutcome::RolledBack,
                reason: Some(want.into()),
            }),
            probation: false,
        }
    );
}

#[test]
fn a_failed_rollback_keeps_the_new_binary_running() {
    let (_dir, bin) = swapped();
    std::fs::remove_file(old_path(&bin)).unwrap();
    marker(7, MarkerState::Swapped, MAX_BOOTS_WITHOUT_HELLO)
        .save(&marker_path(&bin))
        .unwrap();
    let decision = on_boot(&bin, "v2");
    let BootDecision::Run {
        report: Some(report),
        probation: false,
    } = decision
    else {
        panic!("{decision:?}");
    };
    assert_eq!(report.outcome, UpdateOutcome::Updated);
    assert!(report.reason.unwrap().starts_with("rollback failed"));
    assert_eq!(contents(&bin), "NEW");
}

#[test]
fn a_swapped_marker_under_another_version_reports_a_rollback() {
    let (_dir, bin) = swapped();
    let decision = on_boot(&bin, "v1");
    let BootDecision::Run {
        report: Some(report),
        probation: false,
    } = decision
    else {
        panic!("{decision:?}");
    };
    assert_eq!(report.outcome, UpdateOutcome::RolledBack);
    assert_eq!(
        report.reason.as_deref(),
        Some("the update to v2 did not take: the agent started as v1")
    );
    // Left alone: no counting, no file moves.
    assert_eq!(load(&bin).unwrap().boots, 0);
    assert_eq!(contents(&old_path(&bin)), "OLD");
}

/// Boots the swapped new binary (on probation) and follows a connection
/// state the test drives.
fn watch_on_probation(
    bin: &Path,
    healthy: Duration,
) -> (watch::Sender<ConnState>, tokio::task::JoinHandle<WatchEnd>) {
    let BootDecision::Run {
        report,
        probation: true,
    } = on_boot(bin, "v2")
    else {
        panic!("expected probation");
    };
    let (tx, rx) = watch::channel(ConnState::default());
    let bin = bin.to_path_buf();
    let watching =
        tokio::spawn(
            async move { watch_connection(&bin, report.as_ref(), true, rx, healthy).await },
        );
    (tx, watching)
}

#[tokio::test]
async fn a_rejected_hello_rolls_the_new_binary_back() {
    let (_dir, bin) = swapped();
    let (tx, watching) = watch_on_probation(&bin, HEALTHY_AFTER_ACK);
    tx.send_modify(|s| {
        s.connects = 1;
        s.last_reject = Some("agent v2 is not allowed".into());
    });
    let end = tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    let want = "server rejected new agent v2 (agent v2 is not allowed); rolled back to v1";
    assert_eq!(end, WatchEnd::RolledBack(want.into()));
    assert_eq!(contents(&bin), "OLD");
    let m = load(&bin).unwrap();
    assert_eq!(
        (m.state, m.reason.as_deref()),
        (MarkerState::RolledBack, Some(want))
    );
}

#[tokio::test]
async fn an_acknowledged_hello_removes_the_marker_and_ends_probation() {
    let (_dir, bin) = swapped();
    let BootDecision::Run { report, probation } = on_boot(&bin, "v2") else {
        panic!("expected to run");
    };
    let (tx, rx) = watch::channel(ConnState::default());
    let watching = tokio::spawn({
        let bin = bin.clone();
        let healthy = Duration::from_millis(50);
        async move { watch_connection(&bin, report.as_ref(), probation, rx, healthy).await }
    });
    tx.send_modify(|s| {
        s.connects = 1;
        s.acks = 1;
        s.acked = true;
    });
    let end = tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    assert_eq!(end, WatchEnd::Acknowledged);
    assert!(!marker_path(&bin).exists());
    assert_eq!(contents(&bin), "NEW");
    // The next start is an ordinary one.
    assert_eq!(
        on_boot(&bin, "v2"),
        BootDecision::Run {
            report: None,
            probation: false
        }
    );
}

#[tokio::test]
async fn a_new_binary_that_drops_soon_after_its_ack_stays_on_probation() {
    let (_dir, bin) = swapped();
    // Never reached: every connection drops first.
    let (tx, watching) = watch_on_probation(&bin, Duration::from_secs(3600));
    for n in 1..=3 {
        tx.send_modify(|s| {
            s.connects = n;
            s.acks = n;
            s.acked = true;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_modify(|s| {
            s.connected = false;
            s.acked = false;
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!watching.is_finished(), "still on probation");
    // Then the process dies: the marker is still there and counts it.
    tx.send_modify(|s| s.stopped = true);
    let end = tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    assert_eq!(end, WatchEnd::Stopped);
    let m = load(&bin).unwrap();
    assert_eq!((m.state, m.boots), (MarkerState::Swapped, 1));
    assert!(matches!(
        on_boot(&bin, "v2"),
        BootDecision::Run {
            probation: true,
            ..
        }
    ));
    assert_eq!(load(&bin).unwrap().boots, 2);
}

#[test]
fn a_clean_stop_does_not_count_against_a_new_binary() {
    let (_dir, bin) = swapped();
    // Reboots and restarts while the server is away: each start ends
    // with a clean stop, so none of them counts.
    for _ in 0..(MAX_BOOTS_WITHOUT_HELLO + 2) {
        assert!(matches!(
            on_boot(&bin, "v2"),
            BootDecision::Run {
                probation: true,
                ..
            }
        ));
        on_clean_stop(&bin, "v2");
    }
    assert_eq!(contents(&bin), "NEW");
    assert_eq!(load(&bin).unwrap().boots, 0);
    // Crashes still count.
    for _ in 0..MAX_BOOTS_WITHOUT_HELLO {
        on_boot(&bin, "v2");
    }
    assert!(matches!(
        on_boot(&bin, "v2"),
        BootDecision::RolledBack { .. }
    ));
    assert_eq!(contents(&bin), "OLD");
    // A clean stop of the old binary leaves the rollback record alone.
    on_clean_stop(&bin, "v1");
    assert_eq!(load(&bin).unwrap().state, MarkerState::RolledBack);
}

#[tokio::test]
async fn the_ack_leaves_a_newer_updates_marker_alone() {
    let (_dir, bin) = swapped();
    let BootDecision::Run { report, .. } = on_boot(&bin, "v2") else {
        panic!("expected to run");
    };
    marker(8, MarkerState::Swapped, 0)
        .save(&marker_path(&bin))
        .unwrap();
    let (tx, rx) = watch::channel(ConnState::default());
    tx.send_modify(|s| {
        s.acks = 1;
        s.acked = true;
    });
    assert_eq!(
        watch_connection(&bin, report.as_ref(), true, rx, Duration::from_millis(20)).await,
        WatchEnd::Acknowledged
    );
    assert_eq!(load(&bin).unwrap().job_id, 8);
}

#[tokio::test]
async fn an_unreachable_server_never_causes_a_rollback() {
    let (_dir, bin) = swapped();
    let BootDecision::Run {
        report,
        probation: true,
    } = on_boot(&bin, "v2")
    else {
        panic!("expected probation");
    };
    // A real agent against a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = crate::config::AgentConfig {
        server_url: format!("http://127.0.0.1:{port}"),
        host_id: 1,
        secret: "s".into(),
        ..Default::default()
    };
    let opts = crate::client::RunOptions {
        backoff_initial: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        update_report: report.clone(),
        ..Default::default()
    };
    let agent = crate::client::spawn(config, opts);
    let mut state = agent.state();
    let watching = tokio::spawn({
        let bin = bin.clone();
        let state = agent.state();
        async move { watch_connection(&bin, report.as_ref(), true, state, HEALTHY_AFTER_ACK).await }
    });

    // Every failed attempt publishes a state change: wait for several.
    let mut failures = 0;
    tokio::time::timeout(WAIT, async {
        while failures < 8 {
            state.changed().await.unwrap();
            if state.borrow_and_update().last_error.is_some() {
                failures += 1;
            }
        }
    })
    .await
    .expect("the agent keeps retrying");
    assert!(!watching.is_finished(), "the watchdog is still waiting");
    assert_eq!(contents(&bin), "NEW");
    assert_eq!(contents(&old_path(&bin)), "OLD");
    let m = load(&bin).unwrap();
    assert_eq!((m.state, m.boots), (MarkerState::Swapped, 1));

    agent.shutdown().await;
    let end = tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    assert_eq!(end, WatchEnd::Stopped);
    assert_eq!(contents(&bin), "NEW");
}
