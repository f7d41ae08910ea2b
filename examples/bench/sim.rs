//! Simulated agents: real WebSockets (tokio-tungstenite) from many source
//! addresses in 127.0.0.0/8, a real `agent.hello` and its `hello.ack`,
//! pings answered (tungstenite queues the pong and sends it on the next
//! read). Each agent is a task reporting to the coordinator through one
//! channel; a "round" counter makes every agent drop and reconnect (the
//! reconnect storm). Agents that obey `command.update` reconnect at once at
//! the target version with an update report, like an agent that restarted.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use agent::wire::{
    self, BackupResult, CommandRestic, CommandUpdate, Envelope, FinishedStatus, Hello, HelloAck,
    HelloRejected, JobFinished, JobStarted, Message as _, UpdateOutcome, UpdateReport,
};
use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

use super::{checks::AckTracker, seed::Seeded};

pub type Ws = WebSocketStream<TcpStream>;

/// Connections that may be between connect and `hello.ack` at once.
pub const IN_FLIGHT: usize = 256;

/// Agent `idx` connects from 127.0.0.<2 + idx % 250>, so 10,000 agents and
/// their reconnects never run out of ephemeral ports on one address.
pub fn source_addr(idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (idx % 250) as u8)
}

/// Opens `/agent/ws` from `src` with the agent secret.
pub async fn connect(ws_url: &str, server: SocketAddr, src: Ipv4Addr, secret: &str) -> Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.into(), 0))
        .with_context(|| format!("binding {src}"))?;
    let tcp = sock
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server} from {src}"))?;
    tcp.set_nodelay(true)?;
    let mut req = ws_url.into_client_request()?;
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {secret}"))?,
    );
    match tokio_tungstenite::client_async_with_config(
        req,
        tcp,
        Some(super::baseline::lean_ws_config()),
    )
    .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            bail!("WebSocket handshake refused: HTTP {}: {body}", r.status())
        }
        Err(e) => Err(e).context("WebSocket handshake"),
    }
}

/// The restic version simulated agents report (with `SimCfg::restic`).
pub const RESTIC_VERSION: &str = "0.17.3";

/// Sends `agent.hello` and waits for `hello.ack`; a rejection, a close or
/// 60 s of silence is an error. With `restic`, the hello reports restic
/// and no running jobs, as a current agent does.
pub async fn hello(
    ws: &mut Ws,
    version: &str,
    hostname: &str,
    update: Option<UpdateReport>,
    restic: bool,
) -> Result<HelloAck> {
    let h = Hello {
        agent_version: version.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: hostname.into(),
        update,
        restic_version: restic.then(|| RESTIC_VERSION.to_string()),
        running_jobs: restic.then(Vec::new),
        ..Default::default()
    };
    ws.send(Message::text(h.envelope().to_text())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no hello.ack within 60 s")?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let env = Envelope::parse(t.as_str())?;
                match env.kind.as_str() {
                    wire::HELLO_ACK => return Ok(env.payload::<HelloAck>()?),
                    wire::HELLO_REJECTED => {
                        let r: HelloRejected = env.payload()?;
                        bail!("hello rejected: {}", r.reason)
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(f))) => bail!("connection closed before hello.ack: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading hello.ack"),
            None => bail!("connection closed before hello.ack"),
        }
    }
}

/// What every simulated agent shares.
pub struct SimCfg {
    pub ws_url: String,
    pub server: SocketAddr,
    /// Version reported until an update.
    pub version: String,
    /// `hello.ack` must name this server version (None: not checked).
    pub expect_server_version: Option<String>,
    /// `hello.ack` must name the agent's own host id (the bare baseline
    /// server knows no hosts).
    pub check_host_id: bool,
    /// Answer `command.update` by reconnecting at the target version.
    pub obey_updates: bool,
    /// Report restic in the hello and answer each `command.restic` at once
    /// with `job.started` and a successful `job.finished`.
    pub restic: bool,
    /// With `restic`: between a backup's `job.started` and its
    /// `job.finished`, send this load (progress and log lines for a while).
    pub backup: Option<Arc<super::load::Load>>,
}

