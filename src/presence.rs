//! Writes agent presence to the database off the connection path: hellos and
//! disconnects are queued and applied in batches (one transaction per batch),
//! and `last_seen_at` of connected hosts is refreshed periodically in bulk.
//! A reconnect storm of 10,000 agents becomes a handful of transactions,
//! not 10,000.
use std::{collections::HashMap, sync::Arc, time::Duration};

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

/// Starts the writer and the periodic last-seen flusher. Called at start
/// from the server's own multi-threaded runtime (`main.rs`), so both run
/// there and not on an actix worker: a batch's awaits do not queue behind
/// the agent connections a worker runs (as the log writer's did, see
/// `jobs::log_batch`).
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

/// Applies a batch in one transaction as if its events ran in order: a
/// host's last hello gives its facts, its last event whether it is online
/// (a hello then an offline leaves the hello's facts, offline). The hellos
/// are a few multi-row statements (`store::hosts::record_hellos`), then
/// the offlines one.
async fn apply(db: &DatabaseConnection, batch: &[PresenceEvent], now: i64) -> store::Result<()> {
    let mut hellos: Vec<(i64, &HelloFacts)> = Vec::with_capacity(batch.len());
    // host → (its place in `hellos`, if it said hello; online after its
    // last event)
    let mut hosts: HashMap<i64, (Option<usize>, bool)> = HashMap::with_capacity(batch.len());
    for ev in batch {
        match ev {
            PresenceEvent::Hello { host_id, facts, .. } => {
                let entry = hosts.entry(*host_id).or_insert((None, true));
                match entry.0 {
                    Some(i) => hellos[i].1 = facts,
                    None => {
                        entry.0 = Some(hellos.len());
                        hellos.push((*host_id, facts));
                    }
                }
                entry.1 = true;
            }
            PresenceEvent::Offline { host_id } => {
                hosts.entry(*host_id).or_insert((None, false)).1 = false;
            }
        }
    }
    let offline: Vec<i64> = hosts
        .iter()
        .filter(|(_, (_, online))| !online)
        .map(|(id, _)| *id)
        .collect();
    let txn = db.begin().await?;
    if !hellos.is_empty() {
        store::hosts::record_hellos(&txn, &hellos, now).await?;
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
