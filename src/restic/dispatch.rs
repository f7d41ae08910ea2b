//! The restic dispatcher: one task that starts queued restic jobs when the
//! rules allow, reading the rules' state from the database every round, so
//! a restart neither loses the queue nor breaks the rules:
//!
//! - one restic job per host at a time, in the order they were queued
//!   (`ls`, a short read-only listing a person is waiting on, is the one
//!   exception: it may run beside another job);
//! - in a repository scope (the repository; per host for a local one),
//!   `forget`, `prune`, `check` and `unlock` run alone, and a queued one
//!   holds back later jobs of that scope so it is not starved;
//! - other kinds share a scope up to the repository's
//!   `max_concurrent_backups` (0: no limit).
//!
//! It wakes when a job is queued or ends and when a host connects (no
//! polling; a slow safety tick covers a lost wake-up).
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agent::wire::{CommandRestic, Message as _, ResticOptions, ResticRepository};
use sea_orm::TransactionTrait;

use crate::{
    state::AppState,
    store::{
        self,
        jobs::{Job, JobKind, JobStatus, Outcome},
    },
};

/// Longest queue looked at per round.
const ROUND: u64 = 10_000;
const SAFETY_TICK: Duration = Duration::from_secs(30);

/// Agents older than the restic core get this instead of a command.
pub const AGENT_TOO_OLD: &str = "this host's agent is too old to run restic jobs: update the agent (Update agent on the host page), then run the job again";
pub const RESTIC_MISSING: &str = "restic is not installed on this host (or not at the agent's restic_path): install restic 0.14 or newer; the agent reports it on its next connection";

/// A running job whose agent has been away this long is given up: its
/// restic died with the agent or is stuck, and it would hold its
/// repository's exclusive jobs back forever.
pub const AGENT_GONE_AFTER_MS: i64 = 3600 * 1000;
pub const AGENT_GONE: &str = "the agent has been offline for an hour during the job: the run is given up; check the host, then run it again";

pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = round(&state).await {
                tracing::error!(error = %e, "restic dispatch round failed");
            }
            if let Err(e) = give_up_on_gone_agents(&state).await {
                tracing::error!(error = %e, "checking jobs of offline agents failed");
            }
            tokio::select! {
                () = state.restic.wake.notified() => {}
                () = tokio::time::sleep(SAFETY_TICK) => {}
            }
        }
    });
}

#[derive(Default)]
struct ScopeUse {
    exclusive: bool,
    shared: usize,
    /// A queued exclusive job is waiting for this scope.
    reserved: bool,
}

/// One pass over the queue. Public for tests.
pub async fn round(state: &AppState) -> store::Result<()> {
    let queued = store::jobs::queued_restic(&state.db, ROUND).await?;
    if queued.is_empty() {
        return Ok(());
    }
    let running = store::jobs::running_restic(&state.db).await?;
    let mut busy_hosts: HashSet<i64> = HashSet::new();
    let mut scopes: HashMap<String, ScopeUse> = HashMap::new();
    for j in &running {
        if j.kind != JobKind::Ls {
            busy_hosts.insert(j.host_id);
        }
        let s = scopes
            .entry(j.scope.clone().unwrap_or_default())
            .or_default();
        if j.kind.is_exclusive() {
            s.exclusive = true;
        } else {
            s.shared += 1;
        }
    }
    // Hosts whose queue head could not start: later jobs there wait too.
    let mut held_hosts: HashSet<i64> = HashSet::new();
    let mut limits: HashMap<i64, i32> = HashMap::new();
    // The hosts of the whole queue in a few reads, not one per job.
    let mut ids: Vec<i64> = queued
        .iter()
        .map(|j| j.host_id)
        .filter(|h| state.hub.is_online(*h))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let hosts = store::hosts::get_many(&state.db, &ids).await?;
    // Each repository is opened for agents once per round.
    let mut opened: HashMap<i64, Option<ResticRepository>> = HashMap::new();
    let mut picked: Vec<(Job, String)> = Vec::new();
    for job in queued {
        let is_ls = job.kind == JobKind::Ls;
        if !is_ls && (busy_hosts.contains(&job.host_id) || held_hosts.contains(&job.host_id)) {
            continue;
        }
        if !state.hub.is_online(job.host_id) {
            continue;
        }
        let Some(host) = hosts.get(&job.host_id) else {
            continue;
        };
        if !host.restic_capable {
            fail(state, &job, AGENT_TOO_OLD, Some("agent_outdated")).await;
            continue;
        }
        if host.restic_version.is_none() {
            fail(
                state,
                &job,
                RESTIC_MISSING,
                Some(agent::wire::ERROR_RESTIC_NOT_FOUND),
            )
            .await;
            continue;
        }
        let scope_key = job.scope.clone().unwrap_or_default();
        let limit = match job.repository_id {
            Some(r) => match limits.get(&r) {
                Some(l) => *l,
                None => {
                    let l = store::repositories::get(&state.db, r)
                        .await
                        .map(|r| r.max_concurrent_backups)
                        .unwrap_or(0);
                    limits.insert(r, l);
                    l
                }
            },
            None => 0,
        };
        let s = scopes.entry(scope_key).or_default();
        let fits = if job.kind.is_exclusive() {
            !s.exclusive && s.shared == 0 && !s.reserved
        } else {
            !s.exclusive && !s.reserved && (limit <= 0 || s.shared < limit as usize)
        };
        if !fits {
            if job.kind.is_exclusive() {
                s.reserved = true;
            }
            if !is_ls {
                held_hosts.insert(job.host_id);
            }
            continue;
        }
        let Some(command) = command_for(state, &job, &mut opened).await else {
            continue;
        };
        if job.kind.is_exclusive() {
            s.exclusive = true;
        } else {
            s.shared += 1;
        }
        if !is_ls {
            busy_hosts.insert(job.host_id);
        }
        picked.push((job, command));
    }
    // Marked running in a few transactions (one write each on SQLite), then
    // sent in queue order.
    let mut requeued = false;
    for chunk in picked.chunks(MARK_BATCH) {
        let marked = mark_dispatched(state, chunk).await?;
        for ((job, command), marked) in chunk.iter().zip(marked) {
            if marked {
                requeued |= !send(state, job, command).await?;
            }
        }
    }
    if requeued {
        // The places those jobs took in their scopes are free again.
        state.restic.wake();
    }
    Ok(())
}