#[derive(Debug)]
pub enum Ev {
    Acked {
        idx: usize,
        round: u64,
        /// When the hello went out, and when its ack arrived.
        hello_at: Instant,
        at: Instant,
        version: String,
    },
    Command {
        idx: usize,
        at: Instant,
    },
    /// A `command.restic` arrived (before it was answered).
    Restic {
        idx: usize,
        job_id: i64,
        kind: wire::JobKind,
        at: Instant,
    },
    /// The agent wrote `job.started` and `job.finished` for it.
    Answered {
        idx: usize,
        at: Instant,
    },
    Lost {
        idx: usize,
        why: String,
    },
}

/// N simulated agents and the coordinator's end of their channel.
pub struct Fleet {
    n: usize,
    round: watch::Sender<u64>,
    events: mpsc::UnboundedReceiver<Ev>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn launch(cfg: Arc<SimCfg>, agents: &[Seeded]) -> Fleet {
        let (round, _) = watch::channel(0u64);
        let (tx, events) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(IN_FLIGHT));
        let tasks = agents
            .iter()
            .enumerate()
            .map(|(idx, a)| {
                tokio::spawn(agent_task(
                    idx,
                    a.clone(),
                    cfg.clone(),
                    round.subscribe(),
                    tx.clone(),
                    gate.clone(),
                ))
            })
            .collect();
        Fleet {
            n: agents.len(),
            round,
            events,
            tasks,
        }
    }

    /// Waits until every agent is acknowledged in `round` (or later);
    /// returns when the last ack arrived. Any lost agent is an error.
    pub async fn wait_round(&mut self, round: u64, limit: Duration, what: &str) -> Result<Instant> {
        let mut t = AckTracker::new(self.n);
        let mut last = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        while !t.complete() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    return t
                        .require_complete(&format!("{what} (gave up after {limit:?})"))
                        .map(|_| last);
                }
                Ok(None) => bail!("{what}: all agent tasks ended"),
                Ok(Some(Ev::Acked {
                    idx, round: r, at, ..
                })) if r >= round => {
                    t.ack(idx)?;
                    last = last.max(at);
                }
                Ok(Some(Ev::Acked { .. })) => {}
                Ok(Some(Ev::Command { idx, .. })) => {
                    bail!("{what}: agent #{idx} got an unexpected command.update")
                }
                Ok(Some(Ev::Restic { idx, .. } | Ev::Answered { idx, .. })) => {
                    bail!("{what}: agent #{idx} got an unexpected command.restic")
                }
                Ok(Some(Ev::Lost { idx, why })) => bail!("{what}: agent #{idx} failed: {why}"),
            }
        }
        Ok(last)
    }

    /// The next event, or None after `limit` without one.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Ev> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Fails if any agent lost its connection since the last look.
    pub fn check_quiet(&mut self, what: &str) -> Result<()> {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Ev::Lost { idx, why } => bail!("{what}: agent #{idx} lost its connection: {why}"),
                Ev::Command { idx, .. } => bail!("{what}: agent #{idx} got an unexpected command"),
                Ev::Restic { idx, .. } => {
                    bail!("{what}: agent #{idx} got an unexpected command.restic")
                }
                Ev::Acked { .. } | Ev::Answered { .. } => {}
            }
        }
        Ok(())
    }

    /// Every agent drops its connection (no close handshake, like a network
    /// blip) and reconnects at once. Returns the new round.
    pub fn storm(&self) -> u64 {
        self.round.send_modify(|r| *r += 1);
        *self.round.borrow()
    }

    pub async fn shutdown(self) {
        drop(self.round);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn agent_task(
    idx: usize,
    me: Seeded,
    cfg: Arc<SimCfg>,
    mut round_rx: watch::Receiver<u64>,
    ev: mpsc::UnboundedSender<Ev>,
    gate: Arc<Semaphore>,
) {
    let mut version = cfg.version.clone();
    let mut report: Option<UpdateReport> = None;
    let hostname = format!("{}.bench.internal", super::seed::host_name(idx));
    'conn: loop {
        let round = *round_rx.borrow_and_update();
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        let mut hello_at = Instant::now();
        let res = async {
            let mut ws = connect(&cfg.ws_url, cfg.server, source_addr(idx), &me.secret).await?;
            hello_at = Instant::now();
            let ack = hello(&mut ws, &version, &hostname, report.clone(), cfg.restic).await?;
            if let Some(v) = &cfg.expect_server_version {
                ensure!(
                    &ack.server_version == v,
                    "hello.ack names server version {:?}, expected {v:?}",
                    ack.server_version
                );
            }
            ensure!(
                !cfg.check_host_id || ack.host_id == me.host_id,
                "hello.ack names host {}, expected {}",
                ack.host_id,
                me.host_id
            );
            Ok(ws)
        }
        .await;
        drop(permit);
        let mut ws = match res {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ev.send(Ev::Lost {
                    idx,
                    why: format!("{e:#}"),
                });
                return;
            }
        };
        report = None;
        let _ = ev.send(Ev::Acked {
            idx,
            round,
            hello_at,
            at: Instant::now(),
            version: version.clone(),
        });
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(env) = Envelope::parse(t.as_str()) else { continue };
                        if env.kind == wire::COMMAND_RESTIC && cfg.restic {
                            if let Err(e) = answer_restic(idx, &env, &mut ws, &ev, cfg.backup.as_deref()).await {
                                let _ = ev.send(Ev::Lost { idx, why: format!("answering command.restic: {e:#}") });
                                return;
                            }
                            continue;
                        }
                        if env.kind != wire::COMMAND_UPDATE {
                            continue;
                        }
                        let at = Instant::now();
                        let cmd: CommandUpdate = match env.payload() {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ev.send(Ev::Lost { idx, why: format!("bad command.update: {e}") });
                                return;
                            }
                        };
                        let _ = ev.send(Ev::Command { idx, at });
                        if cfg.obey_updates {
                            // The old agent goes away; the new one says hello.
                            let _ = ws.close(None).await;
                            report = Some(UpdateReport {
                                job_id: cmd.job_id,
                                from_version: version.clone(),
                                to_version: cmd.target_version.clone(),
                                outcome: UpdateOutcome::Updated,
                                reason: None,
                            });
                            version = cmd.target_version;
                            continue 'conn;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let _ = ev.send(Ev::Lost { idx, why: format!("server closed the connection: {f:?}") });
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = ev.send(Ev::Lost { idx, why: format!("{e}") });
                        return;
                    }
                    None => {
                        let _ = ev.send(Ev::Lost { idx, why: "connection ended".into() });
                        return;
                    }
                },
                r = round_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    drop(ws);
                    continue 'conn;
                }
            }
        }
    }
}

