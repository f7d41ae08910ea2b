use super::job::succeeded;
use super::secrets::urlencoding_decode;
use super::*;
use crate::wire::SnapshotInfo;

fn snapshot(i: usize) -> SnapshotInfo {
    SnapshotInfo {
        id: format!("{i:064x}"),
        short_id: format!("{i:08x}"),
        time: "2026-01-01T00:00:00Z".into(),
        hostname: "web-1".into(),
        paths: vec!["/srv/some/long/path/to/make/the/snapshot/bigger".into(); 4],
        tags: vec!["rm-plan:1".into()],
    }
}

#[test]
fn snapshot_parts_stay_under_the_frame_limit() {
    let parts = snapshot_parts(3, vec![]);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].last && parts[0].snapshots.is_empty());

    let list: Vec<SnapshotInfo> = (0..8000).map(snapshot).collect();
    let parts = snapshot_parts(3, list.clone());
    assert!(parts.len() > 1, "{} parts", parts.len());
    for (i, part) in parts.iter().enumerate() {
        let text = wire::Message::envelope(part).to_text();
        assert!(
            text.len() < wire::MAX_FRAME_BYTES,
            "part {i}: {}",
            text.len()
        );
        assert_eq!(part.part as usize, i);
        assert_eq!(part.last, i + 1 == parts.len());
    }
    let joined: Vec<SnapshotInfo> = parts.into_iter().flat_map(|p| p.snapshots).collect();
    assert_eq!(joined, list);
}

#[test]
fn url_passwords_are_decoded_for_redaction() {
    assert_eq!(urlencoding_decode("p%40ss%2Fw").unwrap(), "p@ss/w");
    assert_eq!(urlencoding_decode("plain%").unwrap(), "plain%");
}

#[test]
fn recent_finished_is_bounded() {
    let handler = ResticHandler::new(ResticSettings {
        restic_path: "/nonexistent/restic".into(),
        cache_dir: std::env::temp_dir(),
        cancel_grace: CANCEL_GRACE,
        secrets_dir: None,
    });
    for id in 0..20 {
        handler.inner.record(succeeded(id, Some(0), None));
    }
    let recent = handler.inner.recent_finished();
    assert_eq!(recent.len(), RECENT_FINISHED_MAX);
    assert_eq!(recent[0].job_id, 4);
    let status = handler.hello_status();
    assert_eq!(status.restic_version, None);
    assert_eq!(status.running_jobs, Some(vec![]));
}
