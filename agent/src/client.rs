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

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, error, info, warn};
use url::Url;

use crate::config::{self, AgentConfig, ServerUrlError};
use crate::version;
use crate::wire::{
    self, CommandUpdate, Envelope, FinishedStatus, Hello, HelloAck, HelloRejected, JobFinished,
    Message, UpdateReport,
};

/// The WebSocket endpoint, relative to the server URL.
pub const WS_PATH: &str = "agent/ws";

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

/// How long a closing handshake may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How long queued frames may take to go out when the agent shuts down.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = SplitSink<WsStream, WsMessage>;
type WsSource = SplitStream<WsStream>;

/// Who this agent says it is in `agent.hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub hostname: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            agent_version: version::VERSION.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            hostname: local_hostname(),
        }
    }
}

impl Identity {
    fn hello(&self, update: Option<UpdateReport>, status: HelloStatus) -> Hello {
        Hello {
            agent_version: self.agent_version.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
            hostname: self.hostname.clone(),
            update,
            restic_version: status.restic_version,
            running_jobs: status.running_jobs,
            recent_finished: status.recent_finished,
        }
    }
}

/// This machine's hostname without a syscall wrapper crate: `/etc/hostname`,
/// the kernel's view, then `$HOSTNAME`/`%COMPUTERNAME%`, else `unknown`.
pub fn local_hostname() -> String {
    fn from_file(path: &str) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
    }
    fn from_env(name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
    from_file("/etc/hostname")
        .or_else(|| from_file("/proc/sys/kernel/hostname"))
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| from_env("COMPUTERNAME"))
        .unwrap_or_else(|| "unknown".to_string())
}

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
    tx: mpsc::Sender<String>,
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
    let mut reply = JobFinished {
        job_id: command.job_id,
        status: FinishedStatus::Failed,
        error: Some(UPDATE_UNSUPPORTED.to_string()),
        exit_code: None,
        warning: false,
        error_kind: None,
        result: None,
    }
    .envelope();
    reply.id = frame.id;
    tokio::spawn(async move {
        if let Err(e) = sender.send(&reply).await {
            warn!(job_id = command.job_id, error = %e, "could not report the refused update");
        }
    });
}

/// `http(s)://host/prefix` → `ws(s)://host/prefix/agent/ws`.
pub fn ws_url(server_url: &str) -> Result<Url, ServerUrlError> {
    let mut url = config::endpoint_url(server_url, WS_PATH)?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    // http→ws and https→wss are always allowed by the URL standard.
    url.set_scheme(scheme)
        .map_err(|()| ServerUrlError::Scheme {
            url: server_url.to_string(),
        })?;
    Ok(url)
}

fn ws_request(url: &Url, secret: &str) -> Result<http::Request<()>, ClientError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(ClientError::Request)?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {secret}"))
        .map_err(|_| ClientError::Config("secret cannot travel in a header".into()))?;
    // Keeps the value out of http's Debug output.
    auth.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, auth);
    if let Ok(agent) = HeaderValue::from_str(&format!("restic-manager-agent/{}", version::VERSION))
    {
        headers.insert(http::header::USER_AGENT, agent);
    }
    Ok(request)
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(wire::MAX_FRAME_BYTES))
        .max_frame_size(Some(wire::MAX_FRAME_BYTES))
}

