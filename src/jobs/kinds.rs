//! Per-kind job behaviour: the one seam where a job kind plugs into the
//! lifecycle. [`super`] records every state change and publishes it; these
//! matches say what a kind does beyond its row:
//!
//! - [`agent_may_finish`]: which ends an agent may report;
//! - [`record_end`]: what an agent's end writes beyond the row, in the
//!   same transaction as the end;
//! - [`on_finished`]: what an end means (run once, by the call that ended
//!   the job, after it is recorded and before it is published);
//! - [`on_deadline`]: what a job past its deadline becomes;
//! - [`agent_report`]: the kind's own messages while it runs.
//!
//! A new kind adds its arm here (restic kinds share the restic arm: the
//! dispatcher in `restic/dispatch.rs` starts them, `restic/events.rs` reads
//! their results).
use agent::wire::{Envelope, JobFinished};

use crate::{
    state::AppState,
    store::{
        self,
        jobs::{Job, JobKind, JobStatus},
    },
};

/// Whether an agent's `job.finished` with `status` may end a job of `kind`.
pub(super) fn agent_may_finish(kind: JobKind, status: JobStatus) -> bool {
    match kind {
        // An update succeeds when the new agent says hello, never on the
        // old agent's word; failed and cancelled both end it.
        JobKind::Update => status != JobStatus::Succeeded,
        _ => true,
    }
}

/// What a job's end means beyond its row, once it is recorded.
/// `health_recorded`: [`record_end`] already refreshed its health row.
pub(super) async fn on_finished(state: &AppState, job: &Job, health_recorded: bool) {
    match job.kind {
        JobKind::Update => crate::updates::on_finished(state, job).await,
        _ => crate::restic::events::on_finished(state, job, health_recorded).await,
    }
}

/// What an agent's end writes beyond the job's row, in the transaction
/// that records the end (see `event_batch`). Returns whether it refreshed
/// the job's fleet health row (then [`on_finished`] does not).
pub(super) async fn record_end(
    txn: &sea_orm::DatabaseTransaction,
    state: &AppState,
    job: &Job,
    report: &JobFinished,
) -> bool {
    match job.kind {
        JobKind::Update => false,
        _ => crate::restic::events::record_end(txn, state, job, report).await,
    }
}

/// A live job whose deadline passed.
pub(super) async fn on_deadline(state: &AppState, job: &Job) -> store::Result<()> {
    match job.kind {
        JobKind::Update => crate::updates::on_deadline(state, job).await,
        _ => super::finish(
            state,
            job.id,
            JobStatus::Failed,
            Some("timeout: the job did not finish in time"),
        )
        .await
        .map(|_| ()),
    }
}

/// A running job's own messages (`job.progress`, `job.snapshots`: the
/// restic kinds').
pub(super) async fn agent_report(state: &AppState, host_id: i64, env: &Envelope) {
    crate::restic::events::agent_message(state, host_id, env).await;
}
