//! Connected agents, in memory: who is online and how to send to each one.
//! A cache rebuilt from connections, never the source of truth (the
//! database is). Locks are held only for map operations, never across an
//! await, so 10,000 connections do not contend.
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::mpsc;

/// Frames queued per connection before a send is refused as "agent too slow".
const OUTBOX: usize = 32;

#[derive(Debug)]
pub enum Outbound {
    Frame(String),
    /// Close the connection (e.g. replaced by a newer one from the same host).
    Close(&'static str),
}

struct Conn {
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    /// Ends the connection's task even when its queue is full (a close
    /// sent through the queue could be lost then).
    abort: std::sync::Arc<tokio::sync::Notify>,
}

/// What a connection's task holds: its id, its outbound queue, and the
/// signal that it was replaced.
pub struct Registration {
    pub conn_id: u64,
    pub outbox: mpsc::Receiver<Outbound>,
    pub replaced: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("agent is not connected")]
    Offline,
    #[error("agent connection is backed up; try again")]
    Full,
}

#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<i64, Conn>>,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Conn>> {
        // A panic while holding this lock leaves a consistent map (single
        // insert/remove calls), so poisoning is safe to ignore.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection for `host_id`, replacing (and closing) any
    /// older one. Returns the connection id and its outbound queue.
    pub fn register(&self, host_id: i64) -> (u64, mpsc::Receiver<Outbound>) {
        let r = self.register_conn(host_id);
        (r.conn_id, r.outbox)
    }

    /// [`Hub::register`], with the signal a replaced connection must obey.
    pub fn register_conn(&self, host_id: i64) -> Registration {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(OUTBOX);
        let abort = std::sync::Arc::new(tokio::sync::Notify::new());
        let old = self.lock().insert(
            host_id,
            Conn {
                conn_id,
                tx,
                abort: abort.clone(),
            },
        );
        if let Some(old) = old {
            // The old task may be gone already; nothing to do then. The
            // notification is kept until its task next waits for it.
            let _ = old
                .tx
                .try_send(Outbound::Close(agent::wire::CLOSE_REPLACED));
            old.abort.notify_one();
        }
        Registration {
            conn_id,
            outbox: rx,
            replaced: abort,
        }
    }

    /// Removes the connection if it is still the host's current one.
    /// Returns whether it was (i.e. whether the host is now offline).
    pub fn unregister(&self, host_id: i64, conn_id: u64) -> bool {
        let mut map = self.lock();
        match map.get(&host_id) {
            Some(c) if c.conn_id == conn_id => {
                map.remove(&host_id);
                true
            }
            _ => false,
        }
    }

    pub fn is_current(&self, host_id: i64, conn_id: u64) -> bool {
        self.lock()
            .get(&host_id)
            .is_some_and(|c| c.conn_id == conn_id)
    }

    pub fn is_online(&self, host_id: i64) -> bool {
        self.lock().contains_key(&host_id)
    }

    pub fn send(&self, host_id: i64, frame: String) -> Result<(), SendError> {
        let tx = self
            .lock()
            .get(&host_id)
            .map(|c| c.tx.clone())
            .ok_or(SendError::Offline)?;
        tx.try_send(Outbound::Frame(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Offline,
        })
    }

    /// Asks a host's current connection to close (host removed, secret revoked).
    pub fn disconnect(&self, host_id: i64, why: &'static str) {
        if let Some(c) = self.lock().get(&host_id) {
            let _ = c.tx.try_send(Outbound::Close(why));
        }
    }

    pub fn online_ids(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    /// How many agents are connected now (for `/metrics`).
    pub fn connected(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn newer_connection_replaces_and_closes_the_older() {
        let hub = Hub::new();
        let (c1, mut rx1) = hub.register(7);
        let (c2, _rx2) = hub.register(7);
        assert_ne!(c1, c2);
        assert!(matches!(rx1.try_recv(), Ok(Outbound::Close(_))));
        // Even with its queue full, a replaced connection is told.
        let old = hub.register_conn(8);
        for _ in 0..OUTBOX {
            hub.send(8, "x".into()).unwrap();
        }
        let _new = hub.register_conn(8);
        assert!(
            old.replaced.notified().now_or_never().is_some(),
            "the replaced connection's signal is set"
        );
        // The old connection going away must not take the host offline.
        assert!(!hub.unregister(7, c1));
        assert!(hub.is_online(7));
        assert!(hub.unregister(7, c2));
        assert!(!hub.is_online(7));
    }

    #[test]
    fn send_reports_offline_and_full() {
        let hub = Hub::new();
        assert_eq!(hub.send(1, "x".into()), Err(SendError::Offline));
        let (_c, _rx) = hub.register(1);
        for _ in 0..OUTBOX {
            hub.send(1, "x".into()).unwrap();
        }
        assert_eq!(hub.send(1, "x".into()), Err(SendError::Full));
    }
}
