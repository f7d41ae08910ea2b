//! Group commit of agents' `job.started` and `job.finished`, as
//! [`super::log_batch`] does for log lines: every connection queues its
//! message here and waits for its answer; whoever finds no write in
//! progress records everything queued so far in one transaction (on a
//! thread of its own) and hands each message its answer. A wave of ten
//! thousand agents starting and ending their backups then costs a few
//! dozen transactions instead of twenty thousand, and the dispatcher's
//! batches stop queueing behind them for SQLite's one writer
//! (BENCHMARKS.md, scheduling wave).
//!
//! Each message keeps its own rules: it runs under a savepoint of its own,
//! so a refused one (an unknown job, another host's, an end its kind does
//! not take from the agent) or a failed one costs the others nothing. A
//! group is recorded in the order its messages arrived, and a connection
//! reads nothing more until its message is recorded, so one agent's
//! messages keep their order. What follows an end (`kinds::on_finished`,
//! publishing) is the caller's, after the commit.
use std::sync::{Arc, Mutex, OnceLock};

use agent::wire::JobFinished;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr};
use tokio::sync::oneshot;

use super::{
    kinds,
    log_batch::{RETRIES, WriterRuntime, lock},
};
use crate::{
    entities::jobs,
    state::AppState,
    store::{
        self, StoreError,
        jobs::{Job, JobStatus, Outcome, Refusal, Transition},
    },
};

/// Messages one transaction takes at most on SQLite: enough that a wave
/// costs few transactions, few enough that the scheduler's and dispatcher's
/// writes, which go next (`store::gate`), do not wait long behind one (a
/// group of 1,000 ends held the lock for up to 2 s).
const MAX_EVENTS: usize = 256;

/// On Postgres, which takes concurrent writers, groups stay small: each
/// message is a savepoint (a backup's end up to four, with its index and
/// health writes), and past 64 subtransactions in one transaction every
/// other session's reads slow down while it is open.
const MAX_EVENTS_POSTGRES: usize = 16;

fn max_events(state: &AppState) -> usize {
    if state.settings.is_sqlite() {
        MAX_EVENTS
    } else {
        MAX_EVENTS_POSTGRES
    }
}

/// Ids per `IN (…)` list.
const IN_CHUNK: usize = 5_000;

/// An agent's end of a job, as received (texts already bounded).
pub struct Finish {
    pub report: JobFinished,
    pub status: JobStatus,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub result: Option<String>,
}

pub enum Event {
    Started { job_id: i64 },
    Finished(Box<Finish>),
}

impl Event {
    fn job_id(&self) -> i64 {
        match self {
            Event::Started { job_id } => *job_id,
            Event::Finished(f) => f.report.job_id,
        }
    }
}

/// One message from `host_id`'s agent, received at `now`.
pub struct Item {
    pub host_id: i64,
    pub event: Event,
    pub now: i64,
}

/// What became of a message.
#[derive(Debug)]
pub enum Recorded {
    /// Refused as today: an unknown job or another host's.
    Refused(Refusal),
    /// An end the job's kind does not take from the agent (the job as read).
    NotTheAgents(Job),
    /// The job after the message. `health_recorded`: the end's fleet
    /// health row was refreshed in the same transaction.
    Done {
        t: Transition,
        health_recorded: bool,
    },
}

struct Pending {
    item: Item,
    done: oneshot::Sender<store::Result<Recorded>>,
}

#[derive(Default)]
pub struct EventBatcher {
    queue: Mutex<Vec<Pending>>,
    /// Held by the connection recording a group.
    writer: tokio::sync::Mutex<()>,
    runtime: OnceLock<Option<WriterRuntime>>,
}

impl EventBatcher {
    /// Records `item` (with whatever else is queued) and returns its answer.
    pub async fn submit(&self, state: &AppState, item: Item) -> store::Result<Recorded> {
        let (done, mut answer) = oneshot::channel();
        lock(&self.queue).push(Pending { item, done });
        loop {
            let _writing = self.writer.lock().await;
            // Whoever recorded ours answered before letting go of the writer.
            match answer.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Db(sea_orm::DbErr::Custom(
                        "the group recording this message was lost".into(),
                    )));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group: Vec<Pending> = {
                let mut queue = lock(&self.queue);
                let n = queue.len().min(max_events(state));
                queue.drain(..n).collect()
            };
            // Its own task: a connection dropped while it records must not
            // cancel other connections' messages.
            let state = state.clone();
            let task = async move { write(&state, group).await };
            let _ = match self
                .runtime
                .get_or_init(|| WriterRuntime::start_named("job-writer"))
            {
                Some(rt) => rt.handle.spawn(task).await,
                None => tokio::spawn(task).await,
            };
        }
    }
}