/// Reconnect delays: doubling from `initial` to `cap`, each drawn uniformly
/// from `[delay/2, delay]` so a fleet that lost the server at the same moment
/// does not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, cap: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let cap = cap.max(initial);
        Backoff {
            initial,
            cap,
            next: initial,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        jitter(delay)
    }

    /// For failures that retrying sooner cannot fix (secret or hello refused).
    pub(crate) fn cap_delay(&self) -> Duration {
        jitter(self.cap)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

fn jitter(delay: Duration) -> Duration {
    let low = delay / 2;
    let span = u64::try_from((delay - low).as_nanos()).unwrap_or(u64::MAX);
    // Without randomness fall back to the full delay: later, never sooner.
    let Ok(random) = getrandom::u64() else {
        return delay;
    };
    low + Duration::from_nanos(random % span.saturating_add(1))
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
        drive(
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

async fn drive(
    config: AgentConfig,
    opts: RunOptions,
    shutdown: Shutdown,
    state: watch::Sender<ConnState>,
    outgoing: mpsc::Receiver<String>,
    sender: FrameSender,
) -> Result<(), ClientError> {
    let checked = config
        .validate()
        .map_err(ClientError::Config)
        .and_then(|()| Ok(ws_url(&config.server_url)?))
        .and_then(|url| ws_request(&url, &config.secret).map(|_| url));
    let url = match checked {
        Ok(url) => url,
        Err(e) => {
            error!(error = %error_chain(&e), "agent cannot start");
            state.send_modify(|s| {
                s.last_error = Some(e.to_string());
                s.stopped = true;
            });
            return Err(e);
        }
    };
    let mut runner = Runner {
        backoff: Backoff::new(opts.backoff_initial, opts.backoff_cap),
        pending_report: opts.update_report.clone(),
        replaced: false,
        config,
        opts,
        url,
        shutdown,
        state,
        outgoing,
        sender,
    };
    let result = runner.run().await;
    runner.state.send_modify(|s| {
        s.connected = false;
        s.acked = false;
        s.stopped = true;
    });
    info!("agent stopped");
    result
}

/// How one connection attempt ended.
enum Attempt {
    Shutdown,
    /// No WebSocket came up; `fatal_for_now` means retrying soon is pointless.
    NotConnected {
        fatal_for_now: bool,
    },
    Ended(Session),
}

/// How an established connection ended.
struct Session {
    acked_at: Option<Instant>,
    ended_at: Instant,
    rejected: bool,
}

enum Flow {
    Continue,
    Rejected,
}

struct Runner {
    config: AgentConfig,
    opts: RunOptions,
    url: Url,
    shutdown: Shutdown,
    state: watch::Sender<ConnState>,
    outgoing: mpsc::Receiver<String>,
    sender: FrameSender,
    backoff: Backoff,
    pending_report: Option<UpdateReport>,
    /// The last connection was closed because another took its place:
    /// reconnect slowly, so two machines sharing a secret do not take turns
    /// knocking each other off every second.
    replaced: bool,
}

impl Runner {
    async fn run(&mut self) -> Result<(), ClientError> {
        info!(url = %self.url, "agent starting");
        loop {
            if self.shutdown.requested() {
                return Ok(());
            }
            let delay = match self.attempt().await? {
                Attempt::Shutdown => return Ok(()),
                Attempt::NotConnected { fatal_for_now } => {
                    if fatal_for_now {
                        self.backoff.cap_delay()
                    } else {
                        self.backoff.next_delay()
                    }
                }
                Attempt::Ended(session) => {
                    let healthy = session.acked_at.is_some_and(|at| {
                        session.ended_at.duration_since(at) >= self.opts.healthy_after
                    });
                    if healthy {
                        self.backoff.reset();
                    }
                    if session.rejected || std::mem::take(&mut self.replaced) {
                        self.backoff.cap_delay()
                    } else {
                        self.backoff.next_delay()
                    }
                }
            };
            debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after a delay"
            );
            tokio::select! {
                () = self.shutdown.wait() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn attempt(&mut self) -> Result<Attempt, ClientError> {
        let request = ws_request(&self.url, &self.config.secret)?;
        let connect = tokio::time::timeout(
            self.opts.idle_timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true),
        );
        let result = tokio::select! {
            () = self.shutdown.wait() => return Ok(Attempt::Shutdown),
            result = connect => result,
        };
        let ws = match result {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(tungstenite::Error::Http(response)))
                if response.status() == http::StatusCode::UNAUTHORIZED =>
            {
                // The server's JSON error says why (unknown vs. missing secret).
                let server_message = response
                    .body()
                    .as_deref()
                    .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                    .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                    .unwrap_or_default();
                error!(url = %self.url, server_message, "{SECRET_REJECTED}");
                self.note_error(SECRET_REJECTED.to_string());
                return Ok(Attempt::NotConnected {
                    fatal_for_now: true,
                });
            }
            Ok(Err(e)) => {
                let message = error_chain(&e);
                warn!(url = %self.url, error = %message, "cannot connect to the server");
                self.note_error(message);
                return Ok(Attempt::NotConnected {
                    fatal_for_now: false,
                });
            }
            Err(_elapsed) => {
                let message = format!(
                    "connecting timed out after {}s",
                    self.opts.idle_timeout.as_secs_f32()
                );
                warn!(url = %self.url, "{message}");
                self.note_error(message);
                return Ok(Attempt::NotConnected {
                    fatal_for_now: false,
                });
            }
        };
        info!(url = %self.url, "connected");
        self.state.send_modify(|s| {
            s.connected = true;
            s.acked = false;
            s.connects += 1;
        });
        let outcome = self.session(ws).await;
        self.state.send_modify(|s| {
            s.connected = false;
            s.acked = false;
        });
        Ok(outcome)
    }

    /// Drives one connection: hello, then read/write until it ends.
    async fn session(&mut self, ws: WsStream) -> Attempt {
        let (mut sink, mut source) = ws.split();
        let ended = |acked_at, rejected| {
            Attempt::Ended(Session {
                acked_at,
                ended_at: Instant::now(),
                rejected,
            })
        };

        let hello = self
            .opts
            .identity
            .hello(
                self.pending_report.clone(),
                self.opts.handler.hello_status(),
            )
            .envelope()
            .to_text();
        if let Err(e) = self.write(&mut sink, WsMessage::text(hello)).await {
            warn!(error = %e, "could not send the hello");
            self.note_error(e);
            return ended(None, false);
        }

        let idle_timeout = self.opts.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // Pings alone would keep a connection that never gets its ack
        // alive forever; without an ack nothing can be sent, so give up.
        let ack_deadline = tokio::time::sleep(idle_timeout);
        tokio::pin!(ack_deadline);
        let mut acked_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => {
                    if acked_at.is_some() {
                        self.flush(&mut sink).await;
                    }
                    close(sink, source, CloseCode::Normal, "agent shutting down").await;
                    return Attempt::Shutdown;
                }
                incoming = source.next() => {
                    // Anything at all, pings included, proves the server is there.
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    match incoming {
                        None => {
                            info!("server closed the connection");
                            return ended(acked_at, false);
                        }
                        Some(Err(e)) => {
                            let message = error_chain(&e);
                            warn!(error = %message, "connection lost");
                            self.note_error(message);
                            if let tungstenite::Error::Capacity(_) = e {
                                // The protocol's answer to an oversized frame.
                                send_close(&mut sink, CloseCode::Policy, "frame too large").await;
                            }
                            return ended(acked_at, false);
                        }
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Flow::Rejected = self.on_text(&text, &mut acked_at) {
                                close(sink, source, CloseCode::Normal, "hello rejected").await;
                                return ended(acked_at, true);
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            // tungstenite answers the Close itself; the next
                            // read then ends the stream.
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            if reason == wire::CLOSE_REPLACED {
                                error!("{REPLACED_ELSEWHERE}");
                                self.note_error(REPLACED_ELSEWHERE.to_string());
                                self.replaced = true;
                            } else {
                                info!(code, reason = %reason, "server is closing the connection");
                            }
                        }
                        Some(Ok(WsMessage::Binary(data))) => {
                            debug!(bytes = data.len(), "ignoring a binary frame");
                        }
                        // Pongs to pings are queued by tungstenite and flushed
                        // by the next read, which the loop always gets to.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                    }
                }
                Some(text) = self.outgoing.recv(), if acked_at.is_some() => {
                    if let Err(e) = self.write(&mut sink, WsMessage::text(text)).await {
                        warn!(error = %e, "could not send a frame; reconnecting");
                        self.note_error(e);
                        return ended(acked_at, false);
                    }
                }
                () = &mut ack_deadline, if acked_at.is_none() => {
                    let message = format!(
                        "no hello.ack within {}s",
                        idle_timeout.as_secs_f32()
                    );
                    warn!("{message}; reconnecting");
                    self.note_error(message);
                    send_close(&mut sink, CloseCode::Normal, "no hello.ack").await;
                    return ended(None, false);
                }
                () = &mut idle => {
                    let message = format!(
                        "nothing from the server for {}s",
                        idle_timeout.as_secs_f32()
                    );
                    warn!("{message}; reconnecting");
                    self.note_error(message);
                    // A silent server will not answer the Close either.
                    send_close(&mut sink, CloseCode::Away, "idle timeout").await;
                    return ended(acked_at, false);
                }
            }
        }
    }

    /// Handles one text frame. Never fails: a frame the agent cannot use is
    /// logged and skipped, because one bad frame must not cost the connection.
    fn on_text(&mut self, text: &str, acked_at: &mut Option<Instant>) -> Flow {
        let frame = match Envelope::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                warn!(error = %e, bytes = text.len(), "ignoring a malformed frame from the server");
                return Flow::Continue;
            }
        };
        match frame.kind.as_str() {
            wire::HELLO_ACK => {
                match frame.payload::<HelloAck>() {
                    Ok(ack) => {
                        if ack.host_id != self.config.host_id {
                            warn!(
                                server_host_id = ack.host_id,
                                "server acknowledged a different host id than the config holds"
                            );
                        }
                        info!(server_version = %ack.server_version, "hello acknowledged");
                    }
                    // The type alone is the server's yes; the details are nice to have.
                    Err(e) => warn!(error = %e, "hello.ack without the expected payload"),
                }
                *acked_at = Some(Instant::now());
                // Delivered: later hellos (reconnects) no longer carry it.
                self.pending_report = None;
                self.state.send_modify(|s| {
                    s.acked = true;
                    s.acks += 1;
                });
            }
            wire::HELLO_REJECTED => {
                let reason = frame
                    .payload::<HelloRejected>()
                    .map(|r| r.reason)
                    .unwrap_or_else(|_| "no reason given".to_string());
                error!(reason = %reason, "server rejected the hello");
                self.state.send_modify(|s| s.last_reject = Some(reason));
                return Flow::Rejected;
            }
            kind if acked_at.is_none() => {
                debug!(kind, "ignoring a frame that arrived before hello.ack");
            }
            _ => self.opts.handler.handle(frame, self.sender.clone()),
        }
        Flow::Continue
    }

    /// Sends what is already queued, so frames a job produced just before
    /// shutdown (an update's last lines) still go out. Bounded: a server
    /// that stopped reading must not hold up the exit.
    async fn flush(&mut self, sink: &mut WsSink) {
        let flushed = tokio::time::timeout(FLUSH_GRACE, async {
            let mut sent = 0u32;
            while let Ok(text) = self.outgoing.try_recv() {
                if let Err(e) = self.write(sink, WsMessage::text(text)).await {
                    warn!(error = %e, "could not send queued frames before closing");
                    break;
                }
                sent += 1;
            }
            sent
        })
        .await;
        match flushed {
            Ok(0) => {}
            Ok(sent) => debug!(frames = sent, "sent queued frames before closing"),
            Err(_) => warn!("gave up sending queued frames before closing"),
        }
    }

    /// Writes and flushes one message; bounded so a server that stopped
    /// reading cannot wedge the loop.
    async fn write(&self, sink: &mut WsSink, message: WsMessage) -> Result<(), String> {
        match tokio::time::timeout(self.opts.idle_timeout, sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err("write timed out".to_string()),
        }
    }

    fn note_error(&self, message: String) {
        self.state.send_modify(|s| s.last_error = Some(message));
    }
}

