//! Job lifecycle: every change of a job's state, driven by agent messages
//! (`job.started`, `log.stream`, `job.finished`), by the server itself
//! ([`finish`]) and by deadlines ([`deadlines`]), with every change
//! published to live watchers. Refuses messages about unknown jobs or other
//! hosts' jobs. What a kind does beyond its row plugs in at one seam,
//! [`kinds`].
pub mod deadlines;
pub mod event_batch;
mod kinds;
pub mod live;
pub mod log_batch;

use agent::wire::{self, Envelope, FinishedStatus, JobFinished, JobStarted, LogStream};

use crate::{
    state::AppState,
    store::{
        self,
        jobs::{Job, JobStatus, Outcome, Refusal, Transition},
    },
    text,
};
pub use deadlines::Deadlines;
use event_batch::Recorded;
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

/// Handles a job message from `host_id`'s agent: `job.started`,
/// `job.finished`, `log.stream`, and the restic kinds' `job.progress` and
/// `job.snapshots`. Returns the job when its status changed.
pub async fn agent_message(state: &AppState, host_id: i64, env: &Envelope) -> Option<Job> {
    let now = state.clock.now_ms();
    match env.kind.as_str() {
        wire::JOB_STARTED => {
            let m: JobStarted = parse(env)?;
            let item = event_batch::Item {
                host_id,
                event: event_batch::Event::Started { job_id: m.job_id },
                now,
            };
            // Recorded with other agents' starts and ends (`event_batch`).
            match state.job_events.submit(state, item).await {
                Ok(Recorded::Done { t, .. }) => {
                    publish_status(state, &t);
                    t.changed.then_some(t.job)
                }
                Ok(Recorded::Refused(r)) => {
                    refused("job.started", m.job_id, host_id, r);
                    None
                }
                Ok(Recorded::NotTheAgents(_)) => None,
                Err(e) => {
                    tracing::error!(error = %e, job_id = m.job_id, "recording job.started failed");
                    None
                }
            }
        }
        wire::JOB_FINISHED => {
            let m: JobFinished = parse(env)?;
            agent_finished(state, host_id, &m).await
        }
        wire::LOG_STREAM => {
            agent_logs(state, host_id, std::slice::from_ref(env)).await;
            None
        }
        wire::JOB_PROGRESS | wire::JOB_SNAPSHOTS => {
            kinds::agent_report(state, host_id, env).await;
            None
        }
        _ => None,
    }
}

/// An agent's `job.finished` (also the finishes a hello lists): records the
/// outcome once, if the job's kind lets the agent end it so, then runs the
/// kind's end. Returns the job if this call ended it.
pub async fn agent_finished(state: &AppState, host_id: i64, m: &JobFinished) -> Option<Job> {
    let status = match m.status {
        FinishedStatus::Succeeded => JobStatus::Succeeded,
        FinishedStatus::Failed => JobStatus::Failed,
        FinishedStatus::Cancelled => JobStatus::Cancelled,
    };
    let error = m
        .error
        .as_deref()
        .map(|e| text::agent_text(e, text::AGENT_TEXT_MAX_BYTES));
    let error_kind = m.error_kind.as_deref().map(|k| text::one_line(k, 64));
    let result = m
        .result
        .as_ref()
        .map(|r| r.to_string())
        // The frame limit already bounds it; this guards the column.
        .filter(|r| r.len() <= wire::MAX_FRAME_BYTES);
    let item = event_batch::Item {
        host_id,
        event: event_batch::Event::Finished(Box::new(event_batch::Finish {
            report: m.clone(),
            status,
            error,
            error_kind,
            result,
        })),
        now: state.clock.now_ms(),
    };
    // Recorded with other agents' starts and ends (`event_batch`), with
    // what the end writes beyond the row in the same transaction: whoever
    // reads the job as ended also reads its effects, and a server that dies
    // in between loses neither.
    match state.job_events.submit(state, item).await {
        Ok(Recorded::Done { t, health_recorded }) => ended(state, t, health_recorded).await,
        Ok(Recorded::NotTheAgents(job)) => {
            tracing::warn!(
                job_id = m.job_id,
                host_id,
                kind = %job.kind,
                status = status.as_str(),
                "agent claimed a job end its kind does not take from the agent; ignored"
            );
            None
        }
        Ok(Recorded::Refused(r)) => {
            refused("job.finished", m.job_id, host_id, r);
            None
        }
        Err(e) => {
            tracing::error!(error = %e, job_id = m.job_id, "recording job.finished failed");
            None
        }
    }
}

/// After a recorded end: the kind's end (once, by the call that ended the
/// job), then the new status to watchers. `health_recorded`: the end's
/// fleet health row was refreshed with it.
async fn ended(state: &AppState, t: Transition, health_recorded: bool) -> Option<Job> {
    if !t.changed {
        return None;
    }
    kinds::on_finished(state, &t.job, health_recorded).await;
    publish_status(state, &t);
    Some(t.job)
}

/// Handles a run of `log.stream` messages from `host_id`'s agent (what was
/// waiting on its socket): stored with other agents' lines in one
/// transaction ([`log_batch`]), each job's run published as one event.
/// Order is kept; other kinds are ignored.
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
    let mut jobs: Vec<log_batch::Lines> = Vec::new();
    for m in msgs {
        let line = log_batch::Line {
            seq: m.seq,
            ts: chrono::DateTime::parse_from_rfc3339(&m.at)
                .map(|t| t.timestamp_millis())
                .unwrap_or(now),
            stream: match m.stream {
                wire::LogStreamKind::Stdout => "stdout",
                wire::LogStreamKind::Stderr => "stderr",
                wire::LogStreamKind::System => "system",
            },
            data: m.data,
        };
        match jobs.last_mut() {
            Some(j) if j.job_id == m.job_id => j.lines.push(line),
            _ => jobs.push(log_batch::Lines {
                job_id: m.job_id,
                lines: vec![line],
            }),
        }
    }
    state.logs.submit(state, host_id, jobs).await;
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

/// Ends a job from the server side (timeouts, failed dispatch, rollbacks,
/// cancels, orphans). Returns the job if this call is the one that ended it.
pub async fn finish(
    state: &AppState,
    job_id: i64,
    status: JobStatus,
    error: Option<&str>,
) -> store::Result<Option<Job>> {
    let outcome = Outcome {
        error,
        ..Outcome::default()
    };
    finish_with(state, job_id, status, &outcome).await
}

/// [`finish`] with an error kind (and anything else an outcome holds).
pub async fn finish_with(
    state: &AppState,
    job_id: i64,
    status: JobStatus,
    outcome: &Outcome<'_>,
) -> store::Result<Option<Job>> {
    let now = state.clock.now_ms();
    match store::jobs::finish_with(&state.db, job_id, None, status, outcome, now).await? {
        Ok(t) => Ok(ended(state, t, false).await),
        Err(_) => Ok(None),
    }
}
