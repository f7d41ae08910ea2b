//! Every path the server answers, shared by handlers, views and tests.

pub const DASHBOARD: &str = "/";
pub const LOGIN: &str = "/login";
pub const LOGOUT: &str = "/logout";
pub const HOST_NEW: &str = "/hosts/new";
pub const USERS_PAGE: &str = "/settings/users";
pub const AUDIT_PAGE: &str = "/audit";
pub const JOBS_PAGE: &str = "/jobs";
pub const FLEET_UPDATE_PAGE: &str = "/settings/fleet-update";

pub const API_LOGIN: &str = "/api/login";
pub const API_LOGOUT: &str = "/api/logout";
pub const API_ME: &str = "/api/me";
pub const API_VERSION: &str = "/api/version";
pub const API_HOSTS: &str = "/api/hosts";
pub const API_USERS: &str = "/api/users";
pub const API_AUDIT: &str = "/api/audit";
pub const API_JOBS: &str = "/api/jobs";

pub const AGENT_ENROLL: &str = "/agent/enroll";
pub const AGENT_WS: &str = "/agent/ws";
pub const AGENT_BINARY: &str = "/agent/binary";
pub const AGENT_INSTALL_SH: &str = "/agent/install.sh";

pub const SESSION_COOKIE: &str = "rm_session";

pub fn host(id: i64) -> String {
    format!("/hosts/{id}")
}
pub fn host_token(id: i64) -> String {
    format!("/hosts/{id}/token")
}
pub fn host_delete(id: i64) -> String {
    format!("/hosts/{id}/delete")
}
pub fn api_host(id: i64) -> String {
    format!("/api/hosts/{id}")
}
pub fn user_role(id: i64) -> String {
    format!("/settings/users/{id}/role")
}
pub fn user_password(id: i64) -> String {
    format!("/settings/users/{id}/password")
}
pub fn user_delete(id: i64) -> String {
    format!("/settings/users/{id}/delete")
}
pub fn api_user(id: i64) -> String {
    format!("/api/users/{id}")
}
pub fn asset(name: &str) -> String {
    format!("/assets/{}/{}", crate::web::assets::hash_of(name), name)
}
pub fn job(id: i64) -> String {
    format!("/jobs/{id}")
}
/// The live log stream, resuming after log position `after`.
pub fn job_events(id: i64, after: i64) -> String {
    format!("/jobs/{id}/events?after={after}")
}
pub fn api_job(id: i64) -> String {
    format!("/api/jobs/{id}")
}
pub fn host_update(id: i64) -> String {
    format!("/hosts/{id}/update")
}
pub fn api_host_update(id: i64) -> String {
    format!("/api/hosts/{id}/update")
}

pub const ALERTS_PAGE: &str = "/alerts";
pub const API_ALERTS: &str = "/api/alerts";
pub const NOTIFICATIONS_PAGE: &str = "/settings/notifications";
pub fn alert_resolve(id: i64) -> String {
    format!("/alerts/{id}/resolve")
}
pub fn api_alert_resolve(id: i64) -> String {
    format!("/api/alerts/{id}/resolve")
}
pub fn notification_target_delete(id: i64) -> String {
    format!("/settings/notifications/{id}/delete")
}
pub fn notification_target_test(id: i64) -> String {
    format!("/settings/notifications/{id}/test")
}
pub const FLEET_BANNER: &str = "/settings/fleet-update/banner";
pub const API_FLEET_UPDATE: &str = "/api/fleet/update";
pub fn fleet_cancel(id: i64) -> String {
    format!("/settings/fleet-update/{id}/cancel")
}
pub fn api_fleet_update(id: i64) -> String {
    format!("/api/fleet-updates/{id}")
}

pub const REPOSITORIES_PAGE: &str = "/repositories";
pub const REPOSITORY_PAGE: &str = "/repositories/{id}";
pub const REPOSITORY_DELETE: &str = "/repositories/{id}/delete";
pub const REPOSITORY_JOBS: &str = "/repositories/{id}/jobs";
pub const API_REPOSITORIES: &str = "/api/repositories";
pub const API_REPOSITORY: &str = "/api/repositories/{id}";
pub const API_REPOSITORY_JOBS: &str = "/api/repositories/{id}/jobs";
pub const API_JOB_CANCEL: &str = "/api/jobs/{id}/cancel";
pub const JOB_CANCEL: &str = "/jobs/{id}/cancel";
pub const API_SNAPSHOTS: &str = "/api/snapshots";

/// `pattern` with its `{id}` filled in.
pub fn with_id(pattern: &str, id: i64) -> String {
    pattern.replace("{id}", &id.to_string())
}
pub fn repository(id: i64) -> String {
    with_id(REPOSITORY_PAGE, id)
}
pub fn repository_delete(id: i64) -> String {
    with_id(REPOSITORY_DELETE, id)
}
pub fn repository_jobs(id: i64) -> String {
    with_id(REPOSITORY_JOBS, id)
}
pub fn api_repository(id: i64) -> String {
    with_id(API_REPOSITORY, id)
}
pub fn api_repository_jobs(id: i64) -> String {
    with_id(API_REPOSITORY_JOBS, id)
}
pub fn api_job_cancel(id: i64) -> String {
    with_id(API_JOB_CANCEL, id)
}
pub fn job_cancel(id: i64) -> String {
    with_id(JOB_CANCEL, id)
}
