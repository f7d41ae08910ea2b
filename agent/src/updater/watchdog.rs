//! Boot watchdog: at every start, reads the update marker and decides
//! whether a freshly swapped binary gets another start or `<bin>.old` goes
//! back; while running, rolls back if the server rejects the new binary's
//! hello, and deletes the marker once the new binary has stayed connected
//! (acknowledged) for [`HEALTHY_AFTER_ACK`].
//!
//! Kept small on purpose: a bug here cannot be fixed remotely. Only process
//! starts that did not end in a clean stop count against a new binary; a
//! running agent that cannot reach the server never rolls back (the old
//! binary could not reach it either).

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{MarkerState, UpdateMarker, marker_path, platform, remove_quietly};
use crate::client::ConnState;
use crate::wire::{UpdateOutcome, UpdateReport};

/// Starts a new binary gets without one acknowledged hello; the next start
/// rolls back.
pub const MAX_BOOTS_WITHOUT_HELLO: u32 = 3;

/// Exit code after a rollback: the supervisor restarts, now the old binary.
pub const ROLLBACK_EXIT_CODE: u8 = 1;

/// How long a new binary must stay connected after its hello is
/// acknowledged before it is trusted: one that crashes a moment after the
/// ack still counts as a failed start. Longer than the server's default
/// healthy period (5 s), which decides the job.
pub const HEALTHY_AFTER_ACK: Duration = Duration::from_secs(10);

/// What [`on_boot`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum BootDecision {
    /// Run. `report` rides in every hello until one is acknowledged.
    /// `probation`: this is a new binary that has not yet been acknowledged,
    /// so a `hello.rejected` rolls it back.
    Run {
        report: Option<UpdateReport>,
        probation: bool,
    },
    /// `<bin>.old` is back in place: exit with [`ROLLBACK_EXIT_CODE`].
    RolledBack { reason: String },
}

/// Reads `<bin>.update-marker` and acts on it. `running_version` is this
/// binary's version. Never fails: a marker it cannot use is logged and
/// dropped, because refusing to start would strand the host.
pub fn on_boot(bin: &Path, running_version: &str) -> BootDecision {
    let path = marker_path(bin);
    let marker = match UpdateMarker::load(&path) {
        Ok(Some(marker)) => marker,
        Ok(None) => {
            return BootDecision::Run {
                report: None,
                probation: false,
            };
        }
        Err(e) => {
            warn!(error = %e, "ignoring and removing an unusable update marker");
            remove_quietly(&path);
            return BootDecision::Run {
                report: None,
                probation: false,
            };
        }
    };
    let report = |outcome, reason| UpdateReport {
        job_id: marker.job_id,
        from_version: marker.from_version.clone(),
        to_version: marker.to_version.clone(),
        outcome,
        reason,
    };

    match marker.state {
        MarkerState::RolledBack => BootDecision::Run {
            report: Some(report(UpdateOutcome::RolledBack, marker.reason.clone())),
            probation: false,
        },
        // Something else (a person, a package manager, a crash before the
        // rename) left a different binary in place.
        MarkerState::Swapped if marker.to_version != running_version => {
            let reason = format!(
                "the update to {} did not take: the agent started as {running_version}",
                marker.to_version
            );
            warn!(job_id = marker.job_id, "{reason}");
            BootDecision::Run {
                report: Some(report(UpdateOutcome::RolledBack, Some(reason))),
                probation: false,
            }
        }
        MarkerState::Swapped => {
            let mut marker = marker.clone();
            marker.boots = marker.boots.saturating_add(1);
            if marker.boots > MAX_BOOTS_WITHOUT_HELLO {
                let reason = format!(
                    "new agent {} restarted {} times without reaching the server; rolled back to {}",
                    marker.to_version, marker.boots, marker.from_version
                );
                return roll_back(bin, marker, reason);
            }
            if let Err(e) = marker.save(&path) {
                // Without the count a crash loop goes unnoticed, but
                // refusing to run would be worse.
                error!(error = %e, "cannot record this start in the update marker");
            }
            info!(
                job_id = marker.job_id,
                boots = marker.boots,
                "new agent {} starting; waiting for the server to acknowledge it",
                marker.to_version
            );
            BootDecision::Run {
                report: Some(report(UpdateOutcome::Updated, None)),
                probation: true,
            }
        }
    }
}

/// Puts `<bin>.old` back and records why. If that fails the new binary is
/// all there is: keep running it, report it, and stop judging it.
fn roll_back(bin: &Path, mut marker: UpdateMarker, reason: String) -> BootDecision {
    let path = marker_path(bin);
    if let Err(e) = platform::restore_old(bin) {
        error!(error = %e, "{reason} — but the rollback failed; keeping the new binary");
        if let Err(e) = marker.save(&path) {
            error!(error = %e, "cannot update the update marker");
        }
        return BootDecision::Run {
            report: Some(UpdateReport {
                job_id: marker.job_id,
                from_version: marker.from_version,
                to_version: marker.to_version,
                outcome: UpdateOutcome::Updated,
                reason: Some(format!("rollback failed: {e}")),
            }),
            probation: false,
        };
    }
    error!(job_id = marker.job_id, "{reason}");
    marker.state = MarkerState::RolledBack;
    marker.reason = Some(reason.clone());
    if let Err(e) = marker.save(&path) {
        // The old binary will report "did not take" instead of this reason.
        error!(error = %e, "cannot record the rollback in the update marker");
    }
    BootDecision::RolledBack { reason }
}

