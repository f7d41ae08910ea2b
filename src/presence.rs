//! Writes agent presence to the database off the connection path: hellos and
//! disconnects are queued and applied in batches (one transaction per batch),
//! and `last_seen_at` of connected hosts is refreshed periodically in bulk.
//! A reconnect storm of 10,000 agents becomes a handful of transactions,
//! not 10,000.
use std::{sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use crate::{
    clock::Clock,
    hub::Hub,
    store::{self, hosts::HelloFacts},
};

const BATCH: usize = 512;

pub enum PresenceEvent {
    Hello {
        host_id: i64,
        facts: HelloFacts,
        /// Answered once the hello is committed.
        done: oneshot::Sender<Result<(), String>>,
    },
    Offline {
        host_id: i64,
    },
}

#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<PresenceEvent>,
}

impl Presence {
    /// Records a hello; resolves when it is in the database.
    pub async fn hello(&self, host_id: i64, facts: HelloFacts) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(PresenceEvent::Hello {
                host_id,
                facts,
                done,
            })
            .map_err(|_| "server shutting down".to_string())?;
        rx.await.map_err(|_| "server shutting down".to_string())?
    }

    pub fn offline(&self, host_id: i64) {
        let _ = self.tx.send(PresenceEvent::Offline { host_id });
    }
}

/// Starts the writer and the periodic last-seen flusher.
pub fn spawn(
    db: DatabaseConnection,
    hub: Arc<Hub>,
    clock: Clock,
    flush_every: Duration,
) -> Presence {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(db.clone(), clock.clone(), rx));
    tokio::spawn(flusher(db, hub, clock, flush_every));
    Presence { tx }
}

async fn writer(
    db: DatabaseConnection,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<PresenceEvent>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let now = clock.now_ms();
        let result = apply(&db, &batch, now).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, events = batch.len(), "writing agent presence failed");
        }
        for ev in batch.drain(..) {
            if let PresenceEvent::Hello { done, .. } = ev {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }
}

async fn apply(db: &DatabaseConnection, batch: &[PresenceEvent], now: i64) -> store::Result<()> {
    let txn = db.begin().await?;
    let mut offline = Vec::new();
    for ev in batch {
        match ev {
            PresenceEvent::Hello { host_id, facts, .. } => {
                // A hello after an offline in the same batch wins: apply the
                // offlines gathered so far first, keeping order.
                if !offline.is_empty() {
                    store::hosts::set_offline(&txn, &offline, now).await?;
                    offline.clear();
                }
                store::hosts::record_hello(&txn, *host_id, facts, now).await?;
            }
            PresenceEvent::Offline { host_id } => offline.push(*host_id),
        }
    }
    if !offline.is_empty() {
        store::hosts::set_offline(&txn, &offline, now).await?;
    }
    txn.commit().await?;
    Ok(())
}

async fn flusher(db: DatabaseConnection, hub: Arc<Hub>, clock: Clock, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ids = hub.online_ids();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = store::hosts::touch(&db, &ids, clock.now_ms()).await {
            tracing::warn!(error = %e, "refreshing last_seen_at failed");
        }
    }
}
