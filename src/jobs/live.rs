//! In-process fan-out of a live job's events: one broadcast channel per job
//! that has watchers. A batch of log lines costs one database transaction,
//! one channel send and one rendering however many people watch; a viewer
//! that falls behind is told it lagged and catches up from the database
//! instead of slowing anyone down.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;

use tokio::sync::broadcast;

use crate::store::jobs::{Job, LogLine};

/// Events buffered per job before a slow viewer lags.
const CAPACITY: usize = 1024;

#[derive(Clone, Debug)]
pub enum LiveEvent {
    Lines(Arc<LiveLines>),
    Status(Box<Job>),
    /// The latest progress of a running restic job.
    Progress(agent::wire::JobProgress),
}

impl LiveEvent {
    /// Lines stored together (consecutive positions, in order).
    pub fn lines(lines: Vec<LogLine>) -> LiveEvent {
        LiveEvent::Lines(Arc::new(LiveLines {
            lines,
            rendered: OnceLock::new(),
        }))
    }
}

/// Lines stored in one go, shared by every watcher, with their wire form
/// rendered once by whoever needs it first.
#[derive(Debug)]
pub struct LiveLines {
    lines: Vec<LogLine>,
    /// All frames back to back, and where each line's frame ends.
    rendered: OnceLock<(Bytes, Vec<usize>)>,
}

impl LiveLines {
    pub fn lines(&self) -> &[LogLine] {
        &self.lines
    }

    pub fn first_pos(&self) -> Option<i64> {
        self.lines.first().map(|l| l.pos)
    }

    pub fn last_pos(&self) -> Option<i64> {
        self.lines.last().map(|l| l.pos)
    }

    /// The frames of the lines after position `after`, as one buffer.
    /// `render` turns one line into its frame; it runs once per line for
    /// all callers (they must pass the same function).
    pub fn frames_after(&self, after: i64, render: impl Fn(&LogLine) -> Bytes) -> Bytes {
        let (buf, ends) = self.rendered.get_or_init(|| {
            let mut buf = Vec::new();
            let mut ends = Vec::with_capacity(self.lines.len());
            for l in &self.lines {
                buf.extend_from_slice(&render(l));
                ends.push(buf.len());
            }
            (Bytes::from(buf), ends)
        });
        match self.lines.iter().position(|l| l.pos > after) {
            None => Bytes::new(),
            Some(0) => buf.clone(),
            Some(i) => buf.slice(ends[i - 1]..),
        }
    }
}

#[derive(Default)]
pub struct LiveJobs {
    channels: Mutex<HashMap<i64, broadcast::Sender<LiveEvent>>>,
}

impl LiveJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<LiveEvent>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching a job. The job's channel goes away with its last
    /// watcher (or its terminal status), so watching a job that never
    /// publishes again (one already finished) leaves nothing behind.
    pub fn subscribe(&self, job_id: i64) -> Watch<'_> {
        let rx = self
            .lock()
            .entry(job_id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Watch {
            live: self,
            job_id,
            rx: Some(rx),
        }
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

/// One watcher of one job; dropping it drops the job's channel when it was
/// the last watcher.
pub struct Watch<'a> {
    live: &'a LiveJobs,
    job_id: i64,
    rx: Option<broadcast::Receiver<LiveEvent>>,
}

impl Watch<'_> {
    pub async fn recv(&mut self) -> Result<LiveEvent, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        // Under the lock: a viewer subscribing now either came before (and
        // keeps the count above 0) or makes a new channel after.
        let mut map = self.live.lock();
        if map
            .get(&self.job_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pos: i64) -> LogLine {
        LogLine {
            pos,
            seq: pos,
            ts: 0,
            stream: "stdout".into(),
            data: format!("l{pos}"),
        }
    }

    #[test]
    fn a_jobs_channel_goes_with_its_last_watcher() {
        let live = LiveJobs::default();
        let a = live.subscribe(1);
        let b = live.subscribe(1);
        let other = live.subscribe(2);
        assert_eq!(live.open_channels(), 2);
        drop(a);
        assert_eq!(live.open_channels(), 2, "b still watches job 1");
        drop(b);
        assert_eq!(live.open_channels(), 1);
        drop(other);
        assert_eq!(live.open_channels(), 0);
        // Publishing to nobody makes nothing.
        live.publish(1, LiveEvent::lines(vec![line(1)]));
        assert_eq!(live.open_channels(), 0);
    }

    #[tokio::test]
    async fn a_watcher_gets_events_and_closed_after_the_terminal_status() {
        let live = LiveJobs::default();
        let mut w = live.subscribe(1);
        live.publish(1, LiveEvent::lines(vec![line(1)]));
        assert!(matches!(w.recv().await, Ok(LiveEvent::Lines(_))));
        use crate::store::jobs::{ActorKind, JobKind, JobStatus};
        let job = Job {
            id: 1,
            host_id: 1,
            kind: JobKind::Backup,
            status: JobStatus::Failed,
            actor_kind: ActorKind::User,
            actor_id: None,
            actor_name: "admin".into(),
            created_at: 0,
            started_at: None,
            finished_at: Some(1),
            exit_code: None,
            error: None,
            target_version: None,
            deadline_at: None,
            log_lines: 1,
            log_truncated: false,
            repository_id: None,
            plan_id: None,
            warning: false,
            error_kind: None,
            result: None,
            options: None,
            scope: None,
        };
        live.publish(1, LiveEvent::Status(Box::new(job)));
        assert!(matches!(w.recv().await, Ok(LiveEvent::Status(_))));
        assert!(w.recv().await.is_err(), "closed after the end");
        assert_eq!(live.open_channels(), 0);
    }

    #[test]
    fn frames_after_skips_what_the_viewer_has_and_renders_once() {
        let LiveEvent::Lines(b) = LiveEvent::lines(vec![line(4), line(5), line(6)]) else {
            unreachable!()
        };
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let render = |l: &LogLine| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Bytes::from(format!("[{}]", l.data))
        };
        assert_eq!(&b.frames_after(3, render)[..], b"[l4][l5][l6]");
        assert_eq!(&b.frames_after(4, render)[..], b"[l5][l6]");
        assert_eq!(&b.frames_after(5, render)[..], b"[l6]");
        assert!(b.frames_after(6, render).is_empty());
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!((b.first_pos(), b.last_pos()), (Some(4), Some(6)));
    }
}
