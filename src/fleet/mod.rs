//! The rolling fleet update worker: one host at a time in position order,
//! halting on the first failure. Event-driven: it moves on as soon as the
//! update watcher reports the current host's job ended (the job's stored
//! deadline is the only timer). Runs on its own actix arbiter; on start it
//! resumes a run left `running` by a previous server without dispatching
//! any host twice (a host whose update job is still live is adopted, not
//! dispatched again).
mod service;

pub use service::{cancel, candidates, start};

use std::{future::Future, sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::{Notify, broadcast::error::RecvError};

use crate::{
    state::AppState,
    store::{
        self,
        fleet_updates::{FleetHost, FleetStatus, FleetUpdate, HostStatus},
        hosts::Host,
        jobs::ActorKind,
    },
    updates::{DispatchError, Finished, Requester},
};

/// What the worker needs from the rest of the server; faked in unit tests.
pub trait FleetOps: Send + Sync + 'static {
    fn db(&self) -> &DatabaseConnection;
    fn now_ms(&self) -> i64;
    /// The host, or None when it was removed.
    fn host(&self, id: i64) -> impl Future<Output = Option<Host>> + Send;
    fn is_online(&self, id: i64) -> bool;
    /// Dispatches an update; the job id.
    fn dispatch(
        &self,
        host_id: i64,
        run: &FleetUpdate,
    ) -> impl Future<Output = Result<i64, DispatchError>> + Send;
    /// The job's outcome if it has already ended.
    fn job_outcome(&self, job_id: i64) -> impl Future<Output = Option<Finished>> + Send;
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Finished>;
    fn raise_halted(&self, run_id: i64, reason: &str) -> impl Future<Output = ()> + Send;
}

/// The real operations, over the app state.
pub struct StateOps(pub AppState);

impl FleetOps for StateOps {
    fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }
    fn now_ms(&self) -> i64 {
        self.0.clock.now_ms()
    }
    async fn host(&self, id: i64) -> Option<Host> {
        store::hosts::get(&self.0.db, id).await.ok()
    }
    fn is_online(&self, id: i64) -> bool {
        self.0.hub.is_online(id)
    }
    async fn dispatch(&self, host_id: i64, run: &FleetUpdate) -> Result<i64, DispatchError> {
        let by = Requester {
            kind: ActorKind::User,
            user_id: run.started_by_user_id,
            name: format!("{} (fleet update #{})", run.started_by, run.id),
            client_addr: String::new(),
        };
        crate::updates::dispatch(&self.0, host_id, &by)
            .await
            .map(|j| j.id)
    }
    async fn job_outcome(&self, job_id: i64) -> Option<Finished> {
        let j = store::jobs::get(&self.0.db, job_id).await.ok()?;
        j.status
            .is_terminal()
            .then(|| crate::updates::outcome_of(&j))
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Finished> {
        self.0.updates.subscribe()
    }
    async fn raise_halted(&self, run_id: i64, reason: &str) {
        crate::alerts::raise_fleet_update_halted(&self.0, run_id, reason).await;
    }
}

/// Wakes the worker (a run started or was cancelled).
#[derive(Default)]
pub struct Fleet {
    kick: Notify,
}

