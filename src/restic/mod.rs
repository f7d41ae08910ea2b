//! The restic core on the server: repositories and their secrets, the
//! restic job queue and its concurrency rules, what agents report about
//! restic runs (progress, results, snapshot listings), and schedules.
//!
//! The database is the source of truth for jobs and their order; this
//! module's in-memory state is only the latest progress of running jobs
//! and snapshot listings still arriving in parts.
pub mod dispatch;
pub mod events;
pub mod jobs;
pub mod plans;
pub mod repo_url;
pub mod repositories;
pub mod restore;
pub mod schedule;
pub mod scheduler;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use agent::wire::{JobProgress, SnapshotInfo};
use tokio::sync::Notify;

/// The restic core's in-memory state (a cache: losing it loses nothing that
/// matters, only the progress of running jobs until their next update).
#[derive(Default)]
pub struct Restic {
    progress: Mutex<HashMap<i64, JobProgress>>,
    parts: Mutex<HashMap<i64, Vec<SnapshotInfo>>>,
    /// Running restic jobs' hosts, learnt from the first message of each.
    owners: Mutex<HashMap<i64, i64>>,
    /// Wakes the dispatcher: a job was queued or ended, a host connected.
    wake: Notify,
    /// Wakes the scheduler: plans, labels, hosts or repositories changed.
    scheduler: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Restic {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks the dispatcher to look at the queue again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks the scheduler to re-read plans and coverage.
    pub fn wake_scheduler(&self) {
        self.scheduler.notify_one();
    }

    pub fn progress(&self, job_id: i64) -> Option<JobProgress> {
        lock(&self.progress).get(&job_id).cloned()
    }

    fn set_progress(&self, p: JobProgress) {
        lock(&self.progress).insert(p.job_id, p);
    }

    fn clear(&self, job_id: i64) {
        lock(&self.owners).remove(&job_id);
        lock(&self.progress).remove(&job_id);
        lock(&self.parts).remove(&job_id);
    }
}

/// The concurrency scope of a repository job: the repository when shared,
/// the repository on that host when local.
pub fn scope(repository_id: i64, local: bool, host_id: i64) -> String {
    if local {
        format!("r{repository_id}h{host_id}")
    } else {
        format!("r{repository_id}")
    }
}

/// The snapshot index's scope host: 0 for a shared repository.
pub fn scope_host(local: bool, host_id: i64) -> i64 {
    if local { host_id } else { 0 }
}
