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
