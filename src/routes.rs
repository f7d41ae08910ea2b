//! Every path the server answers, shared by handlers, views and tests.
//!
//! Each route is a pattern constant (`{id}` marks a path parameter) and a row
//! of [`ALL`] with its method and the least access it needs. Handlers are
//! registered through [`crate::web::route`], which refuses a pattern that is
//! not in `ALL`; URL builders fill the same patterns. The role test
//! (`tests/it/api_roles.rs`) checks every row of `ALL` for every principal.

use crate::store::users::Role;

pub const DASHBOARD: &str = "/";
pub const LOGIN: &str = "/login";
pub const LOGOUT: &str = "/logout";
pub const ASSET: &str = "/assets/{hash}/{name}";

pub const HOST: &str = "/hosts/{id}";
pub const HOST_NEW: &str = "/hosts/new";
pub const HOST_TOKEN: &str = "/hosts/{id}/token";
pub const HOST_DELETE: &str = "/hosts/{id}/delete";
pub const HOST_UPDATE: &str = "/hosts/{id}/update";

pub const JOBS_PAGE: &str = "/jobs";
pub const JOB: &str = "/jobs/{id}";
pub const JOB_EVENTS: &str = "/jobs/{id}/events";
pub const JOB_CANCEL: &str = "/jobs/{id}/cancel";

pub const REPOSITORIES_PAGE: &str = "/repositories";
pub const REPOSITORY_PAGE: &str = "/repositories/{id}";
pub const REPOSITORY_DELETE: &str = "/repositories/{id}/delete";
pub const REPOSITORY_JOBS: &str = "/repositories/{id}/jobs";

/// The restore flow on a host page: the panel (GET) and its form (POST).
pub const HOST_RESTORE: &str = "/hosts/{id}/restore";
/// One directory of a snapshot, as the restore panel's browser shows it.
pub const HOST_BROWSE: &str = "/hosts/{id}/browse";
pub const PLANS_PAGE: &str = "/plans";
pub const PLAN_PREVIEW: &str = "/plans/preview";
pub const PLAN_PAGE: &str = "/plans/{id}";
pub const PLAN_DELETE: &str = "/plans/{id}/delete";
pub const PLAN_RUN: &str = "/plans/{id}/run";
pub const HOST_PLANS: &str = "/hosts/{id}/plans";
pub const HOST_LABELS: &str = "/hosts/{id}/labels";

pub const USERS_PAGE: &str = "/settings/users";
pub const USER_ROLE: &str = "/settings/users/{id}/role";
pub const USER_PASSWORD: &str = "/settings/users/{id}/password";
pub const USER_DELETE: &str = "/settings/users/{id}/delete";

pub const AUDIT_PAGE: &str = "/audit";

pub const ALERTS_PAGE: &str = "/alerts";
pub const ALERT_RESOLVE: &str = "/alerts/{id}/resolve";

pub const NOTIFICATIONS_PAGE: &str = "/settings/notifications";
pub const NOTIFICATION_TARGET_DELETE: &str = "/settings/notifications/{id}/delete";
pub const NOTIFICATION_TARGET_TEST: &str = "/settings/notifications/{id}/test";

pub const FLEET_UPDATE_PAGE: &str = "/settings/fleet-update";
pub const FLEET_BANNER: &str = "/settings/fleet-update/banner";
pub const FLEET_CANCEL: &str = "/settings/fleet-update/{id}/cancel";

pub const API_LOGIN: &str = "/api/login";
pub const API_LOGOUT: &str = "/api/logout";
pub const API_ME: &str = "/api/me";
pub const API_VERSION: &str = "/api/version";
pub const API_HOSTS: &str = "/api/hosts";
pub const API_HOST: &str = "/api/hosts/{id}";
pub const API_HOST_TOKEN: &str = "/api/hosts/{id}/token";
pub const API_HOST_UPDATE: &str = "/api/hosts/{id}/update";
pub const API_USERS: &str = "/api/users";
pub const API_USER: &str = "/api/users/{id}";
pub const API_USER_ROLE: &str = "/api/users/{id}/role";
pub const API_USER_PASSWORD: &str = "/api/users/{id}/password";
pub const API_AUDIT: &str = "/api/audit";
pub const API_JOBS: &str = "/api/jobs";
pub const API_JOB: &str = "/api/jobs/{id}";
pub const API_JOB_LOGS: &str = "/api/jobs/{id}/logs";
pub const API_JOB_CANCEL: &str = "/api/jobs/{id}/cancel";
pub const API_REPOSITORIES: &str = "/api/repositories";
pub const API_REPOSITORY: &str = "/api/repositories/{id}";
pub const API_REPOSITORY_JOBS: &str = "/api/repositories/{id}/jobs";
pub const API_SNAPSHOTS: &str = "/api/snapshots";
pub const API_SNAPSHOT_LS: &str = "/api/repositories/{id}/snapshots/{snapshot_id}/ls";
pub const API_RESTORES: &str = "/api/restores";
pub const API_PLANS: &str = "/api/plans";
pub const API_PLAN: &str = "/api/plans/{id}";
pub const API_PLAN_RUN: &str = "/api/plans/{id}/run";
pub const API_ALERTS: &str = "/api/alerts";
pub const API_ALERT_RESOLVE: &str = "/api/alerts/{id}/resolve";
pub const API_FLEET_UPDATE: &str = "/api/fleet/update";
pub const API_FLEET_RUNS: &str = "/api/fleet-updates";
pub const API_FLEET_RUN: &str = "/api/fleet-updates/{id}";
pub const API_FLEET_RUN_CANCEL: &str = "/api/fleet-updates/{id}/cancel";

