//! Backup-health alerts: `backup_stale` (host + plan: a covering plan with
//! no success within `--backup-stale-after`) and `restic_missing` (a covered
//! host whose agent reports no restic). The sweeper raises and resolves both
//! from the stored health columns; a backup's success resolves its
//! `backup_stale` at once, and a hello re-judges its host's restic.
use std::collections::HashSet;

use super::{Severity, Swept, raise, resolve};
use crate::{clock, state::AppState, store};

pub const BACKUP_STALE: &str = "backup_stale";
pub const RESTIC_MISSING: &str = "restic_missing";

pub fn backup_stale_key(host_id: i64, plan_id: i64) -> String {
    format!("{BACKUP_STALE}:{host_id}:{plan_id}")
}
pub fn restic_missing_key(host_id: i64) -> String {
    format!("{RESTIC_MISSING}:{host_id}")
}

/// One pass over both kinds: raises what is newly true, resolves active
/// alerts that no longer are (a success, a plan that stopped covering the
/// host, restic installed).
pub async fn sweep(state: &AppState) -> store::Result<Swept> {
    let mut swept = Swept::default();
    let now = state.clock.now_ms();
    let s = state.settings.staleness(now);
    let hours = state.settings.backup_stale_after.as_secs() / 3600;

    let active: HashSet<String> = store::alerts::active_keys(&state.db, BACKUP_STALE)
        .await?
        .into_iter()
        .collect();
    let mut stale = HashSet::new();
    for p in store::health::named_pairs(&state.db, Some(s)).await? {
        let key = backup_stale_key(p.pair.host_id, p.pair.plan_id);
        stale.insert(key.clone());
        if active.contains(&key) {
            continue;
        }
        let since = match p.pair.last_success_at {
            Some(t) => format!("last success {}", clock::rfc3339(t)),
            None => format!(
                "never succeeded since the plan began to cover it at {}",
                clock::rfc3339(p.pair.covered_since)
            ),
        };
        let message = format!(
            "no successful backup of plan {} on {} in {hours} h ({since})",
            p.plan_name, p.host_name
        );
        let r = raise(
            state,
            BACKUP_STALE,
            &key,
            Some(p.pair.host_id),
            Severity::Warning,
            &message,
        )
        .await?;
        if r.is_new() {
            swept.raised += 1;
        }
    }
    for key in active.difference(&stale) {
        if resolve(state, key).await?.is_some() {
            swept.resolved += 1;
        }
    }

    let active: HashSet<i64> = store::alerts::active_host_ids(&state.db, RESTIC_MISSING)
        .await?
        .into_iter()
        .collect();
    let missing = store::health::restic_missing(&state.db, None).await?;
    let ids: HashSet<i64> = missing.iter().map(|(id, _)| *id).collect();
    for (id, name) in &missing {
        if !active.contains(id) && raise_restic_missing(state, *id, name).await? {
            swept.raised += 1;
        }
    }
    for id in active.difference(&ids) {
        if resolve(state, &restic_missing_key(*id)).await?.is_some() {
            swept.resolved += 1;
        }
    }
    Ok(swept)
}

async fn raise_restic_missing(state: &AppState, host_id: i64, name: &str) -> store::Result<bool> {
    let message = format!(
        "host {name} is covered by a backup plan but its agent reports no restic: install restic there (or set the agent's restic path)"
    );
    Ok(raise(
        state,
        RESTIC_MISSING,
        &restic_missing_key(host_id),
        Some(host_id),
        Severity::Warning,
        &message,
    )
    .await?
    .is_new())
}

/// A hello recorded the host's restic facts: raise or resolve its
/// `restic_missing` now rather than at the next sweep. Never fails the hello.
pub async fn on_hello(state: &AppState, host_id: i64) {
    let r = async {
        let missing = store::health::restic_missing(&state.db, Some(host_id)).await?;
        match missing.iter().find(|(id, _)| *id == host_id) {
            Some((id, name)) => {
                raise_restic_missing(state, *id, name).await?;
            }
            None => {
                resolve(state, &restic_missing_key(host_id)).await?;
            }
        }
        store::Result::Ok(())
    }
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, host_id, "judging restic_missing on hello failed");
    }
}
