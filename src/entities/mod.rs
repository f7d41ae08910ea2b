//! sea-orm entities, one per table. Only `store/` uses them.
pub mod agent_binaries;
pub mod audit_log;
pub mod enrollment_tokens;
pub mod hosts;
pub mod job_logs;
pub mod jobs;
pub mod sessions;
pub mod users;