async fn write(state: &AppState, group: Vec<Pending>) {
    let (items, dones): (Vec<Item>, Vec<_>) = group.into_iter().map(|p| (p.item, p.done)).unzip();
    let started = std::time::Instant::now();
    match record_retrying(state, &items).await {
        Ok(answers) => {
            tracing::debug!(
                messages = items.len(),
                ms = started.elapsed().as_millis() as u64,
                "job messages recorded"
            );
            for (done, answer) in dones.into_iter().zip(answers) {
                let _ = done.send(answer);
            }
        }
        Err(e) => {
            let e = e.to_string();
            for done in dones {
                let _ = done.send(Err(StoreError::Db(sea_orm::DbErr::Custom(e.clone()))));
            }
        }
    }
}

/// [`record`], tried again after a failure of the whole group. Safe to
/// repeat: nothing was committed, and nothing in memory changed.
async fn record_retrying(
    state: &AppState,
    items: &[Item],
) -> store::Result<Vec<store::Result<Recorded>>> {
    let mut delays = RETRIES.iter();
    loop {
        // Each try after the scheduler's and dispatcher's waiting writes
        // (`store::gate`); the turn is let go before a retry's sleep.
        let turn = state.write_gate.bulk().await;
        let recorded = record(state, items).await;
        drop(turn);
        match recorded {
            Err(e) => {
                let Some(delay) = delays.next() else {
                    return Err(e);
                };
                tracing::warn!(
                    error = %e,
                    messages = items.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "recording job messages failed; retrying"
                );
                tokio::time::sleep(*delay).await;
            }
            done => return done,
        }
    }
}

/// Records a group of agents' job messages in one transaction, in order,
/// each under its own savepoint; one answer per item. Public for tests
/// (the batcher groups whatever is queued; this is one group).
pub async fn record(
    state: &AppState,
    items: &[Item],
) -> store::Result<Vec<store::Result<Recorded>>> {
    let mut ids: Vec<i64> = items.iter().map(|i| i.event.job_id()).collect();
    // One order for every locker of several job rows.
    ids.sort_unstable();
    ids.dedup();
    let txn = state.db.begin().await?;
    // Take the rows for writing before reading them (see
    // `store::jobs::lock_job`).
    for chunk in ids.chunks(IN_CHUNK) {
        jobs::Entity::update_many()
            .col_expr(jobs::Column::LogLines, Expr::col(jobs::Column::LogLines))
            .filter(jobs::Column::Id.is_in(chunk.iter().copied()))
            .exec(&txn)
            .await?;
    }
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let sp = txn.begin().await?;
        match one(&sp, state, item).await {
            Ok(r) => {
                sp.commit().await?;
                answers.push(Ok(r));
            }
            Err(e) => {
                sp.rollback().await?;
                answers.push(Err(e));
            }
        }
    }
    txn.commit().await?;
    Ok(answers)
}

/// One message under its savepoint: the same checks and writes as a
/// message in a transaction of its own.
async fn one(
    sp: &sea_orm::DatabaseTransaction,
    state: &AppState,
    item: &Item,
) -> store::Result<Recorded> {
    match &item.event {
        Event::Started { job_id } => Ok(
            match store::jobs::start(sp, *job_id, Some(item.host_id), item.now).await? {
                Ok(t) => Recorded::Done {
                    t,
                    health_recorded: false,
                },
                Err(r) => Recorded::Refused(r),
            },
        ),
        Event::Finished(f) => {
            let job_id = f.report.job_id;
            if let Ok(job) = store::jobs::get(sp, job_id).await
                && !kinds::agent_may_finish(job.kind, f.status)
            {
                return Ok(Recorded::NotTheAgents(job));
            }
            let outcome = Outcome {
                error: f.error.as_deref(),
                exit_code: f.report.exit_code,
                warning: f.report.warning,
                error_kind: f.error_kind.as_deref(),
                result: f.result.as_deref(),
            };
            let r = store::jobs::finish_with(
                sp,
                job_id,
                Some(item.host_id),
                f.status,
                &outcome,
                item.now,
            )
            .await?;
            Ok(match r {
                Ok(t) => {
                    // What the end writes beyond the row, once, by the
                    // message that ended the job.
                    let health_recorded =
                        t.changed && kinds::record_end(sp, state, &t.job, &f.report).await;
                    Recorded::Done { t, health_recorded }
                }
                Err(r) => Recorded::Refused(r),
            })
        }
    }
}

/// Shared by [`AppState`]s of one server.
pub type Shared = Arc<EventBatcher>;
