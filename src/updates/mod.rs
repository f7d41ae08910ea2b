//! Per-host agent self-update, server side: dispatch (checks, job row, audit
//! row, `command.update`), completion on the agent's hello at the target
//! version after a healthy period, and deadlines kept in the database so a
//! restart neither loses nor double-ends an update. Every update job ends in
//! a terminal state exactly once (conditional updates in the store).
use std::time::Duration;

use agent::wire::{CommandUpdate, Message as _, UpdateOutcome, UpdateReport};
use sea_orm::TransactionTrait;
use tokio::sync::broadcast;

use crate::{
    jobs::{self, LiveEvent},
    state::AppState,
    store::{
        self, StoreError,
        hosts::Host,
        jobs::{ActorKind, Job, JobKind, JobStatus, NewJob},
    },
    text, version,
};

/// How an update job ended, for whoever waits on it (the fleet worker).
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub job_id: i64,
    pub host_id: i64,
    pub succeeded: bool,
    pub reason: Option<String>,
}

/// Update jobs ending, for whoever waits on them.
pub struct Updates {
    finished: broadcast::Sender<Finished>,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            finished: broadcast::channel(256).0,
        }
    }
}

impl Updates {
    /// Update jobs ending, as they end.
    pub fn subscribe(&self) -> broadcast::Receiver<Finished> {
        self.finished.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no such host: it may have been removed")]
    HostNotFound,
    #[error("the agent is offline: it must be connected to receive an update")]
    HostOffline,
    #[error("the agent already runs {0}, the server's version")]
    AlreadyUpToDate(String),
    #[error("an update of this host is already in progress (job {0})")]
    UpdateInProgress(i64),
    #[error("{0}")]
    NoBinary(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DispatchError {
    pub fn code(&self) -> &'static str {
        match self {
            DispatchError::HostNotFound => "host_not_found",
            DispatchError::HostOffline => "host_offline",
            DispatchError::AlreadyUpToDate(_) => "already_up_to_date",
            DispatchError::UpdateInProgress(_) => "update_in_progress",
            DispatchError::NoBinary(_) => "no_binary",
            DispatchError::Store(_) => "internal",
        }
    }
}

/// Who asked for the update.
#[derive(Clone, Debug)]
pub struct Requester {
    pub kind: ActorKind,
    pub user_id: Option<i64>,
    pub name: String,
    pub client_addr: String,
}

async fn log(state: &AppState, job_id: i64, text: &str) {
    match store::jobs::append_server_line(&state.db, job_id, state.clock.now_ms(), text).await {
        Ok(Some(line)) => state.live.publish(job_id, LiveEvent::lines(vec![line])),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, job_id, "writing an update log line failed"),
    }
}

/// Whether `host` can be sent an update now, given whether it is online and
/// its live update job. Shared by [`dispatch`] and the host page's
/// **Update agent** button, so both refuse for the same reasons.
pub fn check_dispatchable(
    host: &Host,
    online: bool,
    live_update_job: Option<i64>,
) -> Result<(), DispatchError> {
    if !online {
        return Err(DispatchError::HostOffline);
    }
    if !host.is_behind(version::VERSION) {
        return Err(DispatchError::AlreadyUpToDate(version::VERSION.to_string()));
    }
    if let Some(j) = live_update_job {
        return Err(DispatchError::UpdateInProgress(j));
    }
    Ok(())
}

/// Checks, records and sends an update for one host.
pub async fn dispatch(
    state: &AppState,
    host_id: i64,
    by: &Requester,
) -> Result<Job, DispatchError> {
    let host = match store::hosts::get(&state.db, host_id).await {
        Ok(h) => h,
        Err(StoreError::NotFound(_)) => return Err(DispatchError::HostNotFound),
        Err(e) => return Err(e.into()),
    };
    let live = store::jobs::live_of_kind(&state.db, host_id, JobKind::Update).await?;
    check_dispatchable(&host, state.hub.is_online(host_id), live.map(|j| j.id))?;
    let target = version::VERSION;
    let Some(bin) = store::agent_binaries::get(&state.db, &host.os, &host.arch).await? else {
        return Err(DispatchError::NoBinary(format!(
            "no agent binary is staged for {}/{}: stage a {target} build with `restic-manager agent-binary add PATH --os {} --arch {}`",
            host.os, host.arch, host.os, host.arch
        )));
    };
    if bin.version != target {
        return Err(DispatchError::NoBinary(format!(
            "the agent binary staged for {}/{} is {}, not the server's {target}: stage a {target} build",
            host.os, host.arch, bin.version
        )));
    }
    let now = state.clock.now_ms();
    let timeout = state.settings.update_timeout;
    // The host's next hello looks for this job (`agents::marks`).
    let _marked = state.marks.guard(crate::agents::marks::Mark::Jobs, host_id);
    let txn = state.db.begin().await.map_err(StoreError::from)?;
    let new = NewJob {
        host_id,
        kind: JobKind::Update,
        actor_kind: by.kind,
        actor_id: by.user_id,
        actor_name: by.name.clone(),
        target_version: Some(target.to_string()),
        deadline_at: Some(now + timeout.as_millis() as i64),
    };
    let job = match store::jobs::create(&txn, &new, now).await {
        Ok(j) => j,
        Err(StoreError::Db(e)) if store::is_unique_violation(&e) => {
            // Lost a race with another dispatch for the same host.
            let live = store::jobs::live_of_kind(&state.db, host_id, JobKind::Update).await?;
            return Err(DispatchError::UpdateInProgress(
                live.map(|j| j.id).unwrap_or(0),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    store::audit::record(
        &txn,
        store::audit::NewEntry {
            at: now,
            actor: &by.name,
            actor_id: by.user_id,
            action: "host.update_dispatched",
            target_kind: "host",
            target_id: host_id.to_string(),
            details: serde_json::json!({
                "job_id": job.id, "from_version": host.agent_version, "target_version": target,
                "sha256": bin.sha256,
            }),
            client_addr: by.client_addr.clone(),
        },
    )
    .await?;
    txn.commit().await.map_err(StoreError::from)?;
    tracing::info!(host_id, job_id = job.id, from = %host.agent_version, to = target, "dispatching agent update");
    log(
        state,
        job.id,
        &format!(
            "update of {} from {} to {target} requested by {}; sending the command (binary sha256 {}, {} bytes)",
            host.name, host.agent_version, by.name, bin.sha256, bin.size
        ),
    )
    .await;
    let cmd = CommandUpdate {
        job_id: job.id,
        target_version: target.to_string(),
        sha256: bin.sha256.clone(),
        size: bin.size as u64,
        stage_within_secs: Some(stage_within(
            state.settings.update_timeout,
            state.settings.update_min_healthy,
        )),
    };
    if let Err(e) = state.hub.send(host_id, cmd.envelope().to_text()) {
        let reason = format!("could not send the update command: {e}");
        fail(state, &job, &reason).await;
        return Err(DispatchError::HostOffline);
    }
    state.deadlines.wake();
    Ok(job)
}

async fn succeed(state: &AppState, job: &Job, version: &str) {
    log(
        state,
        job.id,
        &format!("update succeeded: the agent runs {version} and stays connected"),
    )
    .await;
    match jobs::finish(state, job.id, JobStatus::Succeeded, None).await {
        Ok(Some(_)) => {
            tracing::info!(
                host_id = job.host_id,
                job_id = job.id,
                version,
                "agent update succeeded"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, job_id = job.id, "recording update success failed"),
    }
}

async fn fail(state: &AppState, job: &Job, reason: &str) {
    log(state, job.id, &format!("update failed: {reason}")).await;
    match jobs::finish(state, job.id, JobStatus::Failed, Some(reason)).await {
        Ok(Some(_)) => {
            tracing::warn!(
                host_id = job.host_id,
                job_id = job.id,
                reason,
                "agent update failed"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, job_id = job.id, "recording update failure failed"),
    }
}

/// An update job ended (the job lifecycle calls this once per job, however
/// it ended): its alert, and the news for whoever waits on it. A job the
/// agent itself ended, failed or cancelled before swapping, leaves the host
/// on its old version.
pub async fn on_finished(state: &AppState, job: &Job) {
    let outcome = outcome_of(job);
    match outcome.reason.as_deref() {
        None => crate::alerts::resolve_update_failed(state, job.host_id).await,
        Some(why) => crate::alerts::raise_update_failed(state, job.host_id, job.id, why).await,
    }
    let _ = state.updates.finished.send(outcome);
}

/// What an ended update job means for whoever waits on it, the same whether
/// it is heard as the job ends or read back later: a failure always has a
/// reason, one the agent did not give included.
pub fn outcome_of(job: &Job) -> Finished {
    let succeeded = job.status == JobStatus::Succeeded;
    let reason = (!succeeded).then(|| {
        job.error.clone().unwrap_or_else(|| {
            if job.status == JobStatus::Cancelled {
                "the agent cancelled the update".into()
            } else {
                "the agent reported a failure".into()
            }
        })
    });
    Finished {
        job_id: job.id,
        host_id: job.host_id,
        succeeded,
        reason,
    }
}

/// Time to allow restarting and saying hello after the swap.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(15);

/// Seconds the agent gets to stage the new binary: what is left of the
/// deadline after the restart and the healthy period, so that an agent that
/// is still downloading gives up before the server fails the job, never
/// swaps after. At least 5 s.
pub fn stage_within(update_timeout: Duration, min_healthy: Duration) -> u64 {
    update_timeout
        .saturating_sub(min_healthy + RESTART_ALLOWANCE)
        .as_secs()
        .max(5)
}

/// An agent said hello: finish its update job if this hello settles it.
/// `may_have_jobs` false (the host has no live job, `agents::marks`) skips
/// the read. Returns false when the host surely has no live update job.
pub async fn on_hello(
    state: &AppState,
    host_id: i64,
    conn_id: u64,
    agent_version: &str,
    report: Option<&UpdateReport>,
    update_failed_open: bool,
    may_have_jobs: bool,
) -> bool {
    let live = if may_have_jobs {
        store::jobs::live_of_kind(&state.db, host_id, JobKind::Update).await
    } else {
        Ok(None)
    };
    let job = match live {
        Ok(Some(j)) => j,
        Ok(None) => {
            // Back at the server's version some other way (e.g. a manual
            // install): an earlier failed update no longer matters.
            if agent_version == version::VERSION && update_failed_open {
                crate::alerts::resolve_update_failed(state, host_id).await;
            }
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, host_id, "looking up a live update job failed");
            return true;
        }
    };
    settle_on_hello(state, conn_id, agent_version, report, job).await;
    true
}

async fn settle_on_hello(
    state: &AppState,
    conn_id: u64,
    agent_version: &str,
    report: Option<&UpdateReport>,
    job: Job,
) {
    if let Some(r) = report.filter(|r| r.job_id == job.id && r.outcome == UpdateOutcome::RolledBack)
    {
        // Both come from the agent: bounded and cleaned before they reach
        // the job, the alert and a fleet run's halt reason.
        let why = r.reason.as_deref().map_or_else(
            || "the new agent did not stay up".to_string(),
            |w| text::agent_text(w, text::AGENT_TEXT_MAX_BYTES),
        );
        let from = text::agent_text(&r.from_version, 64);
        fail(state, &job, &format!("rolled back to {from}: {why}")).await;
        return;
    }
    let target = job.target_version.clone().unwrap_or_default();
    if agent_version != target {
        log(
            state,
            job.id,
            &format!("agent connected at {agent_version}, expected {target}; waiting"),
        )
        .await;
        return;
    }
    let healthy = state.settings.update_min_healthy;
    if healthy.is_zero() {
        succeed(state, &job, agent_version).await;
        return;
    }
    log(
        state,
        job.id,
        &format!(
            "agent reconnected at {agent_version}; checking it stays up for {} s",
            healthy.as_secs_f32()
        ),
    )
    .await;
    let state = state.clone();
    let version = agent_version.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(healthy).await;
        if state.hub.is_current(job.host_id, conn_id) {
            succeed(&state, &job, &version).await;
        } else {
            log(
                &state,
                job.id,
                "the agent dropped during the healthy period; waiting for it to come back",
            )
            .await;
        }
    });
}

/// An update job past its deadline: success if the agent is back at the
/// target and still here, else failure with what went wrong.
pub async fn on_deadline(state: &AppState, job: &Job) -> store::Result<()> {
    let target = job.target_version.clone().unwrap_or_default();
    let host = store::hosts::get(&state.db, job.host_id).await.ok();
    let online_now = state.hub.is_online(job.host_id);
    match host {
        // Back at the target and still here (the healthy timer was cut
        // short by the deadline, or lost to a restart): that is success.
        Some(h) if online_now && h.agent_version == target => succeed(state, job, &target).await,
        Some(h) if online_now && !h.agent_version.is_empty() => {
            fail(
                state,
                job,
                &format!(
                    "agent reconnected at {}, expected {target}",
                    h.agent_version
                ),
            )
            .await
        }
        _ => {
            let secs = state.settings.update_timeout.as_secs();
            fail(
                state,
                job,
                &format!("timeout: agent did not reconnect within {secs}s"),
            )
            .await
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_deadline_less_the_restart_and_healthy_period() {
        let s = |t, h| stage_within(Duration::from_secs(t), Duration::from_secs(h));
        assert_eq!(s(90, 5), 70);
        assert_eq!(s(600, 0), 585);
        assert_eq!(s(10, 5), 5, "never less than 5 s");
    }
}
