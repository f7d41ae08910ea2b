//! The role table, route by route: one list of every route the server
//! registers, with the least role it needs, checked for each principal
//! (anonymous, viewer, operator, admin). Anonymous gets 401 JSON on the API
//! and a 303 to the login page elsewhere; a role that is too small gets 403
//! (`{"error":"forbidden"}` or a readable HTML page) and changes nothing;
//! an allowed role gets the route's success status. A separate test checks
//! the table against `routes::ALL` (every registered route, with its least
//! role), so a new route cannot skip the table.
use std::collections::BTreeSet;

use crate::common::*;
use restic_manager::{
    routes::{self, Access},
    store::{alerts, fleet_updates, jobs, notifications, users::Role},
};

#[derive(Clone, Copy, Debug)]
enum Body {
    None,
    /// JSON text; `{n}` is replaced with a number unique to the request.
    Json(&'static str),
    /// urlencoded form; `{n}` as above.
    Form(&'static str),
}

#[derive(Clone, Debug)]
struct Route {
    method: &'static str,
    /// May hold `{host}` / `{user}` (a fresh fixture per request) and
    /// `{hash}` / `{name}` (an embedded asset).
    path: &'static str,
    access: Access,
    /// Answers in JSON (true) or HTML (false).
    api: bool,
    body: Body,
    /// Status when allowed.
    ok: u16,
    /// Status when allowed and logged in, if different (the login page
    /// redirects a logged-in user).
    ok_logged_in: Option<u16>,
    /// Another status that also counts as allowed (a race the table cannot
    /// pin down, e.g. the fleet worker finishing a run before it is cancelled).
    ok_alt: Option<u16>,
    /// The request ends the caller's session (logout).
    ends_session: bool,
}

const fn r(method: &'static str, path: &'static str, access: Access, api: bool, ok: u16) -> Route {
    Route {
        method,
        path,
        access,
        api,
        body: Body::None,
        ok,
        ok_logged_in: None,
        ok_alt: None,
        ends_session: false,
    }
}

impl Route {
    const fn json(mut self, b: &'static str) -> Self {
        self.body = Body::Json(b);
        self
    }
    const fn form(mut self, b: &'static str) -> Self {
        self.body = Body::Form(b);
        self
    }
    const fn logged_in(mut self, status: u16) -> Self {
        self.ok_logged_in = Some(status);
        self
    }
    const fn or(mut self, status: u16) -> Self {
        self.ok_alt = Some(status);
        self
    }
    const fn ends_session(mut self) -> Self {
        self.ends_session = true;
        self
    }
}

const VIEWER: Access = Access::Min(Role::Viewer);
const OPERATOR: Access = Access::Min(Role::Operator);
const ADMIN: Access = Access::Min(Role::Admin);
const PROBE_LOGIN_JSON: &str = r#"{"username":"probe","password":"probe-password-1"}"#;
const PROBE_LOGIN_FORM: &str = "username=probe&password=probe-password-1";

/// Every route, with the least role it needs (DESIGN.md "Roles").
fn table() -> Vec<Route> {
    vec![
        // Public.
        r("GET", routes::API_VERSION, Access::Public, true, 200),
        r("GET", "/assets/{hash}/{name}", Access::Public, false, 200),
        r("GET", routes::LOGIN, Access::Public, false, 200).logged_in(303),
        r("POST", routes::LOGIN, Access::Public, false, 303).form(PROBE_LOGIN_FORM),
        r("POST", routes::API_LOGIN, Access::Public, true, 200).json(PROBE_LOGIN_JSON),
        r("GET", routes::AGENT_INSTALL_SH, Access::Public, false, 200),
        // Agent credentials only.
        r("POST", routes::AGENT_ENROLL, Access::Agent, true, 200).json(r#"{"token":"bogus"}"#),
        r("GET", "/agent/binary", Access::Agent, true, 200),
        r("GET", routes::AGENT_WS, Access::Agent, true, 101),
        // A session of any role, or the metrics token (tests/it/health.rs).
        r("GET", routes::METRICS, Access::MetricsToken, true, 200),
        // Any logged-in user.
        r("GET", routes::API_ME, VIEWER, true, 200),
        r("GET", routes::API_HOSTS, VIEWER, true, 200),
        r("GET", "/api/hosts/{host}", VIEWER, true, 200),
        r("GET", routes::DASHBOARD, VIEWER, false, 200),
        r("GET", "/hosts/{host}", VIEWER, false, 200),
        r("GET", routes::API_JOBS, VIEWER, true, 200),
        r("GET", "/api/jobs/{job}", VIEWER, true, 200),
        r("GET", "/api/jobs/{job}/logs", VIEWER, true, 200),
        r("GET", routes::JOBS_PAGE, VIEWER, false, 200),
        r("GET", "/jobs/{job}", VIEWER, false, 200),
        r("GET", "/jobs/{job}/events", VIEWER, false, 200),
        r("GET", routes::API_ALERTS, VIEWER, true, 200),
        r("GET", routes::ALERTS_PAGE, VIEWER, false, 200),
        r("GET", routes::REPOSITORIES_PAGE, VIEWER, false, 200),
        r("GET", "/repositories/{repo}", VIEWER, false, 200),
        r("GET", routes::API_REPOSITORIES, VIEWER, true, 200),
        r("GET", "/api/repositories/{repo}", VIEWER, true, 200),
        r("GET", routes::PLANS_PAGE, VIEWER, false, 200),
        r("GET", routes::PLAN_PREVIEW, VIEWER, false, 200),
        r("GET", "/plans/{plan}", VIEWER, false, 200),
        r("GET", "/hosts/{host}/plans", VIEWER, false, 200),
        r("GET", routes::API_PLANS, VIEWER, true, 200),
        r("GET", "/api/plans/{plan}", VIEWER, true, 200),
        // Operator (restic jobs; the fixture host is offline, so they queue).
        r("POST", "/api/repositories/{repo}/jobs", OPERATOR, true, 202).json(r#"{"kind":"check"}"#),
        r("POST", "/repositories/{repo}/jobs", OPERATOR, false, 303).form("kind=snapshots"),
        r("POST", "/api/jobs/{rjob}/cancel", OPERATOR, true, 200),
        r("POST", "/jobs/{rjob}/cancel", OPERATOR, false, 303),
        // Browse and restore: the fixture host is offline, so browsing says
        // host_offline (409, in place on the page) and restores queue.
        r("GET", routes::API_SNAPSHOTS, VIEWER, true, 200),
        r(
            "GET",
            "/api/repositories/{repo}/snapshots/{snap}/ls?path=%2Fsrv",
            OPERATOR,
            true,
            409,
        ),
        r("POST", routes::API_RESTORES, OPERATOR, true, 202).json(
            r#"{"repository_id":{repo},"snapshot_id":"{snap}","host_id":{rhost},"target":"/var/tmp/rm-restore-{n}"}"#,
        ),
        r(
            "GET",
            "/hosts/{rhost}/restore?repository_id={repo}&snapshot_id={snap}",
            OPERATOR,
            false,
            200,
        ),
        r("POST", "/hosts/{rhost}/restore", OPERATOR, false, 200)
            .form("repository_id={repo}&snapshot_id={snap}&target=%2Fvar%2Ftmp%2Frm-{n}"),
        r(
            "GET",
            "/hosts/{rhost}/browse?repository_id={repo}&snapshot_id={snap}&path=%2F",
            OPERATOR,
            false,
            200,
        ),
        // The plan's host is offline: the backup queues.
        r("POST", "/api/plans/{plan}/run", OPERATOR, true, 202),
        r("POST", "/plans/{plan}/run", OPERATOR, false, 303),
        // Admin.
        r("POST", routes::API_REPOSITORIES, ADMIN, true, 201)
            .json(r#"{"name":"api-repo-{n}","url":"/tmp/rm-api-repo-{n}","password":"pw-{n}"}"#),
        r("PATCH", "/api/repositories/{repo}", ADMIN, true, 200).json(r#"{"prune":false}"#),
        r("DELETE", "/api/repositories/{repo}", ADMIN, true, 204),
        // Repository 1 is made by the runner.
        r("POST", routes::API_PLANS, ADMIN, true, 201).json(
            r#"{"name":"api-plan-{n}","repository_id":1,"paths":["/srv"],"schedule":"@daily"}"#,
        ),
        r("PATCH", "/api/plans/{plan}", ADMIN, true, 200).json(r#"{"enabled":false}"#),
        r("DELETE", "/api/plans/{plan}", ADMIN, true, 204),
        r("POST", routes::PLANS_PAGE, ADMIN, false, 303)
            .form("name=form-plan-{n}&repository_id=1&paths=%2Fsrv&schedule=%40daily&enabled=on"),
        r("POST", "/plans/{plan}", ADMIN, false, 303)
            .form("name=plan-renamed-{n}&repository_id=1&paths=%2Fsrv&schedule=%40hourly"),
        r("POST", "/plans/{plan}/delete", ADMIN, false, 303),
        r("PATCH", "/api/hosts/{host}", ADMIN, true, 200).json(r#"{"labels":["db","eu"]}"#),
        r("POST", "/hosts/{host}/labels", ADMIN, false, 303).form("labels=db%2C+eu"),
        r("POST", routes::REPOSITORIES_PAGE, ADMIN, false, 303)
            .form("name=form-repo-{n}&url=%2Ftmp%2Frm-form-{n}&password=pw"),
        r("POST", "/repositories/{repo}", ADMIN, false, 303)
            .form("name=renamed-{n}&check_every_days=3"),
        r("POST", "/repositories/{repo}/delete", ADMIN, false, 303),
        r("POST", routes::API_HOSTS, ADMIN, true, 201).json(r#"{"name":"new-{n}"}"#),
        r("DELETE", "/api/hosts/{host}", ADMIN, true, 204),
        r("POST", "/api/hosts/{host}/token", ADMIN, true, 201),
        r("GET", routes::HOST_NEW, ADMIN, false, 200),
        r("POST", routes::HOST_NEW, ADMIN, false, 200).form("name=page-{n}"),
        r("POST", "/hosts/{host}/token", ADMIN, false, 200),
        r("POST", "/hosts/{host}/delete", ADMIN, false, 303),
        // The fixture host is offline: allowed, then refused for that (409).
        r("POST", "/api/hosts/{host}/update", ADMIN, true, 409),
        r("POST", "/hosts/{host}/update", ADMIN, false, 409),
        r("POST", "/api/alerts/{alert}/resolve", ADMIN, true, 200),
        r("POST", "/alerts/{alert}/resolve", ADMIN, false, 303),
        r("GET", routes::NOTIFICATIONS_PAGE, ADMIN, false, 200),
        r("POST", routes::NOTIFICATIONS_PAGE, ADMIN, false, 200)
            .form("name=hook-{n}&url=http%3A%2F%2F127.0.0.1%3A9%2Fhook&secret="),
        r(
            "POST",
            "/settings/notifications/{target}/test",
            ADMIN,
            false,
            200,
        ),
        r(
            "POST",
            "/settings/notifications/{target}/delete",
            ADMIN,
            false,
            200,
        ),
        // No online host is behind: allowed, then nothing_to_update (409).
        r("POST", routes::API_FLEET_UPDATE, ADMIN, true, 409),
        r("GET", "/api/fleet-updates", ADMIN, true, 200),
        r("GET", "/api/fleet-updates/{fleet}", ADMIN, true, 200),
        r(
            "POST",
            "/api/fleet-updates/{fleet}/cancel",
            ADMIN,
            true,
            200,
        )
        .or(409),
        r("GET", routes::FLEET_BANNER, VIEWER, false, 200),
        r("GET", routes::FLEET_UPDATE_PAGE, ADMIN, false, 200),
        r("POST", routes::FLEET_UPDATE_PAGE, ADMIN, false, 409).form("confirm_count=1"),
        r(
            "POST",
            "/settings/fleet-update/{fleet}/cancel",
            ADMIN,
            false,
            303,
        )
        .or(200),
        r("GET", routes::API_USERS, ADMIN, true, 200),
        r("POST", routes::API_USERS, ADMIN, true, 201)
            .json(r#"{"username":"api{n}","password":"password-{n}-x","role":"viewer"}"#),
        r("DELETE", "/api/users/{user}", ADMIN, true, 204),
        r("POST", "/api/users/{user}/role", ADMIN, true, 200).json(r#"{"role":"operator"}"#),
        r("POST", "/api/users/{user}/password", ADMIN, true, 204)
            .json(r#"{"password":"new-password-{n}"}"#),
        r("GET", routes::USERS_PAGE, ADMIN, false, 200),
        r("GET", routes::API_AUDIT, ADMIN, true, 200),
        r("GET", routes::AUDIT_PAGE, ADMIN, false, 200),
        r("POST", routes::USERS_PAGE, ADMIN, false, 200)
            .form("username=form{n}&password=password-{n}-x&role=viewer"),
        r("POST", "/settings/users/{user}/role", ADMIN, false, 200).form("role=operator"),
        r("POST", "/settings/users/{user}/password", ADMIN, false, 200)
            .form("password=new-password-x"),
        r("POST", "/settings/users/{user}/delete", ADMIN, false, 200),
        // Logout works for anyone and ends the caller's session: last.
        r("POST", routes::API_LOGOUT, Access::Public, true, 204).ends_session(),
        r("POST", routes::LOGOUT, Access::Public, false, 303).ends_session(),
    ]
}

struct Runner {
    app: TestApp,
    who: Option<Role>,
    token: Option<String>,
    n: u32,
    failures: Vec<String>,
}

impl Runner {
    async fn new(who: Option<Role>) -> Runner {
        let app = TestApp::spawn().await;
        app.user("probe", Role::Viewer).await;
        // Repository 1, for plan bodies that name one.
        let first = restic_manager::restic::repositories::create(
            app.db(),
            &app.state().secrets,
            restic_manager::restic::repositories::RepositoryInput {
                name: Some("first".into()),
                url: Some("rest:http://127.0.0.1:9/first".into()),
                password: Some("pw".into()),
                ..Default::default()
            },
            app.clock.now_ms(),
        )
        .await
        .unwrap();
        assert_eq!(first.id, 1);
        let token = match who {
            Some(role) => Some(app.role_token(role).await),
            None => None,
        };
        Runner {
            app,
            who,
            token,
            n: 0,
            failures: Vec::new(),
        }
    }

    /// Fills the placeholders with fresh fixtures.
    async fn concrete(&mut self, template: &str) -> String {
        self.n += 1;
        let n = self.n;
        let mut path = template.to_string();
        if path.contains("{host}") {
            let (id, _) = self.app.add_host_direct(&format!("fixture-{n}")).await;
            path = path.replace("{host}", &id.to_string());
        }
        if path.contains("{user}") {
            let id = self.app.user(&format!("target{n}"), Role::Viewer).await;
            path = path.replace("{user}", &id.to_string());
        }
        if path.contains("{job}") {
            let (host_id, _) = self.app.add_host_direct(&format!("job-host-{n}")).await;
            let job = jobs::create(
                self.app.db(),
                &jobs::NewJob {
                    host_id,
                    kind: jobs::JobKind::Backup,
                    actor_kind: jobs::ActorKind::System,
                    actor_id: None,
                    actor_name: "test".into(),
                    target_version: None,
                    deadline_at: None,
                },
                self.app.clock.now_ms(),
            )
            .await
            .unwrap();
            path = path.replace("{job}", &job.id.to_string());
        }
        if path.contains("{repo}") || path.contains("{rjob}") {
            let (host_id, _) = self.app.add_host_direct(&format!("repo-host-{n}")).await;
            let state = self.app.state();
            let repo = restic_manager::restic::repositories::create(
                self.app.db(),
                &state.secrets,
                restic_manager::restic::repositories::RepositoryInput {
                    name: Some(format!("repo-{n}")),
                    // Shared: jobs without a host go to its maintenance host.
                    url: Some(format!("rest:http://127.0.0.1:9/repo-{n}")),
                    password: Some(format!("pw-{n}")),
                    maintenance_host_id: Some(Some(host_id)),
                    ..Default::default()
                },
                self.app.clock.now_ms(),
            )
            .await
            .unwrap();
            path = path.replace("{repo}", &repo.id.to_string());
            if path.contains("{snap}") {
                // A snapshot the fixture host made (as a backup would index it).
                let snap = format!("{n:08x}{}", "0".repeat(56));
                restic_manager::store::snapshots::upsert(
                    self.app.db(),
                    &restic_manager::store::snapshots::NewSnapshot {
                        repository_id: repo.id,
                        scope_host_id: 0,
                        snap: restic_manager::store::snapshots::Snapshot {
                            repository_id: repo.id,
                            host_id: Some(host_id),
                            plan_id: None,
                            snapshot_id: snap.clone(),
                            short_id: snap[..8].to_string(),
                            time: self.app.clock.now_ms(),
                            hostname: format!("repo-host-{n}"),
                            paths: vec!["/srv".into()],
                            tags: vec![],
                            job_id: None,
                            files_new: None,
                            files_changed: None,
                            data_added: None,
                            total_bytes_processed: None,
                            duration_ms: None,
                        },
                    },
                )
                .await
                .unwrap();
                path = path
                    .replace("{snap}", &snap)
                    .replace("{rhost}", &host_id.to_string());
            }
            if path.contains("{rjob}") {
                let who = restic_manager::restic::jobs::Requester {
                    kind: jobs::ActorKind::System,
                    id: None,
                    name: "test".into(),
                };
                let job = restic_manager::restic::jobs::enqueue(
                    state,
                    &who,
                    &repo,
                    host_id,
                    jobs::JobKind::Check,
                    None,
                    &Default::default(),
                )
                .await
                .unwrap();
                path = path.replace("{rjob}", &job.id.to_string());
            }
        }
        if path.contains("{plan}") {
            let (host_id, _) = self.app.add_host_direct(&format!("plan-host-{n}")).await;
            let plan = restic_manager::restic::plans::create(
                self.app.db(),
                restic_manager::restic::plans::PlanInput {
                    name: Some(format!("plan-{n}")),
                    repository_id: Some(1),
                    paths: Some(vec!["/srv".into()]),
                    schedule: Some("@daily".into()),
                    hosts: Some(vec![host_id]),
                    ..Default::default()
                },
                chrono_tz::Tz::UTC,
                self.app.clock.now_ms(),
            )
            .await
            .unwrap();
            path = path.replace("{plan}", &plan.id.to_string());
        }
        if path.contains("{alert}") {
            let key = format!("test:{n}");
            let raised = alerts::raise(
                self.app.db(),
                &alerts::NewAlert {
                    kind: "test",
                    dedup_key: &key,
                    host_id: None,
                    severity: alerts::Severity::Warning,
                    message: "a test alert",
                },
                self.app.clock.now_ms(),
            )
            .await
            .unwrap();
            path = path.replace("{alert}", &raised.alert().id.to_string());
        }
        if path.contains("{target}") {
            let t = notifications::create_target(
                self.app.db(),
                &notifications::NewTarget {
                    name: &format!("target-{n}"),
                    // Nothing listens on the discard port: no traffic leaves.
                    url: "http://127.0.0.1:9/hook",
                    secret: None,
                },
                self.app.clock.now_ms(),
            )
            .await
            .unwrap();
            path = path.replace("{target}", &t.id.to_string());
        }
        if path.contains("{fleet}") {
            // One run at a time: reuse the running one. No hosts, so the
            // worker has nothing to dispatch, halt or alert about.
            let db = self.app.db();
            let run = match fleet_updates::active(db).await.unwrap() {
                Some(run) => run,
                None => fleet_updates::create(
                    db,
                    None,
                    "test",
                    restic_manager::version::VERSION,
                    &[],
                    self.app.clock.now_ms(),
                )
                .await
                .unwrap(),
            };
            path = path.replace("{fleet}", &run.id.to_string());
        }
        let hash = restic_manager::web::assets::hash_of("app.css");
        path.replace("{hash}", hash).replace("{name}", "app.css")
    }

    async fn check(&mut self, route: &Route) {
        // Fixtures a body names: made once, with the path's placeholders.
        let body_text = match route.body {
            Body::Json(b) | Body::Form(b) => b,
            Body::None => "",
        };
        let mut template = route.path.to_string();
        let body_keys = ["{repo}", "{snap}", "{rhost}"];
        let in_body: Vec<&str> = body_keys
            .into_iter()
            .filter(|k| body_text.contains(k))
            .collect();
        if !in_body.is_empty() {
            // Carry the body's placeholders through the path's fixture step.
            template.push('#');
            template.push_str(&in_body.join("|"));
        }
        let filled = self.concrete(&template).await;
        let (path, carried) = match filled.split_once('#') {
            Some((p, c)) => (p.to_string(), c.split('|').map(str::to_string).collect()),
            None => (filled, Vec::<String>::new()),
        };
        let fixtures: Vec<(String, String)> =
            in_body.iter().map(|k| k.to_string()).zip(carried).collect();
        let n = self.n.to_string();
        let client = self.app.with_session(self.token.as_deref());
        let mut url = self.app.at(&path);
        if path.starts_with("/agent/binary") {
            url.push_str("?os=linux&arch=x86_64");
        }
        let mut req = match route.method {
            "GET" => client.get(&url),
            "POST" => client.post(&url),
            "DELETE" => client.delete(&url),
            "PATCH" => client.patch(&url),
            other => panic!("method {other} not in the runner"),
        };
        // A body naming fixtures gets them (the path's, when it has some).
        let fill = |b: &str| {
            let b = b.replace("{n}", &n);
            let mut out = b.clone();
            for (k, v) in &fixtures {
                out = out.replace(k.as_str(), v);
            }
            out
        };
        req = match route.body {
            Body::None => req,
            Body::Json(b) => req.header("Content-Type", "application/json").body(fill(b)),
            Body::Form(b) => req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(fill(b)),
        };
        let before = self.app.snapshot().await;
        let resp = req.send().await.unwrap();
        let what = format!("{} {path} as {:?}", route.method, self.who);
        let status = resp.status().as_u16();
        let loc = location(&resp);
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // A live event stream never ends: judge it by its head only.
        let text = if ctype.starts_with("text/event-stream") {
            String::new()
        } else {
            resp.text().await.unwrap_or_default()
        };
        let refused = |me: &mut Runner, ok: bool, msg: String| {
            if !ok {
                me.failures
                    .push(format!("{what}: {msg} (status {status}, body {text:.300})"));
            }
        };

        let allowed = match (route.access, self.who) {
            (Access::Public, _) => true,
            (Access::Agent, _) => false,
            (Access::Min(_), None) => false,
            (Access::Min(min), Some(role)) => role >= min,
            (Access::MetricsToken, who) => who.is_some(),
        };

        if allowed {
            let want = match (self.who, route.ok_logged_in) {
                (Some(_), Some(s)) => s,
                _ => route.ok,
            };
            refused(
                self,
                status == want || Some(status) == route.ok_alt,
                format!("expected {want}"),
            );
            if status == 200 && !route.api && route.path != "/assets/{hash}/{name}" {
                let is_page = ctype.starts_with("text/html");
                let is_script =
                    path == routes::AGENT_INSTALL_SH && ctype.starts_with("text/x-shellscript");
                let is_stream = path.ends_with("/events") && ctype.starts_with("text/event-stream");
                refused(
                    self,
                    is_page || is_script || is_stream,
                    format!("expected HTML, got {ctype}"),
                );
                // Full pages name the user; htmx partials (banner) do not.
                let full_page = text.starts_with("<!DOCTYPE html>");
                if is_page
                    && full_page
                    && let Some(role) = self.who
                {
                    let page = Page {
                        status,
                        content_type: ctype.clone(),
                        doc: scraper::Html::parse_document(&text),
                        text: text.clone(),
                    };
                    let who = page.texts("[data-testid=whoami]").join("");
                    refused(
                        self,
                        who.contains(role.as_str()),
                        format!("page shows whoami {who:?}"),
                    );
                }
            }
            if route.ends_session
                && let Some(role) = self.who
            {
                self.token = Some(self.app.role_token(role).await);
            }
            return;
        }

        // Refused: the state must be exactly as before.
        let after = self.app.snapshot().await;
        refused(
            self,
            before == after,
            format!("a refused request changed state:\n{before}\n→\n{after}"),
        );

        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match (route.access, self.who) {
            (Access::Agent, _) => {
                refused(self, status == 401, "expected 401".into());
                refused(
                    self,
                    body["error"].as_str().is_some_and(|e| !e.is_empty())
                        && body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "expected a JSON error".into(),
                );
            }
            (_, None) if route.api => {
                refused(
                    self,
                    status == 401 && body["error"] == "unauthorized",
                    "expected 401 unauthorized".into(),
                );
                refused(
                    self,
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "expected a message".into(),
                );
            }
            (_, None) => {
                let want = format!("/login?next={}", urlencoding::encode(&path));
                refused(
                    self,
                    status == 303 && loc.as_deref() == Some(want.as_str()),
                    format!("expected 303 to {want}, got {loc:?}"),
                );
            }
            (_, Some(_)) if route.api => {
                refused(
                    self,
                    status == 403
                        && body["error"] == "forbidden"
                        && body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "expected 403 {\"error\":\"forbidden\"}".into(),
                );
            }
            (_, Some(_)) => {
                let page = Page {
                    status,
                    content_type: ctype.clone(),
                    doc: scraper::Html::parse_document(&text),
                    text: text.clone(),
                };
                let msg = page.texts("[data-testid=error-message]").join("");
                refused(
                    self,
                    status == 403 && ctype.starts_with("text/html") && msg.contains("role"),
                    format!("expected a readable 403 page, message {msg:?}"),
                );
            }
        }
    }

    async fn run_table(mut self) {
        for route in table() {
            self.check(&route).await;
        }
        assert!(
            self.failures.is_empty(),
            "{} role-table failure(s) for {:?}:\n{}",
            self.failures.len(),
            self.who,
            self.failures.join("\n")
        );
    }
}

#[tokio::test]
async fn anonymous_gets_401_json_on_the_api_and_a_login_redirect_on_pages() {
    Runner::new(None).await.run_table().await;
}

#[tokio::test]
async fn viewer_reads_hosts_and_is_refused_every_admin_action() {
    Runner::new(Some(Role::Viewer)).await.run_table().await;
}

#[tokio::test]
async fn operator_reads_hosts_and_is_refused_every_admin_action() {
    Runner::new(Some(Role::Operator)).await.run_table().await;
}

#[tokio::test]
async fn admin_may_do_everything_but_use_agent_endpoints_with_a_session() {
    Runner::new(Some(Role::Admin)).await.run_table().await;
}

/// A path with its parameter names dropped (`/hosts/{host}` → `/hosts/{}`),
/// so the table's fixture placeholders compare with the route patterns.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    // The query the table sends is no part of the route.
    let path = path.split('?').next().unwrap_or(path);
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn role_table_covers_every_registered_route() {
    // routes::ALL is what the server registers (registering a route that is
    // not in it panics at startup); this table must say the same.
    let registered: BTreeSet<(String, String)> = routes::ALL
        .iter()
        .map(|r| (r.method.as_str().to_string(), normalize(r.path)))
        .collect();
    assert!(
        registered.len() >= 30,
        "routes::ALL lists only {} routes: {registered:?}",
        registered.len()
    );
    let tabled: BTreeSet<(String, String)> = table()
        .iter()
        .map(|r| (r.method.to_string(), normalize(r.path)))
        .collect();
    let missing: Vec<_> = registered.difference(&tabled).collect();
    let stale: Vec<_> = tabled.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "routes in routes::ALL but missing from the role table in tests/it/api_roles.rs: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "role-table rows for routes the server no longer registers: {stale:?}"
    );
    for row in table() {
        let declared = routes::ALL
            .iter()
            .find(|r| r.method.as_str() == row.method && normalize(r.path) == normalize(row.path))
            .expect("checked above");
        assert_eq!(
            declared.access, row.access,
            "{} {}: routes::ALL and the role table disagree on who may call it",
            row.method, row.path
        );
    }
}
