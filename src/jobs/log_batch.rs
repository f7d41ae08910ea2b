//! Group commit of agents' log lines. Every agent connection hands its
//! waiting `log.stream` lines here and waits until they are stored; whoever
//! finds no write in progress writes everything queued so far (its own and
//! other connections' lines) in one transaction, publishes it and wakes
//! the others. A thousand agents each sending a line every 50 ms then cost
//! a few transactions a second instead of twenty thousand, and SQLite's one
//! writer stops handing its lock around (BENCHMARKS.md, many backups).
//!
//! Order per connection is kept: a connection reads nothing more until its
//! lines are stored, so a job's end always comes after its lines.
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::{LiveEvent, refused};
use crate::{
    state::AppState,
    store::{
        self,
        jobs::{Appended, JobLines, NewLine, Refusal},
    },
};

/// One log line as received, owned until it is written.
pub struct Line {
    pub seq: i64,
    pub ts: i64,
    pub stream: &'static str,
    pub data: String,
}

/// One job's lines from one agent, in order.
pub struct Lines {
    pub job_id: i64,
    pub lines: Vec<Line>,
}

struct Pending {
    host_id: i64,
    jobs: Vec<Lines>,
    done: oneshot::Sender<()>,
}

/// Lines one transaction takes at most (it stops taking connections' lines
/// once past this), a few MB. Large on purpose: a group's cost is mostly
/// the index pages of each job it touches (a thousand jobs' lines land on a
/// thousand places of `job_logs`' indexes), not its lines, so the more
/// lines each job brings to a group the less each costs.
const MAX_LINES: usize = 20_000;

/// Pauses before each new attempt to store a group of log lines: a
/// database that refuses a write for a moment (a lock held too long, a
/// restart, a failover) costs a pause of at most about 3 s instead of the
/// lines. Order is kept: the connections whose lines these are read nothing
/// else meanwhile, so later lines wait behind these.
pub(super) const RETRIES: [std::time::Duration; 6] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(800),
    std::time::Duration::from_millis(1600),
];

#[derive(Default)]
pub struct LogBatcher {
    queue: Mutex<Vec<Pending>>,
    /// Held by the connection writing a group.
    writer: tokio::sync::Mutex<()>,
    /// Where groups are written: a thread of their own, started with the
    /// first group and stopped when the batcher goes.
    runtime: OnceLock<Option<WriterRuntime>>,
}

/// A single-threaded runtime on its own thread. A group's transaction is a
/// few dozen awaits; on an actix worker each of them waited behind the
/// hundreds of agent connections and live-log streams that worker runs
/// (BENCHMARKS.md, many backups: groups took 130 ms, mostly waiting).
pub(super) struct WriterRuntime {
    pub(super) handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl WriterRuntime {
    fn start() -> Option<WriterRuntime> {
        Self::start_named("log-writer")
    }

    /// A writer runtime on a thread called `name` (`event_batch` has its own).
    pub(super) fn start_named(name: &str) -> Option<WriterRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, thread = name, "no writer runtime; writing on the caller's"),
            )
            .ok()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(
                |e| tracing::warn!(error = %e, thread = name, "no writer thread; writing on the caller's"),
            )
            .ok()?;
        Some(WriterRuntime {
            handle,
            _stop: stop,
        })
    }
}

impl LogBatcher {
    /// Stores `host_id`'s lines (with whatever else is queued) and returns
    /// once they are stored, refused, or given up on after the retries.
    pub async fn submit(&self, state: &AppState, host_id: i64, jobs: Vec<Lines>) {
        if jobs.iter().all(|j| j.lines.is_empty()) {
            return;
        }
        let (done, mut stored) = oneshot::channel();
        lock(&self.queue).push(Pending {
            host_id,
            jobs,
            done,
        });
        loop {
            let _writing = self.writer.lock().await;
            // Whoever wrote ours signalled before letting go of the writer.
            if !matches!(stored.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return;
            }
            let group = self.take();
            // Its own task: a connection dropped while it writes (replaced,
            // shut down) must not cancel other connections' lines.
            let state = state.clone();
            let task = async move { write(&state, group).await };
            let _ = match self.runtime.get_or_init(WriterRuntime::start) {
                Some(rt) => rt.handle.spawn(task).await,
                None => tokio::spawn(task).await,
            };
        }
    }

