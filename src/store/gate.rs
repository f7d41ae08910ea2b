//! Who writes next on SQLite. SQLite has one writer at a time, and a
//! connection that finds the lock taken sleeps in its busy handler and
//! tries again later: under a steady stream of group commits (agents' job
//! messages) a waiting writer can lose the lock to the next group again and
//! again. In a scheduling wave that was the dispatcher: woken after each of
//! the scheduler's batches, it marked nothing until the scheduler's last
//! batch, then waited behind the job writer's groups (BENCHMARKS.md,
//! scheduling wave).
//!
//! The bulk writers therefore take turns here before they begin a write
//! transaction. Urgent writers (the scheduler's batches, the dispatcher's
//! marks: what decides when a backup starts) go first, in arrival order;
//! bulk writers (the job writer's groups) wait until no urgent writer is
//! waiting. On Postgres, which takes concurrent writers, the gate is open.
//!
//! Only these writers take turns; any other write still meets SQLite's busy
//! handler as before, so the gate changes who goes first, never whether a
//! write can happen.
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard, Notify};

#[derive(Debug, Default)]
pub struct WriteGate {
    enabled: bool,
    turn: Mutex<()>,
    /// Urgent writers waiting for or holding their turn.
    urgent: AtomicUsize,
    /// Signalled when an urgent writer's turn ends.
    urgent_done: Notify,
}

/// A writer's turn; it ends when dropped.
pub struct Turn<'a> {
    // Fields drop in order: the lock is let go before bulk writers wake.
    _held: Option<MutexGuard<'a, ()>>,
    _counted: Option<Counted<'a>>,
}

/// An urgent writer waiting for or holding its turn.
struct Counted<'a>(&'a WriteGate);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.urgent.fetch_sub(1, Ordering::AcqRel);
        self.0.urgent_done.notify_waiters();
    }
}

const OPEN: Turn<'static> = Turn {
    _held: None,
    _counted: None,
};

impl WriteGate {
    /// `enabled`: the database is SQLite.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// A turn ahead of every bulk writer, after urgent writers already
    /// waiting.
    pub async fn urgent(&self) -> Turn<'_> {
        if !self.enabled {
            return OPEN;
        }
        self.urgent.fetch_add(1, Ordering::AcqRel);
        // Counted before it waits, so bulk writers already see it; given
        // back when the turn ends, or when this future is dropped while it
        // waits.
        let counted = Counted(self);
        let held = self.turn.lock().await;
        Turn {
            _held: Some(held),
            _counted: Some(counted),
        }
    }

    /// A turn once no urgent writer is waiting.
    pub async fn bulk(&self) -> Turn<'_> {
        if !self.enabled {
            return OPEN;
        }
        loop {
            let done = self.urgent_done.notified();
            tokio::pin!(done);
            // Registered before the count is read, so a turn ending in
            // between still wakes this one.
            done.as_mut().enable();
            if self.urgent.load(Ordering::Acquire) == 0 {
                let held = self.turn.lock().await;
                if self.urgent.load(Ordering::Acquire) == 0 {
                    return Turn {
                        _held: Some(held),
                        _counted: None,
                    };
                }
                // An urgent writer arrived while this one waited: it goes
                // first.
                drop(held);
                continue;
            }
            done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// An urgent writer that arrives while a bulk writer holds its turn
    /// goes before every bulk writer already waiting.
    #[tokio::test]
    async fn urgent_writers_go_before_waiting_bulk_writers() {
        let gate = Arc::new(WriteGate::new(true));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let first = gate.bulk().await;
        let mut tasks = Vec::new();
        for (name, urgent) in [("bulk-1", false), ("bulk-2", false), ("urgent", true)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = if urgent {
                    gate.urgent().await
                } else {
                    gate.bulk().await
                };
                order.lock().unwrap().push(name);
            }));
            // The test runtime has one thread: the task just spawned runs
            // to its wait here, before the next one arrives.
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "urgent", "{order:?}");
        assert_eq!(order.len(), 3);
    }

    /// An urgent writer that gives up while waiting does not hold bulk
    /// writers back for ever.
    #[tokio::test]
    async fn an_abandoned_urgent_wait_frees_bulk_writers() {
        let gate = Arc::new(WriteGate::new(true));
        let held = gate.urgent().await;
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _t = gate.urgent().await;
            })
        };
        // One thread: the spawned task is waiting once this returns.
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let bulk = tokio::time::timeout(Duration::from_secs(5), gate.bulk()).await;
        assert!(bulk.is_ok(), "a bulk writer never got its turn");
    }

    #[tokio::test]
    async fn on_postgres_the_gate_is_open() {
        let gate = WriteGate::new(false);
        let _a = gate.urgent().await;
        let _b = gate.urgent().await;
        let _c = gate.bulk().await;
    }
}