/// Sends a Close and waits briefly for the server's, so the server records
/// a clean close instead of a reset.
async fn close(mut sink: WsSink, mut source: WsSource, code: CloseCode, reason: &'static str) {
    send_close(&mut sink, code, reason).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = source.next().await {}
    })
    .await;
}

/// Sends a Close without waiting for the reply: for a peer that is silent
/// or misbehaving, where waiting would only delay the reconnect.
async fn send_close(sink: &mut WsSink, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await;
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
mod tests {
    use super::*;
    use crate::wire::{JOB_FINISHED, UpdateOutcome};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    const SECRET: &str = "test-secret-1";
    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn ws_urls_follow_the_server_url() {
        let cases = [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/agent/ws"),
            ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/agent/ws"),
            ("https://rm.example.com", "wss://rm.example.com/agent/ws"),
            (
                "https://rm.example.com/rm/",
                "wss://rm.example.com/rm/agent/ws",
            ),
            (
                "https://rm.example.com:8443/a/b",
                "wss://rm.example.com:8443/a/b/agent/ws",
            ),
        ];
        for (server, want) in cases {
            assert_eq!(ws_url(server).unwrap().as_str(), want, "{server}");
        }
        assert!(matches!(
            ws_url("ftp://rm.example.com"),
            Err(ServerUrlError::Scheme { .. })
        ));
        assert!(ws_url("rm.example.com").is_err());
    }

    #[test]
    fn request_carries_the_bearer_secret_but_never_shows_it() {
        let url = ws_url("http://127.0.0.1:1").unwrap();
        let request = ws_request(&url, SECRET).unwrap();
        let auth = request.headers().get(http::header::AUTHORIZATION).unwrap();
        assert_eq!(auth.to_str().unwrap(), format!("Bearer {SECRET}"));
        assert!(!format!("{request:?}").contains(SECRET));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_bounds() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for base in [1, 2, 4, 8, 16, 30, 30, 30] {
            let base = Duration::from_secs(base);
            let delay = backoff.next_delay();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} vs {base:?}");
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1));
        let capped = backoff.cap_delay();
        assert!(capped >= Duration::from_secs(15) && capped <= Duration::from_secs(30));
    }

    #[test]
    fn jitter_spreads_within_half_to_full() {
        let delay = Duration::from_secs(10);
        let samples: Vec<_> = (0..200).map(|_| jitter(delay)).collect();
        assert!(samples.iter().all(|d| *d >= delay / 2 && *d <= delay));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 100,
            "jitter is not random: {}",
            distinct.len()
        );
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_tolerates_silly_settings() {
        // A cap below the initial delay means "always the initial delay".
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert!(backoff.next_delay() <= Duration::from_secs(5));
        assert!(backoff.next_delay() <= Duration::from_secs(5));
    }

    fn test_config(url: &str) -> AgentConfig {
        AgentConfig {
            server_url: url.to_string(),
            host_id: 7,
            secret: SECRET.to_string(),
            ..AgentConfig::default()
        }
    }

    fn fast_opts() -> RunOptions {
        RunOptions {
            identity: Identity {
                hostname: "test-host".into(),
                ..Identity::default()
            },
            backoff_initial: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(5),
            ..RunOptions::default()
        }
    }

    type ServerWs = WebSocketStream<TcpStream>;

    /// A minimal agent endpoint: checks the bearer secret at the handshake
    /// (401 otherwise) and hands each accepted socket, numbered from 1, to
    /// `per_conn`. Returns the base URL to give the agent.
    async fn serve<F, Fut>(per_conn: F) -> String
    where
        F: Fn(u64, ServerWs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((socket, _)) = listener.accept().await {
                // The Err type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let check = |request: &Request, response: Response| {
                    assert_eq!(request.uri().path(), "/agent/ws");
                    let auth = request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if auth == Some(format!("Bearer {SECRET}").as_str()) {
                        Ok(response)
                    } else {
                        let mut refusal = ErrorResponse::new(Some("bad secret".into()));
                        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                        Err(refusal)
                    }
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(socket, check).await {
                    n += 1;
                    tokio::spawn(per_conn(n, ws));
                }
            }
        });
        url
    }

    /// The next text frame as an envelope, skipping control frames.
    async fn next_frame(ws: &mut ServerWs) -> Option<Envelope> {
        loop {
            match ws.next().await? {
                Ok(WsMessage::Text(text)) => return Envelope::parse(&text).ok(),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn send(ws: &mut ServerWs, text: String) {
        ws.send(WsMessage::text(text)).await.unwrap();
    }

    fn ack() -> String {
        HelloAck {
            host_id: 7,
            server_version: "v-test".into(),
        }
        .envelope()
        .to_text()
    }

    #[tokio::test]
    async fn hellos_then_reconnects_when_the_server_closes() {
        let (hellos_tx, mut hellos) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let hellos_tx = hellos_tx.clone();
            async move {
                let hello = next_frame(&mut ws).await;
                let _ = hellos_tx.send(hello);
                send(&mut ws, ack()).await;
                let _ = ws.close(None).await;
            }
        })
        .await;

        let agent = spawn(test_config(&url), fast_opts());
        let state = agent
            .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 1)
            .await
            .expect("agent reconnected");
        assert!(state.last_reject.is_none());

        let hello = hellos.recv().await.flatten().expect("a hello frame");
        assert_eq!(hello.kind, wire::AGENT_HELLO);
        let hello: Hello = hello.payload().unwrap();
        assert_eq!(
            hello,
            Hello {
                agent_version: version::VERSION.into(),
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                hostname: "test-host".into(),
                update: None,
                ..Default::default()
            }
        );
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_and_malformed_frames_do_not_break_the_connection() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let seen_tx = seen_tx.clone();
            async move {
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                send(
                    &mut ws,
                    r#"{"type":"future.thing","payload":{"x":1}}"#.into(),
                )
                .await;
                send(&mut ws, "{not json".into()).await;
                send(
                    &mut ws,
                    r#"{"type":"command.update","payload":{"oops":1}}"#.into(),
                )
                .await;
                ws.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
                ws.send(WsMessage::Ping(b"still there?".to_vec().into()))
                    .await
                    .unwrap();
                let mut update = CommandUpdate {
                    job_id: 31,
                    target_version: "v2".into(),
                    sha256: "00".repeat(32),
                    size: 10,
                    stage_within_secs: None,
                }
                .envelope();
                update.id = Some("c-1".into());
                send(&mut ws, update.to_text()).await;
                // The connection must still answer: a pong, then the job result.
                let mut ponged = false;
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        WsMessage::Pong(data) => ponged = data.as_ref() == b"still there?",
                        WsMessage::Text(text) => {
                            let _ = seen_tx.send((ponged, Envelope::parse(&text).ok()));
                        }
                        WsMessage::Close(frame) => {
                            let _ = seen_tx.send((
                                ponged,
                                frame.map(|f| Envelope {
                                    kind: format!("close:{}", u16::from(f.code)),
                                    id: None,
                                    payload: serde_json::Value::Null,
                                }),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        })
        .await;

        let agent = spawn(test_config(&url), fast_opts());
        let (ponged, reply) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("a reply in time")
            .expect("server task alive");
        assert!(ponged, "the ping was answered before the reply");
        let reply = reply.expect("a well-formed reply");
        assert_eq!(reply.kind, JOB_FINISHED);
        assert_eq!(reply.id.as_deref(), Some("c-1"));
        let finished: JobFinished = reply.payload().unwrap();
        assert_eq!(finished.job_id, 31);
        assert_eq!(finished.status, FinishedStatus::Failed);
        assert_eq!(finished.error.as_deref(), Some(UPDATE_UNSUPPORTED));

        let state = agent.state().borrow().clone();
        assert_eq!(
            (state.connects, state.connected, state.acked),
            (1, true, true)
        );

        // Shutting down sends a normal Close (1000).
        agent.shutdown().await;
        let (_, close) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("close in time")
            .expect("server task alive");
        assert_eq!(close.map(|c| c.kind).as_deref(), Some("close:1000"));
    }

    #[tokio::test]
    async fn raw_frames_from_the_handle_reach_the_server_after_the_ack() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let seen_tx = seen_tx.clone();
            async move {
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                while let Some(Ok(message)) = ws.next().await {
                    if let WsMessage::Text(text) = message {
                        let _ = seen_tx.send(text.to_string());
                    }
                }
            }
        })
        .await;

        let agent = spawn(test_config(&url), fast_opts());
        // Queued before the connection exists: goes out after the ack.
        agent.sender().send_text("{not json").await.unwrap();
        let text = tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text, "{not json");
        assert!(matches!(
            agent
                .sender()
                .send_text("x".repeat(wire::MAX_FRAME_BYTES + 1))
                .await,
            Err(SendError::TooLarge(_))
        ));
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn frames_queued_before_shutdown_go_out_before_the_close() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let seen_tx = seen_tx.clone();
            async move {
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        WsMessage::Text(text) => {
                            let _ = seen_tx.send(text.to_string());
                        }
                        WsMessage::Close(_) => {
                            let _ = seen_tx.send("close".to_string());
                        }
                        _ => {}
                    }
                }
            }
        })
        .await;
        let agent = spawn(test_config(&url), fast_opts());
        agent.wait_for(WAIT, |s| s.acked).await.expect("connected");
        for i in 0..50 {
            agent
                .sender()
                .send_text(format!("frame-{i}"))
                .await
                .unwrap();
        }
        agent.stop().await.unwrap();
        let mut got = Vec::new();
        while let Ok(Some(text)) = tokio::time::timeout(WAIT, seen.recv()).await {
            let closed = text == "close";
            got.push(text);
            if closed {
                break;
            }
        }
        let mut want: Vec<String> = (0..50).map(|i| format!("frame-{i}")).collect();
        want.push("close".into());
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_with_policy_violation_and_reconnects() {
        let (close_tx, mut closes) = mpsc::unbounded_channel();
        let url = serve(move |n, mut ws| {
            let close_tx = close_tx.clone();
            async move {
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                if n == 1 {
                    send(&mut ws, "x".repeat(wire::MAX_FRAME_BYTES + 1)).await;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if let WsMessage::Close(frame) = message {
                        let _ = close_tx.send(frame.map(|f| u16::from(f.code)));
                    }
                }
            }
        })
        .await;
        let agent = spawn(test_config(&url), fast_opts());
        let code = tokio::time::timeout(WAIT, closes.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, Some(1008));
        agent
            .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 2)
            .await
            .expect("reconnected");
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_refused_secret_is_reported_and_retried() {
        let url = serve(|_, _| async {}).await;
        let mut config = test_config(&url);
        config.secret = "wrong-secret".into();
        let agent = spawn(config, fast_opts());
        let state = agent
            .wait_for(WAIT, |s| s.last_error.as_deref() == Some(SECRET_REJECTED))
            .await
            .expect("401 reported");
        assert_eq!(state.connects, 0);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_connection_replaced_by_another_machine_is_reported_and_retried_slowly() {
        // The server closes the live connection with the "replaced" reason,
        // as it does when another agent with the same secret connects.
        let (connects_tx, mut connects) = mpsc::unbounded_channel();
        let url = serve(move |n, mut ws| {
            let connects_tx = connects_tx.clone();
            async move {
                let _ = connects_tx.send(Instant::now());
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                if n == 1 {
                    let _ = ws
                        .close(Some(tungstenite::protocol::CloseFrame {
                            code: CloseCode::Normal,
                            reason: wire::CLOSE_REPLACED.into(),
                        }))
                        .await;
                }
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
        let opts = RunOptions {
            backoff_cap: Duration::from_millis(800),
            ..fast_opts()
        };
        let agent = spawn(test_config(&url), opts);
        let state = agent
            .wait_for(WAIT, |s| s.connects >= 2 && s.acks >= 2)
            .await
            .expect("agent came back");
        assert_eq!(state.last_error.as_deref(), Some(REPLACED_ELSEWHERE));
        let first = connects.recv().await.unwrap();
        let second = connects.recv().await.unwrap();
        // The capped delay is jittered within [cap/2, cap]; the first
        // ordinary retry would be about 10 ms.
        assert!(
            second.duration_since(first) >= Duration::from_millis(400),
            "came back after {:?}",
            second.duration_since(first)
        );
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_rejected_hello_is_recorded_and_the_agent_closes() {
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let closed_tx = closed_tx.clone();
            async move {
                next_frame(&mut ws).await;
                let rejected = HelloRejected {
                    reason: "host deleted".into(),
                };
                send(&mut ws, rejected.envelope().to_text()).await;
                // Do not close: the agent must hang up by itself.
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        let _ = closed_tx.send(());
                    }
                }
            }
        })
        .await;
        let agent = spawn(test_config(&url), fast_opts());
        let state = agent
            .wait_for(WAIT, |s| s.last_reject.is_some())
            .await
            .expect("rejection recorded");
        assert_eq!(state.last_reject.as_deref(), Some("host deleted"));
        assert_eq!(state.acks, 0);
        tokio::time::timeout(WAIT, closed.recv())
            .await
            .expect("agent closed the rejected connection");
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_silent_server_is_dropped_after_the_idle_timeout() {
        let url = serve(|_, mut ws| async move {
            next_frame(&mut ws).await;
            send(&mut ws, ack()).await;
            // Then say nothing, and do not read either.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(ws);
        })
        .await;
        let opts = RunOptions {
            idle_timeout: Duration::from_millis(300),
            ..fast_opts()
        };
        let agent = spawn(test_config(&url), opts);
        let state = agent
            .wait_for(WAIT, |s| s.connects >= 2)
            .await
            .expect("reconnected after idling");
        assert!(
            state
                .last_error
                .unwrap_or_default()
                .contains("nothing from the server")
        );
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_server_that_never_acks_is_dropped() {
        let url = serve(|_, mut ws| async move {
            next_frame(&mut ws).await;
            // Keep the connection lively, but never answer the hello.
            loop {
                if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let opts = RunOptions {
            idle_timeout: Duration::from_millis(300),
            ..fast_opts()
        };
        let agent = spawn(test_config(&url), opts);
        let state = agent
            .wait_for(WAIT, |s| s.connects >= 2)
            .await
            .expect("gave up on the silent handshake");
        assert!(state.last_error.unwrap_or_default().contains("hello.ack"));
        assert_eq!(state.acks, 0);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn the_update_report_rides_every_hello_until_acknowledged() {
        let (hellos_tx, mut hellos) = mpsc::unbounded_channel();
        let url = serve(move |n, mut ws| {
            let hellos_tx = hellos_tx.clone();
            async move {
                let hello: Option<Hello> = next_frame(&mut ws).await.and_then(|f| f.payload().ok());
                let _ = hellos_tx.send(hello.and_then(|h| h.update).map(|u| u.job_id));
                // The first hello is "lost": no ack.
                if n >= 2 {
                    send(&mut ws, ack()).await;
                }
                let _ = ws.close(None).await;
            }
        })
        .await;
        let opts = RunOptions {
            update_report: Some(UpdateReport {
                job_id: 99,
                from_version: "v1".into(),
                to_version: "v2".into(),
                outcome: UpdateOutcome::Updated,
                reason: None,
            }),
            ..fast_opts()
        };
        let agent = spawn(test_config(&url), opts);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(
                tokio::time::timeout(WAIT, hellos.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(seen, vec![Some(99), Some(99), None]);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn wss_failure_is_an_error_not_a_crypto_provider_panic() {
        // A plain TCP server that hangs up: the TLS handshake fails.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let agent = spawn(test_config(&format!("https://{addr}")), fast_opts());
        let state = agent
            .wait_for(WAIT, |s| s.last_error.is_some())
            .await
            .expect("a connection error");
        assert_eq!(state.connects, 0);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn an_unusable_config_stops_the_agent_with_an_error() {
        let mut config = test_config("ftp://nope");
        config.host_id = 1;
        let agent = spawn(config.clone(), fast_opts());
        let state = agent.wait_for(WAIT, |s| s.stopped).await.unwrap();
        assert!(state.last_error.unwrap().contains("http"));
        let err = run(config, fast_opts(), std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err:?}");
    }

    #[tokio::test]
    async fn run_returns_after_the_shutdown_future() {
        let (acked_tx, mut acked) = mpsc::unbounded_channel();
        let url = serve(move |_, mut ws| {
            let acked_tx = acked_tx.clone();
            async move {
                next_frame(&mut ws).await;
                send(&mut ws, ack()).await;
                let _ = acked_tx.send(());
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(run(test_config(&url), fast_opts(), async {
            let _ = stop_rx.await;
        }));
        tokio::time::timeout(WAIT, acked.recv()).await.unwrap();
        let _ = stop_tx.send(());
        tokio::time::timeout(WAIT, running)
            .await
            .expect("run returned")
            .unwrap()
            .unwrap();
    }
}
