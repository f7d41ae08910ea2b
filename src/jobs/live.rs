//! In-process fan-out of a live job's events: one broadcast channel per job
//! that has watchers. A log line costs one database write and one channel
//! send however many people watch; a viewer that falls behind is told it
//! lagged and catches up from the database instead of slowing anyone down.
use std::{collections::HashMap, sync::Mutex};

use tokio::sync::broadcast;

use crate::store::jobs::{Job, LogLine};

/// Events buffered per job before a slow viewer lags.
const CAPACITY: usize = 1024;

#[derive(Clone, Debug)]
pub enum LiveEvent {
    Line(LogLine),
    Status(Box<Job>),
}

#[derive(Default)]
pub struct LiveJobs {
    channels: Mutex<HashMap<i64, broadcast::Sender<LiveEvent>>>,
}

impl LiveJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<LiveEvent>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, job_id: i64) -> broadcast::Receiver<LiveEvent> {
        self.lock()
            .entry(job_id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    /// Sends to the job's watchers, if any. A terminal status closes the
    /// channel after it is sent.
    pub fn publish(&self, job_id: i64, ev: LiveEvent) {
        let terminal = matches!(&ev, LiveEvent::Status(j) if j.status.is_terminal());
        let mut map = self.lock();
        let Some(tx) = map.get(&job_id) else { return };
        if tx.send(ev).is_err() || terminal {
            // No receivers left, or nothing more will come.
            map.remove(&job_id);
        }
    }

    /// Jobs with a channel open (for tests and metrics).
    pub fn open_channels(&self) -> usize {
        self.lock().len()
    }
}
