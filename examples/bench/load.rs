//! The load each simulated agent of the many-backups scenario (section 10,
//! `scenarios/backups.rs`) sends between a backup's `job.started` and its
//! `job.finished`: once every viewer listens, one `log.stream` line every
//! 50 ms and one `job.progress` a second (numbered in `files_done`), on a
//! fixed schedule, reading its socket meanwhile. The watched agent notes
//! when it hands each to its socket, for the viewers' latencies.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use agent::wire::{JobProgress, LogStream, LogStreamKind, Message as _};
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{sim::Ws, sse};

/// Log lines each backup sends per second.
pub const LINES_PER_SEC: u64 = 20;
/// The agent whose job the viewers watch (it starts first).
pub const WATCHED: usize = 0;

/// What each simulated agent sends during its backup, and when the watched
/// agent sent each progress report and line (ns after `epoch`, 0: not yet).
pub struct Load {
    secs: u64,
    n: usize,
    epoch: Instant,
    /// Flips to true when every viewer is listening.
    go: watch::Receiver<bool>,
    pub progress_sent: Vec<AtomicU64>,
    pub line_sent: Vec<AtomicU64>,
    /// The most any agent's last line went out after its schedule, µs.
    pub worst_lag_us: AtomicU64,
}

impl Load {
    pub fn new(secs: u64, n: usize, go: watch::Receiver<bool>) -> Load {
        let table = |len: u64| (0..=len).map(|_| AtomicU64::new(0)).collect();
        Load {
            secs,
            n: n.max(1),
            epoch: Instant::now(),
            go,
            progress_sent: table(secs),
            line_sent: table(secs * LINES_PER_SEC),
            worst_lag_us: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Agent `idx`'s backup of `job_id` between `job.started` and
    /// `job.finished`: waits for the go, then sends its lines and progress
    /// on schedule, reading the socket meanwhile (pings, a close).
    pub async fn run(&self, idx: usize, job_id: i64, ws: &mut Ws) -> Result<()> {
        let mut go = self.go.clone();
        loop {
            tokio::select! {
                r = go.wait_for(|g| *g) => {
                    r.context("the benchmark ended before the backups started")?;
                    break;
                }
                m = ws.next() => alive(m)?,
            }
        }
        let phase = Duration::from_nanos(1_000_000_000 * (idx % self.n) as u64 / self.n as u64);
        let t0 = tokio::time::Instant::now() + phase;
        let slot = Duration::from_secs(1) / LINES_PER_SEC as u32;
        let watched = idx == WATCHED;
        let lines = self.secs * LINES_PER_SEC;
        for seq in 1..=lines {
            let due = t0 + slot * (seq - 1) as u32;
            idle_until(ws, due).await?;
            let line = LogStream {
                job_id,
                seq: seq as i64,
                stream: LogStreamKind::Stdout,
                data: sse::line_text(seq),
                at: chrono::Utc::now().to_rfc3339(),
            };
            if watched {
                self.line_sent[seq as usize].store(self.now_ns(), Ordering::Release);
            }
            ws.send(Message::text(line.envelope().to_text())).await?;
            if seq % LINES_PER_SEC == 0 {
                let p = seq / LINES_PER_SEC;
                if watched {
                    self.progress_sent[p as usize].store(self.now_ns(), Ordering::Release);
                }
                ws.send(Message::text(
                    progress(job_id, p, self.secs).envelope().to_text(),
                ))
                .await?;
            }
            if seq == lines {
                let lag = due.elapsed().as_micros() as u64;
                self.worst_lag_us.fetch_max(lag, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Progress report `p` of `secs`, numbered in `files_done`.
fn progress(job_id: i64, p: u64, secs: u64) -> JobProgress {
    const MB: u64 = 1_000_000;
    JobProgress {
        job_id,
        percent: p as f64 * 100.0 / secs.max(1) as f64,
        bytes_done: p * MB,
        total_bytes: secs * MB,
        files_done: p,
        total_files: secs,
        seconds_remaining: Some(secs.saturating_sub(p)),
    }
}

/// A frame read mid-backup: anything but the end of the connection is fine
/// (tungstenite answers pings itself).
fn alive(m: Option<Result<Message, tungstenite::Error>>) -> Result<()> {
    match m {
        Some(Ok(Message::Close(f))) => bail!("the server closed the connection mid-backup: {f:?}"),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e).context("reading the socket mid-backup"),
        None => bail!("the connection ended mid-backup"),
    }
}

/// Reads the socket until `due`.
async fn idle_until(ws: &mut Ws, due: tokio::time::Instant) -> Result<()> {
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due) => return Ok(()),
            m = ws.next() => alive(m)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_count_up_to_the_end() {
        let p = progress(9, 15, 60);
        assert_eq!((p.files_done, p.total_files), (15, 60));
        assert_eq!(p.percent, 25.0);
        assert_eq!(p.seconds_remaining, Some(45));
        assert_eq!(progress(9, 60, 60).seconds_remaining, Some(0));
    }
}
