//! sea-orm entities, one per table. Only `store/` uses them.
pub mod agent_binaries;
pub mod alerts;
pub mod audit_log;
pub mod enrollment_tokens;
pub mod fleet_update_hosts;
pub mod fleet_updates;
pub mod hosts;
pub mod job_logs;
pub mod jobs;
pub mod notification_deliveries;
pub mod notification_targets;
pub mod repositories;
pub mod sessions;
pub mod snapshots;
pub mod users;
