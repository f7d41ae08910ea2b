//! The handler the agent binary runs: `command.update` to the self-updater,
//! `command.restic` and `command.cancel` to the restic job runner, and the
//! hello's restic fields from the latter. Routing only; no behaviour.

use std::sync::Arc;

use crate::client::{CommandHandler, FrameSender, HelloStatus};
use crate::restic::ResticHandler;
use crate::wire::{self, Envelope};

pub struct AgentHandler {
    update: Arc<dyn CommandHandler>,
    restic: ResticHandler,
}

impl AgentHandler {
    /// `update` handles everything that is not a restic command (normally
    /// `updater::UpdateHandler`, which ignores what it does not know).
    pub fn new(update: Arc<dyn CommandHandler>, restic: ResticHandler) -> Self {
        AgentHandler { update, restic }
    }
}

impl CommandHandler for AgentHandler {
    fn handle(&self, frame: Envelope, sender: FrameSender) {
        match frame.kind.as_str() {
            wire::COMMAND_RESTIC | wire::COMMAND_CANCEL => self.restic.handle(frame, sender),
            _ => self.update.handle(frame, sender),
        }
    }

    fn hello_status(&self) -> HelloStatus {
        self.restic.hello_status()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::restic::{CANCEL_GRACE, ResticSettings};
    use crate::wire::{CommandCancel, CommandUpdate, Message};

    #[tokio::test]
    async fn routes_restic_commands_and_reports_restic_in_the_hello() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let update = move |frame: Envelope, _sender: FrameSender| {
            record.lock().unwrap().push(frame.kind);
        };
        let restic = ResticHandler::new(ResticSettings {
            restic_path: "/nonexistent/restic".into(),
            cache_dir: std::env::temp_dir(),
            cancel_grace: CANCEL_GRACE,
            secrets_dir: None,
        });
        let handler = AgentHandler::new(Arc::new(update), restic);
        let (sender, _rx) = FrameSender::detached(8);
        let command = CommandUpdate {
            job_id: 1,
            target_version: "v2".into(),
            sha256: "00".into(),
            size: 1,
            stage_within_secs: None,
        };
        handler.handle(command.envelope(), sender.clone());
        handler.handle(CommandCancel { job_id: 2 }.envelope(), sender.clone());
        assert_eq!(*seen.lock().unwrap(), [wire::COMMAND_UPDATE]);
        let status = handler.hello_status();
        // Restic-capable even when idle and without restic installed.
        assert_eq!(status.running_jobs, Some(vec![]));
        assert_eq!(status.restic_version, None);
    }
}
