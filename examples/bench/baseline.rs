//! Baselines this tool runs as separate processes (it re-executes itself):
//!
//! * a bare tokio WebSocket server: accepts, answers `agent.hello` with a
//!   `hello.ack`, pings every 20 s like the server, holds the socket; and
//!   relays `log.stream` lines to plain server-sent-event viewers on a
//!   second port (no database, no HTML, no auth);
//! * a bare agent: one tokio-tungstenite connection that says hello and
//!   holds it, with the same two runtime threads as the real agent.
use std::time::Duration;

use agent::wire::{self, Envelope, HelloAck, LogStream, Message as _};
use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::broadcast,
};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

/// Same ping period as the server's default (`agent_ping_interval`).
const PING_EVERY: Duration = Duration::from_secs(20);

/// Same listen backlog as the server (actix's 1024); tokio's `bind` would
/// give 128 and drop SYNs of a connect storm.
const BACKLOG: u32 = 1024;

/// tungstenite zero-fills its whole read buffer (128 KiB by default) on
/// every read; a lean server would not, so neither does the baseline.
pub fn lean_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

fn listen() -> Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind("127.0.0.1:0".parse()?)?;
    Ok(s.listen(BACKLOG)?)
}

pub fn sse_frame(event: &str, id: Option<i64>, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    s.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    s
}

pub async fn server(version: String) -> Result<()> {
    let ws = listen()?;
    let sse = listen()?;
    println!("{} {}", ws.local_addr()?.port(), sse.local_addr()?.port());
    let (tx, _) = broadcast::channel::<bytes::Bytes>(4096);
    let sse_tx = tx.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = sse.accept().await {
            let rx = sse_tx.subscribe();
            tokio::spawn(async move {
                if let Err(e) = sse_viewer(s, rx).await {
                    eprintln!("sse viewer: {e:#}");
                }
            });
        }
    });
    loop {
        let (s, _) = ws.accept().await?;
        let (tx, version) = (tx.clone(), version.clone());
        tokio::spawn(async move {
            let _ = ws_conn(s, tx, version).await;
        });
    }
}

async fn ws_conn(s: TcpStream, tx: broadcast::Sender<bytes::Bytes>, version: String) -> Result<()> {
    s.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(s, Some(lean_ws_config())).await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let env = Envelope::parse(t.as_str())?;
                    match env.kind.as_str() {
                        wire::AGENT_HELLO => {
                            let ack = HelloAck { host_id: 0, server_version: version.clone() };
                            ws.send(Message::text(ack.envelope().to_text())).await?;
                        }
                        wire::LOG_STREAM => {
                            let l: LogStream = env.payload()?;
                            let _ = tx.send(sse_frame("line", Some(l.seq), &l.data).into());
                        }
                        wire::JOB_FINISHED => {
                            let _ = tx.send(sse_frame("end", None, "").into());
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            },
            _ = ping.tick() => ws.send(Message::Ping(Default::default())).await?,
        }
    }
}

/// One viewer: read the request head, answer with an event stream.
async fn sse_viewer(mut s: TcpStream, mut rx: broadcast::Receiver<bytes::Bytes>) -> Result<()> {
    s.set_nodelay(true)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0 && head.len() < 16 * 1024, "bad request head");
        head.extend_from_slice(&buf[..n]);
    }
    s.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
    )
    .await?;
    s.write_all(sse_frame("status", None, "running").as_bytes())
        .await?;
    loop {
        match rx.recv().await {
            Ok(b) => {
                let end = b.starts_with(b"event: end");
                s.write_all(&b).await?;
                if end {
                    return Ok(());
                }
            }
            // A viewer that lags loses lines; the benchmark counts them and fails.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// The bare agent: connect, hello, hold until the server goes away.
pub async fn agent(ws_url: String) -> Result<()> {
    let secret = std::env::var("BENCH_AGENT_SECRET").context("BENCH_AGENT_SECRET unset")?;
    let addr = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("bad ws url")?
        .parse()?;
    let mut ws = super::sim::connect(&ws_url, addr, std::net::Ipv4Addr::LOCALHOST, &secret).await?;
    super::sim::hello(&mut ws, "baseline", "baseline-agent", None, false).await?;
    eprintln!("baseline agent connected");
    while let Some(m) = ws.next().await {
        m?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_the_server_format() {
        assert_eq!(
            sse_frame("line", Some(3), "x"),
            "id: 3\nevent: line\ndata: x\n\n"
        );
        assert_eq!(sse_frame("end", None, ""), "event: end\ndata: \n\n");
    }
}