/// Prometheus metrics (a session or the metrics bearer token).
pub const METRICS: &str = "/metrics";

pub const AGENT_ENROLL: &str = agent::wire::ENROLL_PATH;
pub const AGENT_WS: &str = agent::wire::WS_PATH;
pub const AGENT_BINARY: &str = agent::wire::BINARY_PATH;
pub const AGENT_INSTALL_SH: &str = agent::wire::INSTALL_SH_PATH;

pub const SESSION_COOKIE: &str = "rm_session";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, logged in or not.
    Public,
    /// Only with an agent credential (secret or enrollment token): a user
    /// session, even an admin's, is no credential here.
    Agent,
    /// Logged in with at least this role.
    Min(Role),
    /// Logged in with any role, or `Authorization: Bearer` with the
    /// server's `--metrics-token` (scrapers have no session).
    MetricsToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

const fn row(method: Method, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

use Access::{Agent, MetricsToken, Public};
use Method::{Delete, Get, Patch, Post};
const VIEWER: Access = Access::Min(Role::Viewer);
const OPERATOR: Access = Access::Min(Role::Operator);
const ADMIN: Access = Access::Min(Role::Admin);

/// Every route the server registers, with the least access it needs
/// (DESIGN.md "Roles").
pub const ALL: &[Route] = &[
    // Public.
    row(Get, API_VERSION, Public),
    row(Get, ASSET, Public),
    row(Get, LOGIN, Public),
    row(Post, LOGIN, Public),
    row(Post, API_LOGIN, Public),
    row(Post, LOGOUT, Public),
    row(Post, API_LOGOUT, Public),
    row(Get, AGENT_INSTALL_SH, Public),
    // Agent credentials only.
    row(Post, AGENT_ENROLL, Agent),
    row(Get, AGENT_BINARY, Agent),
    row(Get, AGENT_WS, Agent),
    // A session, or the metrics token.
    row(Get, METRICS, MetricsToken),
    // Any logged-in user.
    row(Get, API_ME, VIEWER),
    row(Get, DASHBOARD, VIEWER),
    row(Get, HOST, VIEWER),
    row(Get, API_HOSTS, VIEWER),
    row(Get, API_HOST, VIEWER),
    row(Get, JOBS_PAGE, VIEWER),
    row(Get, JOB, VIEWER),
    row(Get, JOB_EVENTS, VIEWER),
    row(Get, API_JOBS, VIEWER),
    row(Get, API_JOB, VIEWER),
    row(Get, API_JOB_LOGS, VIEWER),
    row(Get, ALERTS_PAGE, VIEWER),
    row(Get, API_ALERTS, VIEWER),
    row(Get, FLEET_BANNER, VIEWER),
    row(Get, REPOSITORIES_PAGE, VIEWER),
    row(Get, REPOSITORY_PAGE, VIEWER),
    row(Get, API_REPOSITORIES, VIEWER),
    row(Get, API_REPOSITORY, VIEWER),
    row(Get, API_SNAPSHOTS, VIEWER),
    row(Get, PLANS_PAGE, VIEWER),
    row(Get, PLAN_PREVIEW, VIEWER),
    row(Get, PLAN_PAGE, VIEWER),
    row(Get, HOST_PLANS, VIEWER),
    row(Get, API_PLANS, VIEWER),
    row(Get, API_PLAN, VIEWER),
    // Operator (RESTIC.md "Roles"; some kinds need admin, checked per request).
    row(Post, JOB_CANCEL, OPERATOR),
    row(Post, API_JOB_CANCEL, OPERATOR),
    row(Post, REPOSITORY_JOBS, OPERATOR),
    row(Post, API_REPOSITORY_JOBS, OPERATOR),
    // Browse and restore (onto another host or in place: admin, per request).
    row(Get, API_SNAPSHOT_LS, OPERATOR),
    row(Post, API_RESTORES, OPERATOR),
    row(Get, HOST_RESTORE, OPERATOR),
    row(Post, HOST_RESTORE, OPERATOR),
    row(Get, HOST_BROWSE, OPERATOR),
    row(Post, PLAN_RUN, OPERATOR),
    row(Post, API_PLAN_RUN, OPERATOR),
    // Admin.
    row(Get, HOST_NEW, ADMIN),
    row(Post, HOST_NEW, ADMIN),
    row(Post, HOST_TOKEN, ADMIN),
    row(Post, HOST_DELETE, ADMIN),
    row(Post, HOST_UPDATE, ADMIN),
    row(Post, API_HOSTS, ADMIN),
    row(Delete, API_HOST, ADMIN),
    row(Post, API_HOST_TOKEN, ADMIN),
    row(Post, API_HOST_UPDATE, ADMIN),
    row(Post, ALERT_RESOLVE, ADMIN),
    row(Post, API_ALERT_RESOLVE, ADMIN),
    row(Get, NOTIFICATIONS_PAGE, ADMIN),
    row(Post, NOTIFICATIONS_PAGE, ADMIN),
    row(Post, NOTIFICATION_TARGET_DELETE, ADMIN),
    row(Post, NOTIFICATION_TARGET_TEST, ADMIN),
    row(Get, FLEET_UPDATE_PAGE, ADMIN),
    row(Post, FLEET_UPDATE_PAGE, ADMIN),
    row(Post, FLEET_CANCEL, ADMIN),
    row(Post, API_FLEET_UPDATE, ADMIN),
    row(Get, API_FLEET_RUNS, ADMIN),
    row(Get, API_FLEET_RUN, ADMIN),
    row(Post, API_FLEET_RUN_CANCEL, ADMIN),
    row(Get, USERS_PAGE, ADMIN),
    row(Post, USERS_PAGE, ADMIN),
    row(Post, USER_ROLE, ADMIN),
    row(Post, USER_PASSWORD, ADMIN),
    row(Post, USER_DELETE, ADMIN),
    row(Get, API_USERS, ADMIN),
    row(Post, API_USERS, ADMIN),
    row(Delete, API_USER, ADMIN),
    row(Post, API_USER_ROLE, ADMIN),
    row(Post, API_USER_PASSWORD, ADMIN),
    row(Get, AUDIT_PAGE, ADMIN),
    row(Get, API_AUDIT, ADMIN),
    row(Post, REPOSITORIES_PAGE, ADMIN),
    row(Post, REPOSITORY_PAGE, ADMIN),
    row(Post, REPOSITORY_DELETE, ADMIN),
    row(Post, API_REPOSITORIES, ADMIN),
    row(Patch, API_REPOSITORY, ADMIN),
    row(Delete, API_REPOSITORY, ADMIN),
    row(Post, PLANS_PAGE, ADMIN),
    row(Post, PLAN_PAGE, ADMIN),
    row(Post, PLAN_DELETE, ADMIN),
    row(Post, API_PLANS, ADMIN),
    row(Patch, API_PLAN, ADMIN),
    row(Delete, API_PLAN, ADMIN),
    row(Patch, API_HOST, ADMIN),
    row(Post, HOST_LABELS, ADMIN),
];

/// The row of `ALL` for `method path` (`path` as the pattern constant).
pub fn find(method: Method, path: &str) -> Option<&'static Route> {
    ALL.iter().find(|r| r.method == method && r.path == path)
}