impl Fleet {
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

/// Starts the worker on its own actix arbiter (a thread with its own
/// runtime); without an actix System (tests on a plain tokio runtime) on a
/// dedicated thread of the same shape.
pub fn spawn(state: AppState) {
    let fleet = state.fleet.clone();
    let fut = async move {
        // Database connections belong to the runtime that opened them (a
        // Postgres socket is driven by its reactor), so the worker opens its
        // own pool on its own runtime instead of borrowing the server's.
        let db = loop {
            match crate::db::connect(&state.settings.database_url).await {
                Ok(db) => break db,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "fleet worker cannot reach the database; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        let state = AppState { db, ..state };
        worker(Arc::new(StateOps(state)), fleet).await
    };
    if actix_rt::System::try_current().is_some() {
        let arbiter = actix_rt::Arbiter::new();
        arbiter.spawn(fut);
    } else {
        // No actix System (the in-process test server on a plain tokio
        // runtime): a task on the current runtime.
        tokio::spawn(fut);
    }
}

/// Runs whatever fleet update is running, then waits to be kicked.
pub async fn worker<O: FleetOps>(ops: Arc<O>, fleet: Arc<Fleet>) {
    loop {
        match store::fleet_updates::active(ops.db()).await {
            Ok(Some(run)) => {
                let span = tracing::info_span!("fleet", fleet_update_id = run.id);
                let driven =
                    tracing::Instrument::instrument(drive(&*ops, &fleet, run.id), span).await;
                if let Err(e) = driven {
                    tracing::error!(error = %e, "fleet update worker error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading the active fleet update failed"),
        }
        tokio::select! {
            _ = fleet.kick.notified() => {}
            // A safety net only: starting a run kicks the worker.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

async fn halt<O: FleetOps>(
    ops: &O,
    run_id: i64,
    h: &FleetHost,
    host_reason: &str,
    reason: String,
) -> store::Result<()> {
    // One transaction: a run is never left running past a host marked
    // failed (a resumed run would move on to the next host).
    let txn = ops.db().begin().await?;
    store::fleet_updates::set_host_status(
        &txn,
        run_id,
        h.host_id,
        HostStatus::Failed,
        Some(host_reason),
        None,
    )
    .await?;
    let halted = store::fleet_updates::halt(&txn, run_id, &reason, ops.now_ms()).await?;
    txn.commit().await?;
    if halted {
        tracing::warn!(
            reason = %crate::text::one_line(&reason, crate::text::AGENT_TEXT_MAX_BYTES),
            "fleet update halted"
        );
        ops.raise_halted(run_id, &reason).await;
    }
    Ok(())
}

async fn skip<O: FleetOps>(ops: &O, run_id: i64, host_id: i64, why: &str) -> store::Result<()> {
    tracing::info!(host_id, why, "fleet update skipped a host");
    store::fleet_updates::set_host_status(
        ops.db(),
        run_id,
        host_id,
        HostStatus::Skipped,
        Some(why),
        None,
    )
    .await
}

/// Works through one run until it completes, halts or is cancelled.
pub async fn drive<O: FleetOps>(ops: &O, fleet: &Fleet, run_id: i64) -> store::Result<()> {
    // Subscribe before any dispatch, so no completion can slip past.
    let mut events = ops.subscribe();
    loop {
        let run = store::fleet_updates::get(ops.db(), run_id).await?;
        if run.status != FleetStatus::Running {
            store::fleet_updates::set_current_host(ops.db(), run_id, None).await?;
            return Ok(());
        }
        let pending = store::fleet_updates::list_pending(ops.db(), run_id).await?;
        let Some(h) = pending.into_iter().next() else {
            store::fleet_updates::set_current_host(ops.db(), run_id, None).await?;
            if store::fleet_updates::complete(ops.db(), run_id, ops.now_ms()).await? {
                tracing::info!("fleet update completed");
            }
            return Ok(());
        };
        store::fleet_updates::set_current_host(ops.db(), run_id, Some(h.host_id)).await?;
        let job_id = match (h.status, h.job_id) {
            // Resumed after a restart: the job is already out there.
            (HostStatus::Running, Some(j)) => j,
            _ => {
                let Some(host) = ops.host(h.host_id).await else {
                    skip(ops, run_id, h.host_id, "host deleted").await?;
                    continue;
                };
                if host.agent_version == run.target_version {
                    skip(ops, run_id, h.host_id, "already at target").await?;
                    continue;
                }
                if !ops.is_online(host.id) {
                    halt(
                        ops,
                        run_id,
                        &h,
                        "host offline at dispatch time",
                        format!("host went offline: {}", h.hostname),
                    )
                    .await?;
                    return Ok(());
                }
                match ops.dispatch(host.id, &run).await {
                    Ok(j) => j,
                    // Dispatched before a restart cut us off: adopt that job.
                    Err(DispatchError::UpdateInProgress(j)) if j > 0 => j,
                    Err(DispatchError::AlreadyUpToDate(_)) => {
                        skip(ops, run_id, h.host_id, "already at target").await?;
                        continue;
                    }
                    Err(DispatchError::HostOffline) => {
                        halt(
                            ops,
                            run_id,
                            &h,
                            "host offline at dispatch time",
                            format!("host went offline: {}", h.hostname),
                        )
                        .await?;
                        return Ok(());
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        halt(
                            ops,
                            run_id,
                            &h,
                            &msg,
                            format!("dispatch failed on {}: {msg}", h.hostname),
                        )
                        .await?;
                        return Ok(());
                    }
                }
            }
        };
        store::fleet_updates::set_host_status(
            ops.db(),
            run_id,
            h.host_id,
            HostStatus::Running,
            None,
            Some(job_id),
        )
        .await?;
        let outcome = loop {
            if let Some(o) = ops.job_outcome(job_id).await {
                break o;
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(f) if f.job_id == job_id => break f,
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return Ok(()),
                },
                // A cancel leaves this host's job to finish; keep waiting.
                _ = fleet.kick.notified() => continue,
            }
        };
        if outcome.succeeded {
            store::fleet_updates::set_host_status(
                ops.db(),
                run_id,
                h.host_id,
                HostStatus::Succeeded,
                None,
                Some(job_id),
            )
            .await?;
            tracing::info!(host_id = h.host_id, job_id, "fleet update: host succeeded");
        } else {
            let reason = outcome.reason.unwrap_or_else(|| "update failed".into());
            halt(
                ops,
                run_id,
                &h,
                &reason,
                format!("update failed on {}: {reason}", h.hostname),
            )
            .await?;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
