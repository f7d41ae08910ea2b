//! The outgoing queue: [`FrameSender`] and its errors.

use tokio::sync::mpsc;

use crate::wire::{self, Envelope, Message};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the agent has stopped")]
    Stopped,
    #[error("the outgoing queue is full")]
    Full,
    #[error("frame of {0} bytes exceeds the {max}-byte limit", max = wire::MAX_FRAME_BYTES)]
    TooLarge(usize),
}

/// Sends text frames to the server over whichever connection is current.
/// Cheap to clone; frames queue while disconnected (see the module docs).
#[derive(Debug, Clone)]
pub struct FrameSender {
    pub(super) tx: mpsc::Sender<String>,
}

impl FrameSender {
    /// A sender tied to no connection: frames land in the returned receiver.
    /// For tests and tools that drive a [`CommandHandler`] directly.
    pub fn detached(capacity: usize) -> (FrameSender, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (FrameSender { tx }, rx)
    }

    /// Queues a protocol frame, waiting for room in the queue.
    pub async fn send(&self, frame: &Envelope) -> Result<(), SendError> {
        self.send_text(frame.to_text()).await
    }

    /// Queues a typed message (`JobStarted`, `LogStream`, …).
    pub async fn send_message<M: Message>(&self, message: &M) -> Result<(), SendError> {
        self.send(&message.envelope()).await
    }

    /// Queues raw text as-is. Meant for tests that need to send what the
    /// protocol would not (malformed JSON); everything else uses `send`.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        let text = checked_size(text.into())?;
        self.tx.send(text).await.map_err(|_| SendError::Stopped)
    }

    /// Queues a frame without waiting; for synchronous callers.
    pub fn try_send(&self, frame: &Envelope) -> Result<(), SendError> {
        let text = checked_size(frame.to_text())?;
        self.tx.try_send(text).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
        })
    }
}

// The server closes the connection on an oversized frame, which would take
// every other queued frame down with it: refuse it here instead.
fn checked_size(text: String) -> Result<String, SendError> {
    if text.len() > wire::MAX_FRAME_BYTES {
        return Err(SendError::TooLarge(text.len()));
    }
    Ok(text)
}
