//! The integration tests, one binary (so the server is linked once, not once
//! per file): one module per area. Each starts the real server through the
//! shared harness in `tests/common/` (also used by the browser and
//! end-to-end suites, which stay separate binaries behind their features).

#[path = "../common/mod.rs"]
mod common;

mod agents;
mod alerts;
mod api_auth;
mod api_bad_input;
mod api_enroll;
mod api_roles;
mod audit;
mod fleet;
mod health;
mod hello_marks;
mod job_groups;
mod jobs;
mod migrations;
mod plans;
mod presence;
mod restic;
mod restore;
mod retention;
mod server_log;
mod tls;
mod updates;
