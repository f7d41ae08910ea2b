//! Job lifecycle driven by agent messages (`job.started`, `log.stream`,
//! `job.finished`) and by the server itself, with every change published to
//! live watchers. Refuses messages about unknown jobs or other hosts' jobs.
pub mod live;

use agent::wire::{self, Envelope, FinishedStatus, JobFinished, JobStarted, LogStream};

use crate::{
    state::AppState,
    store::{
        self,
        jobs::{Appended, Job, JobStatus, NewLine, Refusal, Transition},
    },
    text,
};
pub use live::{LiveEvent, LiveJobs};

fn refused(kind: &str, job_id: i64, host_id: i64, r: Refusal) {
    tracing::warn!(job_id, host_id, message = kind, reason = %r, "agent job message refused");
}

fn publish_status(state: &AppState, t: &Transition) {
    if t.changed {
        state
            .live
            .publish(t.job.id, LiveEvent::Status(Box::new(t.job.clone())));
    }
}

/// Handles a job message from `host_id`'s agent. Returns the job when its
/// status changed (for callers that react to it, e.g. the update watcher).
pub async fn agent_message(state: &AppState, host_id: i64, env: &Envelope) -> Option<Job> {
    let now = state.clock.now_ms();
    match env.kind.as_str() {
        wire::JOB_STARTED => {
            let m: JobStarted = parse(env)?;
            match store::jobs::start(&state.db, m.job_id, Some(host_id), now).await {
                Ok(Ok(t)) => {
                    publish_status(state, &t);
                    t.changed.then_some(t.job)
                }
                Ok(Err(r)) => {
                    refused("job.started", m.job_id, host_id, r);
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, job_id = m.job_id, "recording job.started failed");
                    None
                }
            }
        }
        wire::JOB_FINISHED => {
            let m: JobFinished = parse(env)?;
            let kind = store::jobs::get(&state.db, m.job_id)
                .await
                .ok()
                .map(|j| j.kind);
            if kind.is_some_and(store::jobs::JobKind::is_restic) {
                // Results, warnings and the snapshot index: the restic core's.
                return crate::restic::events::finished(state, host_id, &m).await;
            }
            if m.status == FinishedStatus::Succeeded && kind == Some(store::jobs::JobKind::Update) {
                // An update succeeds when the new agent says hello, never on
                // the old agent's word.
                tracing::warn!(
                    job_id = m.job_id,
                    host_id,
                    "agent claimed an update succeeded; ignored"
                );
                return None;
            }
            let status = match m.status {
                FinishedStatus::Succeeded => JobStatus::Succeeded,
                FinishedStatus::Failed => JobStatus::Failed,
                FinishedStatus::Cancelled => JobStatus::Cancelled,
            };
            match store::jobs::finish(
                &state.db,
                m.job_id,
                Some(host_id),
                status,
                m.error
                    .as_deref()
                    .map(|e| text::agent_text(e, text::AGENT_TEXT_MAX_BYTES))
                    .as_deref(),
                m.exit_code,
                now,
            )
            .await
            {
                Ok(Ok(t)) => {
                    publish_status(state, &t);
                    t.changed.then_some(t.job)
                }
                Ok(Err(r)) => {
                    refused("job.finished", m.job_id, host_id, r);
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, job_id = m.job_id, "recording job.finished failed");
                    None
                }
            }
        }
        wire::LOG_STREAM => {
            agent_logs(state, host_id, std::slice::from_ref(env)).await;
            None
        }
        _ => None,
    }
}

/// Handles a run of `log.stream` messages from `host_id`'s agent (what was
/// waiting on its socket): each job's lines are stored in one transaction
/// and published as one event. Order is kept; other kinds are ignored.
pub async fn agent_logs(state: &AppState, host_id: i64, envs: &[Envelope]) {
    let now = state.clock.now_ms();
    let msgs: Vec<LogStream> = envs
        .iter()
        .filter(|e| e.kind == wire::LOG_STREAM)
        .filter_map(parse::<LogStream>)
        .map(|mut m| {
            // The frame limit and the log cap bound the size.
            m.data = text::without_nul(m.data);
            m
        })
        .filter(|m| {
            if m.seq < 1 {
                tracing::warn!(
                    job_id = m.job_id,
                    seq = m.seq,
                    "log line with a seq below 1 ignored"
                );
            }
            m.seq >= 1
        })
        .collect();
    for run in msgs.chunk_by(|a, b| a.job_id == b.job_id) {
        let job_id = run[0].job_id;
        let lines: Vec<NewLine> = run
            .iter()
            .map(|m| NewLine {
                seq: m.seq,
                ts: chrono::DateTime::parse_from_rfc3339(&m.at)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(now),
                stream: match m.stream {
                    wire::LogStreamKind::Stdout => "stdout",
                    wire::LogStreamKind::Stderr => "stderr",
                    wire::LogStreamKind::System => "system",
                },
                data: &m.data,
            })
            .collect();
        let cap = state.settings.job_log_cap_bytes;
        match store::jobs::append_logs(&state.db, job_id, host_id, &lines, cap).await {
            Ok(Ok(Appended { stored, ignored })) => {
                for (seq, why) in ignored {
                    tracing::debug!(job_id, seq, why, "log line ignored");
                }
                if !stored.is_empty() {
                    state.live.publish(job_id, LiveEvent::lines(stored));
                }
            }
            Ok(Err(r)) => refused("log.stream", job_id, host_id, r),
            Err(e) => tracing::error!(error = %e, job_id, "storing log lines failed"),
        }
    }
}

fn parse<P: serde::de::DeserializeOwned>(env: &Envelope) -> Option<P> {
    match env.payload::<P>() {
        Ok(p) => Some(p),
        Err(e) => {
            let error = text::one_line(&e.to_string(), 256);
            tracing::warn!(kind = %env.kind, %error, "malformed job message ignored");
            None
        }
    }
}

/// Ends a job from the server side (timeouts, failed dispatch, rollbacks).
/// Returns the job if this call is the one that ended it.
pub async fn finish(
    state: &AppState,
    job_id: i64,
    status: JobStatus,
    error: Option<&str>,
) -> store::Result<Option<Job>> {
    match store::jobs::finish(
        &state.db,
        job_id,
        None,
        status,
        error,
        None,
        state.clock.now_ms(),
    )
    .await?
    {
        Ok(t) => {
            publish_status(state, &t);
            Ok(t.changed.then_some(t.job))
        }
        Err(_) => Ok(None),
    }
}
