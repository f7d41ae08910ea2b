//! The agent's connection to the server: connect to `/agent/ws`, say hello,
//! hand commands to a [`CommandHandler`], reconnect with jittered backoff.
//! It owns the socket and the retry policy, not what commands do.
//!
//! One outgoing queue ([`FrameSender`]) outlives individual connections:
//! frames sent while disconnected wait (bounded) and go out on the next
//! connection right after its `hello.ack`, so a job that finishes during a
//! reconnect still reports. A frame already taken off the queue when a
//! connection dies is lost; the protocol tolerates that (hello carries the
//! update outcome, log chunks carry sequence numbers).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, info, warn};

use crate::config::{AgentConfig, ServerUrlError};
use crate::wire::UpdateReport;

mod backoff;
mod commands;
mod identity;
mod sender;
mod session;

pub(crate) use backoff::Backoff;
pub use commands::{CommandHandler, DefaultHandler, HelloStatus};
pub use identity::{Identity, local_hostname};
pub use sender::{FrameSender, SendError};
pub use session::ws_url;

/// What the default handler answers to `command.update`. The binary runs
/// with [`crate::updater::UpdateHandler`] instead; in-process agents (tests)
/// keep this refusal.
pub const UPDATE_UNSUPPORTED: &str = "self-update is not supported by this agent build";

/// Logged (and put into [`ConnState::last_error`]) when the server refuses
/// the secret at the WebSocket handshake.
pub const SECRET_REJECTED: &str = "agent secret rejected: re-enroll this host";

/// Logged (and put into [`ConnState::last_error`]) when the server closes a
/// live connection because another one for this host replaced it.
pub const REPLACED_ELSEWHERE: &str = "the server replaced this connection with another one for the same host: \
     if another machine uses this agent's config or secret (a cloned VM, a copied \
     config file), enroll each machine as its own host";

/// Frames waiting to go out. Bounded so a chatty job blocks (async `send`)
/// instead of growing memory while the server is away.
const OUTGOING_QUEUE: usize = 256;

/// How the connection loop behaves. `Default` is what the binary uses.
#[derive(Clone)]
pub struct RunOptions {
    pub identity: Identity,
    /// First reconnect delay; doubles per failed attempt up to `backoff_cap`.
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
    /// Drop and reconnect when nothing at all (frame, ping) arrived from the
    /// server for this long. Also bounds connecting and each write.
    pub idle_timeout: Duration,
    /// A connection acknowledged and up at least this long resets the backoff.
    pub healthy_after: Duration,
    /// Outcome of the last self-update; sent in every hello until one is
    /// acknowledged, so a connection lost mid-hello cannot swallow it.
    pub update_report: Option<UpdateReport>,
    /// Receives every server frame after `hello.ack` except the handshake.
    pub handler: Arc<dyn CommandHandler>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            identity: Identity::default(),
            backoff_initial: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            healthy_after: Duration::from_secs(10),
            update_report: None,
            handler: Arc::new(DefaultHandler),
        }
    }
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("identity", &self.identity)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_cap", &self.backoff_cap)
            .field("idle_timeout", &self.idle_timeout)
            .field("healthy_after", &self.healthy_after)
            .field("update_report", &self.update_report)
            .finish_non_exhaustive()
    }
}

/// What the connection loop is doing, published through a watch channel so
/// callers (tests, the boot watchdog) can wait on transitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnState {
    /// A WebSocket is open right now.
    pub connected: bool,
    /// The current connection's hello was acknowledged.
    pub acked: bool,
    /// WebSocket handshakes that succeeded since start.
    pub connects: u64,
    /// `hello.ack`s received since start.
    pub acks: u64,
    /// Reason of the most recent `hello.rejected` (kept after later successes).
    pub last_reject: Option<String>,
    /// The most recent failure to connect or stay connected (kept after
    /// later successes). [`SECRET_REJECTED`] when the server refused the secret.
    pub last_error: Option<String>,
    /// The loop has ended (shutdown or a config it cannot use).
    pub stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid agent config: {0}")]
    Config(String),
    #[error(transparent)]
    ServerUrl(#[from] ServerUrlError),
    #[error("cannot build the WebSocket request")]
    Request(#[source] tungstenite::Error),
    #[error("the agent task panicked or was cancelled")]
    Task(#[source] tokio::task::JoinError),
}

/// A running agent, for the binary and for tests that drive agents
/// in-process. Dropping it stops the agent too (closing the socket in the
/// background); [`AgentHandle::shutdown`] also waits for that.
#[derive(Debug)]
pub struct AgentHandle {
    shutdown: watch::Sender<bool>,
    state: watch::Receiver<ConnState>,
    sender: FrameSender,
    task: JoinHandle<Result<(), ClientError>>,
}

impl AgentHandle {
    /// Follows connection state; `borrow()` for now, `wait_for` for later.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Sends frames over the current (or next) connection.
    pub fn sender(&self) -> FrameSender {
        self.sender.clone()
    }

    /// Waits until `condition` holds, at most `timeout`. On timeout returns
    /// the last state seen, so a failing test can say what it got instead.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&ConnState) -> bool,
    ) -> Result<ConnState, ConnState> {
        let mut state = self.state.clone();
        let reached = match tokio::time::timeout(timeout, state.wait_for(|s| condition(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        reached.ok_or_else(|| state.borrow().clone())
    }

    /// Closes the connection with a normal Close frame, stops reconnecting
    /// and waits for the loop to end. A panic inside the loop is re-raised.
    pub async fn shutdown(self) {
        if let Err(e) = self.stop().await {
            warn!(error = %error_chain(&e), "agent loop had stopped with an error");
        }
    }

    /// Like [`AgentHandle::shutdown`], but returns the error the loop
    /// stopped with (an unusable config) instead of logging it.
    pub async fn stop(self) -> Result<(), ClientError> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ClientError::Task(e)),
        }
    }
}

/// Starts the connection loop on the current tokio runtime.
pub fn spawn(config: AgentConfig, opts: RunOptions) -> AgentHandle {
    crate::install_crypto_provider();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(ConnState::default());
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let sender = FrameSender { tx: out_tx };
    let span = tracing::info_span!("agent", host_id = config.host_id);
    let task = tokio::spawn(
        session::drive(
            config,
            opts,
            Shutdown(shutdown_rx),
            state_tx,
            out_rx,
            sender.clone(),
        )
        .instrument(span),
    );
    AgentHandle {
        shutdown: shutdown_tx,
        state: state_rx,
        sender,
        task,
    }
}

/// Runs the agent until `shutdown` completes, then closes the connection
/// cleanly. Returns early only for a config the loop cannot use.
pub async fn run(
    config: AgentConfig,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let AgentHandle {
        shutdown: stop,
        mut task,
        ..
    } = spawn(config, opts);
    let finished = tokio::select! {
        result = &mut task => result,
        () = shutdown => {
            info!("shutting down");
            let _ = stop.send(true);
            task.await
        }
    };
    finished.map_err(ClientError::Task)?
}

/// Resolves once shutdown was requested or the handle was dropped.
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    async fn wait(&mut self) {
        // An error means the handle is gone: nobody can stop us any more
        // and nobody is watching, so stop as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    fn requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

/// `error: cause: cause` on one line; tracing's `%` shows only the top.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests;
