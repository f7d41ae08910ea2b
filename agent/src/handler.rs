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
