//! Reconnect delays with jitter.

use std::time::Duration;

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

pub(super) fn jitter(delay: Duration) -> Duration {
    let low = delay / 2;
    let span = u64::try_from((delay - low).as_nanos()).unwrap_or(u64::MAX);
    // Without randomness fall back to the full delay: later, never sooner.
    let Ok(random) = getrandom::u64() else {
        return delay;
    };
    low + Duration::from_nanos(random % span.saturating_add(1))
}
