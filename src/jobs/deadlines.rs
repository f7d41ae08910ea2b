//! Job deadlines, kept in the database so a restart neither loses nor
//! double-ends a job: one watcher sleeps until the next stored deadline (or
//! a wake after a job with a deadline is created) and hands each overdue job
//! to its kind ([`super::kinds::on_deadline`]).
use std::time::Duration;

use tokio::sync::Notify;

use crate::{state::AppState, store};

/// Wakes the deadline watcher.
#[derive(Default)]
pub struct Deadlines {
    wake: Notify,
}

impl Deadlines {
    /// A job with a deadline was created: look at the deadlines again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Ends, through its kind, every live job whose deadline passed.
pub async fn expire_overdue(state: &AppState) -> store::Result<()> {
    let now = state.clock.now_ms();
    for job in store::jobs::overdue(&state.db, now).await? {
        super::kinds::on_deadline(state, &job).await?;
    }
    Ok(())
}

/// Sleeps until the next stored deadline (or a wake) and expires what is
/// overdue. Started once per server; picks up deadlines left by a previous
/// run at once.
pub fn spawn_watcher(state: AppState) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = expire_overdue(&state).await {
                tracing::error!(error = %e, "expiring overdue jobs failed");
            }
            let now = state.clock.now_ms();
            let wait = match store::jobs::next_deadline(&state.db).await {
                Ok(Some(t)) => Duration::from_millis((t - now).clamp(50, 60_000) as u64),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = state.deadlines.wake.notified() => {}
            }
        }
    });
}