/// The agent is stopping cleanly (SIGTERM, SIGINT): a start that ends this
/// way was not a crash, so it no longer counts against a new binary on
/// probation (a reboot or a config-management restart while the server is
/// down must not roll a good binary back).
pub fn on_clean_stop(bin: &Path, running_version: &str) {
    let path = marker_path(bin);
    let Ok(Some(mut marker)) = UpdateMarker::load(&path) else {
        return;
    };
    if marker.state != MarkerState::Swapped
        || marker.to_version != running_version
        || marker.boots == 0
    {
        return;
    }
    marker.boots -= 1;
    match marker.save(&path) {
        Ok(()) => info!(
            job_id = marker.job_id,
            "clean stop: this start does not count against the new agent"
        ),
        Err(e) => warn!(error = %e, "cannot record the clean stop in the update marker"),
    }
}

/// How [`watch_connection`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// A hello was acknowledged; the marker (if any) is gone.
    Acknowledged,
    /// The server rejected the new binary's hello and `<bin>.old` is back:
    /// exit with [`ROLLBACK_EXIT_CODE`].
    RolledBack(String),
    /// The connection loop stopped first.
    Stopped,
}

/// Follows the connection until the first acknowledged hello. Then deletes
/// the marker of `report` (the server has the outcome) — on `probation` only
/// once a connection has stayed acknowledged for `healthy`, so a new binary
/// that crashes soon after its hello keeps counting its starts. With
/// `probation`, a `hello.rejected` before the first ack rolls back.
/// Connection failures are ignored.
pub async fn watch_connection(
    bin: &Path,
    report: Option<&UpdateReport>,
    mut probation: bool,
    mut state: watch::Receiver<ConnState>,
    healthy: Duration,
) -> WatchEnd {
    loop {
        let seen = state
            .wait_for(|s| s.acks > 0 || s.stopped || (probation && s.last_reject.is_some()))
            .await
            .map(|s| s.clone());
        let Ok(seen) = seen else {
            return WatchEnd::Stopped;
        };
        if seen.acks > 0 {
            if probation && !stays_acknowledged(&mut state, healthy).await {
                return WatchEnd::Stopped;
            }
            if let Some(report) = report {
                clear_marker(bin, report.job_id);
            }
            return WatchEnd::Acknowledged;
        }
        if seen.stopped {
            return WatchEnd::Stopped;
        }
        let reason = seen.last_reject.unwrap_or_default();
        match roll_back_after_reject(bin, &reason) {
            Some(reason) => return WatchEnd::RolledBack(reason),
            // Nothing to roll back to: keep running and keep trying.
            None => probation = false,
        }
    }
}

/// Waits until one connection has stayed acknowledged for `healthy`; false
/// if the agent stopped first. Drops in between start the wait again.
async fn stays_acknowledged(state: &mut watch::Receiver<ConnState>, healthy: Duration) -> bool {
    loop {
        match state.wait_for(|s| s.acked || s.stopped).await {
            Ok(s) if s.stopped => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
        let dropped = tokio::time::timeout(healthy, state.wait_for(|s| !s.acked || s.stopped));
        match dropped.await {
            Err(_elapsed) => return true,
            Ok(Ok(s)) if !s.stopped => continue,
            Ok(_) => return false,
        }
    }
}

fn roll_back_after_reject(bin: &Path, rejection: &str) -> Option<String> {
    let marker = match UpdateMarker::load(&marker_path(bin)) {
        Ok(Some(marker)) if marker.state == MarkerState::Swapped => marker,
        Ok(_) => return None,
        Err(e) => {
            error!(error = %e, "server rejected the new agent, but its update marker is unusable");
            return None;
        }
    };
    let reason = format!(
        "server rejected new agent {} ({rejection}); rolled back to {}",
        marker.to_version, marker.from_version
    );
    match roll_back(bin, marker, reason) {
        BootDecision::RolledBack { reason } => Some(reason),
        BootDecision::Run { .. } => None,
    }
}

/// Deletes the marker if it still describes `job_id` (a newer update may
/// have replaced it since).
fn clear_marker(bin: &Path, job_id: i64) {
    let path = marker_path(bin);
    match UpdateMarker::load(&path) {
        Ok(Some(marker)) if marker.job_id == job_id => {
            remove_quietly(&path);
            info!(
                job_id,
                "server acknowledged the update outcome; marker removed"
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the update marker to remove it"),
    }
}

#[cfg(all(test, unix))]
mod tests;