    fn take(&self) -> Vec<Pending> {
        let mut queue = lock(&self.queue);
        let mut lines = 0;
        let mut n = 0;
        for p in queue.iter() {
            if n > 0 && lines >= MAX_LINES {
                break;
            }
            lines += p.jobs.iter().map(|j| j.lines.len()).sum::<usize>();
            n += 1;
        }
        queue.drain(..n).collect()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a group: one transaction per round (a job that two connections
/// of different hosts sent lines for, which one of them will be refused,
/// waits for the next round), then the stored lines to watchers.
async fn write(state: &AppState, group: Vec<Pending>) {
    let mut rounds: Vec<Vec<(i64, &Lines)>> = Vec::new();
    for p in &group {
        for j in &p.jobs {
            let round = rounds
                .iter_mut()
                .find(|r| !r.iter().any(|(_, other)| other.job_id == j.job_id));
            match round {
                Some(r) => r.push((p.host_id, j)),
                None => rounds.push(vec![(p.host_id, j)]),
            }
        }
    }
    for round in rounds {
        let batch: Vec<JobLines> = round
            .iter()
            .map(|(host_id, j)| JobLines {
                job_id: j.job_id,
                host_id: *host_id,
                lines: j
                    .lines
                    .iter()
                    .map(|l| NewLine {
                        seq: l.seq,
                        ts: l.ts,
                        stream: l.stream,
                        data: &l.data,
                    })
                    .collect(),
            })
            .collect();
        let started = std::time::Instant::now();
        match append_retrying(state, &batch).await {
            Ok(outcomes) => {
                tracing::debug!(
                    jobs = batch.len(),
                    lines = batch.iter().map(|b| b.lines.len()).sum::<usize>(),
                    ms = started.elapsed().as_millis() as u64,
                    "log lines stored"
                );
                for (entry, outcome) in batch.iter().zip(outcomes) {
                    published(state, entry, outcome);
                }
            }
            Err(e) => {
                for entry in &batch {
                    tracing::error!(
                        error = %e,
                        job_id = entry.job_id,
                        lines = entry.lines.len(),
                        "storing log lines failed after retries: these lines are lost"
                    );
                }
            }
        }
    }
    for p in group {
        let _ = p.done.send(());
    }
}

fn published(state: &AppState, entry: &JobLines<'_>, outcome: Result<Appended, Refusal>) {
    let job_id = entry.job_id;
    match outcome {
        Ok(Appended { stored, ignored }) => {
            for (seq, why) in ignored {
                tracing::debug!(job_id, seq, why, "log line ignored");
            }
            if !stored.is_empty() {
                state.live.publish(job_id, LiveEvent::lines(stored));
            }
        }
        Err(r) => refused("log.stream", job_id, entry.host_id, r),
    }
}

/// [`store::jobs::append_logs`], tried again after a failure (not after a
/// refusal) with [`RETRIES`]. Safe to repeat: nothing is committed on a
/// failure, and lines are de-duplicated by seq.
async fn append_retrying(
    state: &AppState,
    batch: &[JobLines<'_>],
) -> store::Result<Vec<Result<Appended, Refusal>>> {
    let cap = state.settings.job_log_cap_bytes;
    let mut delays = RETRIES.iter();
    loop {
        match store::jobs::append_logs(&state.db, batch, cap).await {
            Err(e) => {
                let Some(delay) = delays.next() else {
                    return Err(e);
                };
                tracing::warn!(
                    error = %e,
                    jobs = batch.len(),
                    lines = batch.iter().map(|b| b.lines.len()).sum::<usize>(),
                    retry_in_ms = delay.as_millis() as u64,
                    "storing log lines failed; retrying"
                );
                tokio::time::sleep(*delay).await;
            }
            done => return done,
        }
    }
}

/// Shared by [`AppState`]s of one server.
pub type Shared = Arc<LogBatcher>;
