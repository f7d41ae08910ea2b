//! `command.update` as an update job: `job.started`, one `log.stream` line
//! per step, then either `job.finished` failed with the reason, or a last
//! line and an [`ExitRequest`] so the binary exits 0 and the supervisor
//! starts the new one. One update at a time; other message types go to the
//! [`DefaultHandler`].

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{Instrument, info, warn};

use super::fetch_verify_and_swap;
use crate::client::{CommandHandler, DefaultHandler, FrameSender};
use crate::config::AgentConfig;
use crate::wire::{
    self, CommandUpdate, Envelope, JobFinished, JobKind, JobStarted, LogStream, LogStreamKind,
    Message,
};

/// The error of an update job refused because another one is running.
pub const UPDATE_ALREADY_RUNNING: &str = "an update is already running";

/// Sent once the new binary is in place: the process should shut the
/// client down (flushing queued frames) and exit 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRequest {
    pub job_id: i64,
    pub to_version: String,
}

/// Runs `command.update`; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct UpdateHandler {
    inner: Arc<Inner>,
}

struct Inner {
    server_url: String,
    secret: String,
    /// This binary's path, saved at start; `Err` says why it is unknown,
    /// and every update then fails with that reason.
    binary: Result<PathBuf, String>,
    current_version: String,
    exit: mpsc::Sender<ExitRequest>,
    /// The job being run. Stays set after a successful swap: this process
    /// is about to exit and must not start another update.
    running: Mutex<Option<i64>>,
}

impl fmt::Debug for UpdateHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateHandler")
            .field("server_url", &self.inner.server_url)
            .field("secret", &"[redacted]")
            .field("binary", &self.inner.binary)
            .field("current_version", &self.inner.current_version)
            .finish_non_exhaustive()
    }
}

impl UpdateHandler {
    /// `binary` is the path saved at start ([`super::resolve_own_binary`]);
    /// `current_version` is what this binary reports.
    pub fn new(
        config: &AgentConfig,
        binary: Result<PathBuf, String>,
        current_version: &str,
        exit: mpsc::Sender<ExitRequest>,
    ) -> Self {
        UpdateHandler {
            inner: Arc::new(Inner {
                server_url: config.server_url.clone(),
                secret: config.secret.clone(),
                binary,
                current_version: current_version.to_string(),
                exit,
                running: Mutex::new(None),
            }),
        }
    }
}

impl CommandHandler for UpdateHandler {
    fn handle(&self, frame: Envelope, sender: FrameSender) {
        if frame.kind != wire::COMMAND_UPDATE {
            return DefaultHandler.handle(frame, sender);
        }
        let command: CommandUpdate = match frame.payload() {
            Ok(command) => command,
            Err(e) => {
                // Answer the job if it can be named, so the server does not
                // wait for its deadline.
                #[derive(serde::Deserialize)]
                struct JobOnly {
                    job_id: i64,
                }
                let Ok(JobOnly { job_id }) = frame.payload::<JobOnly>() else {
                    warn!(error = %e, "ignoring a command.update without a usable payload");
                    return;
                };
                warn!(job_id, error = %e, "refusing a command.update without a usable payload");
                let mut reply = failed(job_id, format!("the update command is unusable: {e}"));
                reply.id = frame.id;
                tokio::spawn(async move {
                    let _ = sender.send(&reply).await;
                });
                return;
            }
        };
        {
            let mut running = self
                .inner
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match *running {
                // The server re-sent the job it is waiting for (e.g. after a
                // reconnect): it is under way, do not fail it.
                Some(job_id) if job_id == command.job_id => {
                    info!(job_id, "update already under way; ignoring the repeat");
                    return;
                }
                Some(job_id) => {
                    warn!(
                        job_id = command.job_id,
                        running = job_id,
                        "{UPDATE_ALREADY_RUNNING}"
                    );
                    let mut reply = failed(command.job_id, UPDATE_ALREADY_RUNNING.into());
                    reply.id = frame.id;
                    tokio::spawn(async move {
                        let _ = sender.send(&reply).await;
                    });
                    return;
                }
                None => *running = Some(command.job_id),
            }
        }
        let span = tracing::info_span!(
            "update",
            job_id = command.job_id,
            target_version = %command.target_version
        );
        tokio::spawn(run_update(self.inner.clone(), command, frame.id, sender).instrument(span));
    }
}

fn failed(job_id: i64, error: String) -> Envelope {
    JobFinished::failed(job_id, error).envelope()
}

async fn run_update(
    inner: Arc<Inner>,
    command: CommandUpdate,
    reply_id: Option<String>,
    sender: FrameSender,
) {
    let job_id = command.job_id;
    // The updater logs synchronously; an ordered channel in front of the
    // (async, bounded) FrameSender keeps the frames in order.
    let (frames, mut queued) = mpsc::unbounded_channel::<Envelope>();
    let forward = tokio::spawn(async move {
        while let Some(frame) = queued.recv().await {
            if let Err(e) = sender.send(&frame).await {
                warn!(error = %e, "could not queue an update job frame");
                break;
            }
        }
    });

    let mut started = JobStarted {
        job_id,
        kind: Some(JobKind::Update),
    }
    .envelope();
    started.id = reply_id;
    let _ = frames.send(started);
    let mut seq = 0;
    let mut log = |line: String| {
        info!("{line}");
        seq += 1;
        let chunk = LogStream {
            job_id,
            seq,
            stream: LogStreamKind::System,
            data: format!("{line}\n"),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let _ = frames.send(chunk.envelope());
    };

    let result = match &inner.binary {
        Ok(bin) => {
            fetch_verify_and_swap(
                &inner.server_url,
                &inner.secret,
                bin,
                &command,
                &inner.current_version,
                &mut log,
            )
            .await
        }
        Err(reason) => Err(super::UpdateError::OwnBinary(reason.clone())),
    };
    let swapped = match result {
        Ok(()) => {
            log(format!(
                "binary swapped; restarting to run {}",
                command.target_version
            ));
            true
        }
        Err(e) => {
            let reason = e.to_string();
            log(format!("update failed: {reason}"));
            let _ = frames.send(failed(job_id, reason));
            false
        }
    };
    drop(frames);
    // Every frame of the job is in the client's queue before anyone exits.
    let _ = forward.await;

    if swapped {
        let request = ExitRequest {
            job_id,
            to_version: command.target_version,
        };
        if inner.exit.send(request).await.is_err() {
            warn!("nobody is waiting to restart the agent; the new binary runs at the next start");
        }
    } else {
        *inner
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}