/// `pattern` with its `{id}` filled in.
fn with_id(pattern: &str, id: i64) -> String {
    pattern.replacen("{id}", &id.to_string(), 1)
}

pub fn host(id: i64) -> String {
    with_id(HOST, id)
}
pub fn host_token(id: i64) -> String {
    with_id(HOST_TOKEN, id)
}
pub fn host_delete(id: i64) -> String {
    with_id(HOST_DELETE, id)
}
pub fn host_update(id: i64) -> String {
    with_id(HOST_UPDATE, id)
}
pub fn api_host(id: i64) -> String {
    with_id(API_HOST, id)
}
pub fn api_host_token(id: i64) -> String {
    with_id(API_HOST_TOKEN, id)
}
pub fn api_host_update(id: i64) -> String {
    with_id(API_HOST_UPDATE, id)
}
pub fn user_role(id: i64) -> String {
    with_id(USER_ROLE, id)
}
pub fn user_password(id: i64) -> String {
    with_id(USER_PASSWORD, id)
}
pub fn user_delete(id: i64) -> String {
    with_id(USER_DELETE, id)
}
pub fn api_user(id: i64) -> String {
    with_id(API_USER, id)
}
pub fn api_user_role(id: i64) -> String {
    with_id(API_USER_ROLE, id)
}
pub fn api_user_password(id: i64) -> String {
    with_id(API_USER_PASSWORD, id)
}
pub fn asset(name: &str) -> String {
    ASSET
        .replacen("{hash}", crate::web::assets::hash_of(name), 1)
        .replacen("{name}", name, 1)
}
pub fn job(id: i64) -> String {
    with_id(JOB, id)
}
/// The live log stream from the start.
pub fn job_events(id: i64) -> String {
    with_id(JOB_EVENTS, id)
}
/// The live log stream, resuming after log position `after`.
pub fn job_events_after(id: i64, after: i64) -> String {
    format!("{}?after={after}", job_events(id))
}
pub fn api_job(id: i64) -> String {
    with_id(API_JOB, id)
}
pub fn api_job_logs(id: i64) -> String {
    with_id(API_JOB_LOGS, id)
}
pub fn job_cancel(id: i64) -> String {
    with_id(JOB_CANCEL, id)
}
pub fn api_job_cancel(id: i64) -> String {
    with_id(API_JOB_CANCEL, id)
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
/// The ls API for one directory of a snapshot (`path` URL-encoded).
pub fn api_snapshot_ls(repository_id: i64, snapshot_id: &str, path: &str) -> String {
    format!(
        "{}?path={}",
        with_id(API_SNAPSHOT_LS, repository_id).replacen(
            "{snapshot_id}",
            &urlencoding::encode(snapshot_id),
            1
        ),
        urlencoding::encode(path)
    )
}
pub fn host_restore(id: i64) -> String {
    with_id(HOST_RESTORE, id)
}
/// The restore panel for one snapshot.
pub fn host_restore_snapshot(id: i64, repository_id: i64, snapshot_id: &str) -> String {
    format!(
        "{}?repository_id={repository_id}&snapshot_id={}",
        host_restore(id),
        urlencoding::encode(snapshot_id)
    )
}
/// One directory of a snapshot in the restore panel (`path` URL-encoded).
pub fn host_browse(id: i64, repository_id: i64, snapshot_id: &str, path: &str) -> String {
    format!(
        "{}?repository_id={repository_id}&snapshot_id={}&path={}",
        with_id(HOST_BROWSE, id),
        urlencoding::encode(snapshot_id),
        urlencoding::encode(path)
    )
}
pub fn plan(id: i64) -> String {
    with_id(PLAN_PAGE, id)
}
pub fn plan_delete(id: i64) -> String {
    with_id(PLAN_DELETE, id)
}
pub fn plan_run(id: i64) -> String {
    with_id(PLAN_RUN, id)
}
pub fn host_plans(id: i64) -> String {
    with_id(HOST_PLANS, id)
}
pub fn host_labels(id: i64) -> String {
    with_id(HOST_LABELS, id)
}
pub fn api_plan(id: i64) -> String {
    with_id(API_PLAN, id)
}
pub fn api_plan_run(id: i64) -> String {
    with_id(API_PLAN_RUN, id)
}
pub fn alert_resolve(id: i64) -> String {
    with_id(ALERT_RESOLVE, id)
}
pub fn api_alert_resolve(id: i64) -> String {
    with_id(API_ALERT_RESOLVE, id)
}
pub fn notification_target_delete(id: i64) -> String {
    with_id(NOTIFICATION_TARGET_DELETE, id)
}
pub fn notification_target_test(id: i64) -> String {
    with_id(NOTIFICATION_TARGET_TEST, id)
}
pub fn fleet_cancel(id: i64) -> String {
    with_id(FLEET_CANCEL, id)
}
pub fn api_fleet_run(id: i64) -> String {
    with_id(API_FLEET_RUN, id)
}
pub fn api_fleet_run_cancel(id: i64) -> String {
    with_id(API_FLEET_RUN_CANCEL, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        for (i, r) in ALL.iter().enumerate() {
            assert!(
                !ALL[..i]
                    .iter()
                    .any(|o| o.method == r.method && o.path == r.path),
                "{} {} is listed twice",
                r.method.as_str(),
                r.path
            );
        }
    }

    #[test]
    fn builders_fill_the_pattern() {
        assert_eq!(host(7), "/hosts/7");
        assert_eq!(api_fleet_run_cancel(3), "/api/fleet-updates/3/cancel");
        assert_eq!(job_events_after(5, 9), "/jobs/5/events?after=9");
        assert_eq!(
            api_snapshot_ls(2, "ab12", "/srv/a dir/ü&x"),
            "/api/repositories/2/snapshots/ab12/ls?path=%2Fsrv%2Fa%20dir%2F%C3%BC%26x"
        );
    }
}
