//! What a job reports beyond restic's own summary: a snapshot listing cut
//! into frames, and the files a restore wrote when restic does not say.
use std::path::Path;

use super::job::Job;
use crate::wire::{self, JobSnapshots, RestoreResult, SnapshotInfo};

/// Budget per `job.snapshots` frame: half the frame limit, so the envelope
/// and JSON escaping never push one over.
const SNAPSHOTS_PART_BYTES: usize = wire::MAX_FRAME_BYTES / 2;

/// Splits a listing into frames under [`SNAPSHOTS_PART_BYTES`]; always at
/// least one part, the last marked `last`.
pub fn snapshot_parts(job_id: i64, list: Vec<SnapshotInfo>) -> Vec<JobSnapshots> {
    let mut parts = Vec::new();
    let mut current: Vec<SnapshotInfo> = Vec::new();
    let mut size = 0;
    for snapshot in list {
        let len = serde_json::to_string(&snapshot).map_or(1024, |s| s.len()) + 1;
        if !current.is_empty() && size + len > SNAPSHOTS_PART_BYTES {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(snapshot);
    }
    parts.push(current);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, snapshots)| JobSnapshots {
            job_id,
            part: i as u32,
            snapshots,
            last: i + 1 == count,
        })
        .collect()
}

/// restic before 0.16 says nothing about what it restored: count the
/// regular files and bytes now under the target for the restored paths
/// (the includes, else the snapshot's paths).
pub(super) async fn count_restored(job: &mut Job<'_>) -> RestoreResult {
    let options = &job.command.options;
    let Some(target) = options.target.clone() else {
        return RestoreResult::default();
    };
    let mut roots: Vec<String> = options.include.clone();
    if roots.is_empty() {
        let id = options.snapshot_id.clone().unwrap_or_default();
        if let Some(info) = job.lookup_snapshot(&id).await {
            roots = info.paths;
        }
    }
    let counted = tokio::task::spawn_blocking(move || {
        let mut total = RestoreResult::default();
        for root in roots {
            let relative = root.trim_start_matches('/');
            let path = Path::new(&target).join(relative);
            count_tree(&path, &mut total);
        }
        total
    })
    .await;
    counted.unwrap_or_default()
}

/// Adds the regular files under `path` (not following symlinks).
fn count_tree(path: &Path, total: &mut RestoreResult) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        total.files_restored += 1;
        total.bytes_restored += meta.len();
    } else if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            count_tree(&entry.path(), total);
        }
    }
}