/// Jobs marked running per transaction: few transactions, since each may
/// wait for SQLite's write lock behind agents' job messages.
const MARK_BATCH: usize = 1024;

/// queued → running for each job still queued, in one transaction of three
/// statements; says which were.
async fn mark_dispatched(state: &AppState, jobs: &[(Job, String)]) -> store::Result<Vec<bool>> {
    let ids: Vec<i64> = jobs.iter().map(|(j, _)| j.id).collect();
    // Ahead of the job writer's groups: when a backup starts is decided here.
    let _turn = state.write_gate.urgent().await;
    let txn = state.db.begin().await?;
    let marked = store::jobs::mark_dispatched_many(&txn, &ids).await?;
    txn.commit().await?;
    Ok(ids.iter().map(|id| marked.contains(id)).collect())
}

/// Fails running jobs whose host has been offline past
/// [`AGENT_GONE_AFTER_MS`]. Public for tests.
pub async fn give_up_on_gone_agents(state: &AppState) -> store::Result<()> {
    let now = state.clock.now_ms();
    for job in store::jobs::running_restic(&state.db).await? {
        if state.hub.is_online(job.host_id) {
            continue;
        }
        let last_seen = store::hosts::get(&state.db, job.host_id)
            .await
            .ok()
            .and_then(|h| h.last_seen_at)
            .unwrap_or(0);
        if now - last_seen.max(job.started_at.unwrap_or(job.created_at)) > AGENT_GONE_AFTER_MS {
            fail(state, &job, AGENT_GONE, Some("agent_gone")).await;
        }
    }
    Ok(())
}

async fn fail(state: &AppState, job: &Job, error: &str, kind: Option<&str>) {
    let outcome = Outcome {
        error: Some(error),
        error_kind: kind,
        ..Outcome::default()
    };
    if let Err(e) = crate::jobs::finish_with(state, job.id, JobStatus::Failed, &outcome).await {
        tracing::error!(job_id = job.id, error = %e, "failing a restic job failed");
    }
}

/// The `command.restic` frame for a job, its repository opened for the
/// agent (once per repository per round, in `opened`). None when the job
/// cannot run: it has been failed with the reason.
async fn command_for(
    state: &AppState,
    job: &Job,
    opened: &mut HashMap<i64, Option<ResticRepository>>,
) -> Option<String> {
    let Some(repository_id) = job.repository_id else {
        fail(state, job, "the job names no repository", None).await;
        return None;
    };
    let repository = match opened.get(&repository_id) {
        Some(r) => r.clone(),
        None => {
            let r =
                match super::repositories::open_for_agent(&state.db, &state.secrets, repository_id)
                    .await
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        // No secret in the message: it says which key, never a value.
                        fail(
                            state,
                            job,
                            &format!("cannot hand the repository to the agent: {e}"),
                            None,
                        )
                        .await;
                        return None;
                    }
                };
            opened.insert(repository_id, r.clone());
            r
        }
    }?;
    let options: ResticOptions = job
        .options
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default();
    let command = CommandRestic {
        job_id: job.id,
        kind: job.kind.wire(),
        repository,
        options,
    };
    Some(command.envelope().to_text())
}

/// Hands a job marked running to its agent. `Ok(false)`: the agent could
/// not take it now; the job is queued again.
async fn send(state: &AppState, job: &Job, command: &str) -> store::Result<bool> {
    match state.hub.send(job.host_id, command.to_string()) {
        Ok(()) => {
            tracing::info!(job_id = job.id, host_id = job.host_id, kind = %job.kind, "restic job dispatched");
            // Marking it running changed nothing else in the row.
            let j = Job {
                status: JobStatus::Running,
                ..job.clone()
            };
            state
                .live
                .publish(j.id, crate::jobs::LiveEvent::Status(Box::new(j)));
            Ok(true)
        }
        Err(e) => {
            tracing::info!(job_id = job.id, host_id = job.host_id, reason = %e, "agent could not take the job now; it stays queued");
            store::jobs::requeue(&state.db, job.id).await?;
            Ok(false)
        }
    }
}
