//! What the agent does with the server's commands: the [`CommandHandler`]
//! seam, the hello fields a handler owns, and the default handler.

use tracing::{debug, warn};

use crate::wire::{self, CommandUpdate, Envelope, JobFinished, Message};

use super::{FrameSender, UPDATE_UNSUPPORTED};

/// Receives the server's commands. Called on the connection task for each
/// frame after `hello.ack`, so it must return quickly: spawn anything that
/// takes time and report through the [`FrameSender`].
pub trait CommandHandler: Send + Sync + 'static {
    fn handle(&self, frame: Envelope, sender: FrameSender);

    /// What this handler adds to every hello (restic and its jobs). The
    /// default says nothing, as agents before the restic core did.
    fn hello_status(&self) -> HelloStatus {
        HelloStatus::default()
    }
}

/// The hello fields a [`CommandHandler`] owns: read afresh for every
/// connection, so a reconnect reports the jobs running at that moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HelloStatus {
    pub restic_version: Option<String>,
    /// `None`: this agent cannot run restic jobs at all.
    pub running_jobs: Option<Vec<i64>>,
    pub recent_finished: Vec<JobFinished>,
}

impl<F> CommandHandler for F
where
    F: Fn(Envelope, FrameSender) + Send + Sync + 'static,
{
    fn handle(&self, frame: Envelope, sender: FrameSender) {
        self(frame, sender)
    }
}

/// The handler the binary runs with. Unknown types are logged at debug and
/// ignored, as the protocol requires.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHandler;

impl CommandHandler for DefaultHandler {
    fn handle(&self, frame: Envelope, sender: FrameSender) {
        match frame.kind.as_str() {
            // `updater::UpdateHandler` handles it for real.
            wire::COMMAND_UPDATE => refuse_update(frame, sender),
            other => debug!(
                kind = other,
                "ignoring a message type this agent does not handle"
            ),
        }
    }
}

/// Fails an update job at once, so the server does not wait for its deadline.
fn refuse_update(frame: Envelope, sender: FrameSender) {
    let command: CommandUpdate = match frame.payload() {
        Ok(command) => command,
        Err(e) => {
            warn!(error = %e, "ignoring a command.update without a usable payload");
            return;
        }
    };
    warn!(
        job_id = command.job_id,
        target_version = %command.target_version,
        "{UPDATE_UNSUPPORTED}"
    );
    let mut reply = JobFinished::failed(command.job_id, UPDATE_UNSUPPORTED).envelope();
    reply.id = frame.id;
    tokio::spawn(async move {
        if let Err(e) = sender.send(&reply).await {
            warn!(job_id = command.job_id, error = %e, "could not report the refused update");
        }
    });
}
