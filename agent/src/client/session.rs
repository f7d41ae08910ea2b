//! One agent's connection loop: the WebSocket request, connect, hello,
//! read and write until the connection ends, then reconnect after the
//! backoff.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, error, info, warn};
use url::Url;

use crate::config::{self, AgentConfig, ServerUrlError};
use crate::wire::{self, Envelope, HelloAck, HelloRejected, Message, UpdateReport};

use super::{
    Backoff, ClientError, ConnState, FrameSender, REPLACED_ELSEWHERE, RunOptions, SECRET_REJECTED,
    Shutdown, error_chain,
};

/// How long a closing handshake may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How long queued frames may take to go out when the agent shuts down.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = SplitSink<WsStream, WsMessage>;
type WsSource = SplitStream<WsStream>;

/// `http(s)://host/prefix` → `ws(s)://host/prefix/agent/ws`.
pub fn ws_url(server_url: &str) -> Result<Url, ServerUrlError> {
    let mut url = config::endpoint_url(server_url, wire::WS_PATH)?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    // http→ws and https→wss are always allowed by the URL standard.
    url.set_scheme(scheme)
        .map_err(|()| ServerUrlError::Scheme {
            url: server_url.to_string(),
        })?;
    Ok(url)
}

pub(super) fn ws_request(url: &Url, secret: &str) -> Result<http::Request<()>, ClientError> {
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
    if let Ok(agent) = HeaderValue::from_str(&crate::http::user_agent()) {
        headers.insert(http::header::USER_AGENT, agent);
    }
    Ok(request)
}

/// The TLS setup of a `wss://` connection: the operating system's trust
/// store through rustls-platform-verifier, as reqwest (enrollment, the
/// updater's download) uses it, so a server on a private CA that the host
/// trusts (or `SSL_CERT_FILE` / `SSL_CERT_DIR` name) works for both.
/// Built per connection attempt: a CA installed while the agent runs is
/// picked up at the next reconnect. `None` for `ws://`.
fn tls_connector(url: &Url) -> Result<Option<Connector>, String> {
    if url.scheme() != "wss" {
        return Ok(None);
    }
    crate::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("cannot set up TLS with the system's certificates: {e}"))?
        .with_no_client_auth();
    Ok(Some(Connector::Rustls(std::sync::Arc::new(config))))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(wire::MAX_FRAME_BYTES))
        .max_frame_size(Some(wire::MAX_FRAME_BYTES))
}

pub(super) async fn drive(
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
        let connector = match tls_connector(&self.url) {
            Ok(c) => c,
            Err(message) => {
                error!(url = %self.url, error = %message, "cannot connect to the server");
                self.note_error(message);
                return Ok(Attempt::NotConnected {
                    fatal_for_now: true,
                });
            }
        };
        let connect = tokio::time::timeout(
            self.opts.idle_timeout,
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(ws_config()),
                true,
                connector,
            ),
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