/// Reports a `command.restic`, then answers it as a restic run that
/// succeeded (a backup's result names a snapshot): at once, or for a backup
/// after sending `load`.
async fn answer_restic(
    idx: usize,
    env: &Envelope,
    ws: &mut Ws,
    ev: &mpsc::UnboundedSender<Ev>,
    load: Option<&super::load::Load>,
) -> Result<()> {
    let at = Instant::now();
    let cmd: CommandRestic = env.payload().context("bad command.restic")?;
    let _ = ev.send(Ev::Restic {
        idx,
        job_id: cmd.job_id,
        kind: cmd.kind,
        at,
    });
    let started = JobStarted {
        job_id: cmd.job_id,
        kind: Some(cmd.kind),
    };
    ws.send(Message::text(started.envelope().to_text())).await?;
    if let Some(load) = load
        && cmd.kind == wire::JobKind::Backup
    {
        load.run(idx, cmd.job_id, ws).await?;
    }
    let result = (cmd.kind == wire::JobKind::Backup).then(|| BackupResult {
        snapshot_id: format!("{:064x}", cmd.job_id),
        files_new: 1,
        data_added: 1024,
        total_bytes_processed: 1_000_000,
        duration_secs: 0.01,
        ..Default::default()
    });
    let finished = JobFinished {
        job_id: cmd.job_id,
        status: FinishedStatus::Succeeded,
        error: None,
        exit_code: Some(0),
        warning: false,
        error_kind: None,
        result: result.map(serde_json::to_value).transpose()?,
    };
    ws.send(Message::text(finished.envelope().to_text()))
        .await?;
    let _ = ev.send(Ev::Answered {
        idx,
        at: Instant::now(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_loopback_and_spread() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(249), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(source_addr(250), Ipv4Addr::new(127, 0, 0, 2));
        assert!((0..10_000).all(|i| source_addr(i).is_loopback()));
    }
}
