//! Starting and cancelling a fleet update: the actions behind the JSON API
//! and the settings page. Each takes the acting admin and writes its audit
//! row in the transaction of the change.
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::{
    audit::{self, Actor, Entry},
    error::AppError,
    state::AppState,
    store::{
        self, StoreError,
        fleet_updates::{FleetUpdate, PlannedHost},
        hosts::{Host, HostFilter, Status},
    },
    version,
};

/// Online hosts whose agent is behind the server, in the order a run takes.
pub async fn candidates(state: &AppState) -> Result<Vec<Host>, AppError> {
    Ok(store::hosts::list_all(
        &state.db,
        &HostFilter {
            status: Some(Status::Online),
            behind: Some(version::VERSION.to_string()),
            ..Default::default()
        },
    )
    .await?)
}

pub async fn start(
    state: &AppState,
    by: &Actor,
    target: Option<&str>,
    confirm_count: Option<&str>,
) -> Result<FleetUpdate, AppError> {
    let target = target.filter(|t| !t.is_empty()).unwrap_or(version::VERSION);
    if target != version::VERSION {
        return Err(AppError::BadRequest(
            "invalid_target",
            format!(
                "this server can only update agents to its own version {}, not {target}",
                version::VERSION
            ),
        ));
    }
    let hosts = candidates(state).await?;
    if hosts.is_empty() {
        return Err(AppError::Conflict(
            "nothing_to_update",
            "no online host runs an older agent: nothing to update".into(),
        ));
    }
    if let Some(typed) = confirm_count {
        let n = hosts.len();
        if typed.trim().parse::<usize>().ok() != Some(n) {
            return Err(AppError::BadRequest(
                "count_mismatch",
                format!(
                    "you typed {:?} but {n} hosts would be updated: check the list and type {n} to confirm",
                    typed.trim()
                ),
            ));
        }
    }
    let planned: Vec<PlannedHost> = hosts
        .iter()
        .map(|h| PlannedHost {
            host_id: h.id,
            // The run's rows name hosts as every page does: by name.
            hostname: h.name.clone(),
            from_version: h.agent_version.clone(),
        })
        .collect();
    let now = state.clock.now_ms();
    let txn = state.db.begin().await?;
    let run = store::fleet_updates::create(&txn, by.id, &by.name, target, &planned, now).await?;
    let details = json!({"target_version": target, "hosts": planned.len()});
    let entry = Entry::new("fleet.start", "fleet_update", run.id, details);
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    tracing::info!(fleet_update_id = run.id, hosts = planned.len(), by = %by.name, "fleet update started");
    state.fleet.kick();
    Ok(run)
}

pub async fn cancel(state: &AppState, by: &Actor, id: i64) -> Result<(), AppError> {
    let now = state.clock.now_ms();
    // The write comes first in the transaction (SQLite cannot write after
    // reading once another connection wrote); a no-change says why after.
    let txn = state.db.begin().await?;
    if !store::fleet_updates::cancel(&txn, id, now).await? {
        store::fleet_updates::get(&txn, id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    AppError::NotFound("fleet_update_not_found", "no such fleet update".into())
                }
                other => other.into(),
            })?;
        return Err(AppError::Conflict(
            "not_running",
            "this fleet update is not running any more".into(),
        ));
    }
    let entry = Entry::new("fleet.cancel", "fleet_update", id, json!({}));
    audit::record(&txn, now, by, entry).await?;
    txn.commit().await?;
    tracing::info!(fleet_update_id = id, by = %by.name, "fleet update cancelled");
    state.fleet.kick();
    Ok(())
}
