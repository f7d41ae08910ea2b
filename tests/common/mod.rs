//! Shared integration-test harness: `TestApp::spawn()` starts the real
//! server on 127.0.0.1:0 with a fresh database (a temp SQLite file, or a new
//! Postgres database when `TEST_DATABASE_URL` is set), gives logged-in
//! clients per role, and attaches real agents over real WebSockets. Also:
//! HTML assertions by CSS selector, raw database reads, raw agent
//! WebSockets and a guard that kills child processes.
#![allow(dead_code)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use agent::{
    client::{AgentHandle, ConnState},
    config::AgentConfig,
    wire::{Envelope, Hello, Message as _},
};
use futures_util::{SinkExt, StreamExt};
use restic_manager::{Running, clock::Clock, config::Settings, routes, store::users::Role};
use sea_orm::{ConnectionTrait, Statement};
use tokio_tungstenite::tungstenite::{
    self, Message as WsMessage, client::IntoClientRequest, protocol::WebSocketConfig,
};

pub mod sim;

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestApp {
    pub url: String,
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub clock: Clock,
    pub settings: Settings,
}

/// A database URL for a test that drives the schema itself: a fresh
/// Postgres database when `TEST_DATABASE_URL` is set, else SQLite in `dir`.
pub async fn fresh_database_url(dir: &Path) -> String {
    restic_manager::db::testing::fresh_url(dir)
        .await
        .expect("a fresh test database")
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::with_data_dir(dir.path().join("data"));
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.bootstrap_admin_password = Some(ADMIN_PASSWORD.into());
        settings.workers = 2;
        settings.stage_sibling_agent = false;
        settings.agent_ping_interval = Duration::from_millis(500);
        settings.agent_ping_timeout = Duration::from_secs(3);
        // Every test's agents and clients come from 127.0.0.1.
        settings.agent_requests_per_min = 1_000_000;
        // Tests run the retention purge themselves (retention::purge_now):
        // none at a moment of the worker's choosing.
        settings.retention_first_delay = Duration::from_secs(30 * 86_400);
        if let Some(url) = restic_manager::db::testing::fresh_postgres_url()
            .await
            .expect("a fresh Postgres test database")
        {
            settings.database_url = url;
        }
        tweak(&mut settings);
        let clock = Clock::default();
        let running = restic_manager::start_with_clock(settings.clone(), clock.clone())
            .await
            .expect("server starts");
        let url = format!("http://{}", running.addr);
        TestApp {
            url,
            running: Some(running),
            dir,
            clock,
            settings,
        }
    }

    pub fn state(&self) -> &restic_manager::state::AppState {
        &self.running.as_ref().expect("running").state
    }

    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        &self.state().db
    }

    pub fn is_sqlite(&self) -> bool {
        self.settings.is_sqlite()
    }

    /// Stops the server (agents see the connection drop).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops the server if it runs and starts it again on the same database
    /// and address (so agents find it again by themselves).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.settings.listen = self
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("the test server's address");
        let running = restic_manager::start_with_clock(self.settings.clone(), self.clock.clone())
            .await
            .expect("server restarts on the same database");
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// `GET path` as a fresh admin, the body read as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.admin()
            .await
            .get(self.at(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until job `id` has `status`; returns the job's JSON.
    pub async fn wait_job(&self, id: i64, status: &str) -> serde_json::Value {
        eventually(&format!("job {id} {status}"), || async {
            let j: serde_json::Value = self.get_json(&routes::api_job(id)).await;
            (j["status"] == status).then_some(j)
        })
        .await
    }

    /// A host to set up: `app.host("web-1").online().await` enrolls it and
    /// connects a real agent (at "v1" unless `.version(…)` says otherwise).
    pub fn host(&self, name: &str) -> HostBuilder<'_> {
        HostBuilder {
            app: self,
            name: name.to_string(),
            version: "v1".to_string(),
        }
    }

    /// A client with no session. It keeps no idle connection: a request
    /// sent on a pooled connection just as the server closes it for being
    /// idle fails as an incomplete message and is not retried (a flake
    /// after any long wait in a test), so each request opens its own.
    pub fn anon(&self) -> reqwest::Client {
        restic_manager::install_crypto_provider();
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// A client that keeps no cookies of its own and sends `Cookie:
    /// rm_session=<token>` (or nothing) on every request, so a test controls
    /// exactly which session a request carries.
    pub fn with_session(&self, token: Option<&str>) -> reqwest::Client {
        restic_manager::install_crypto_provider();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::COOKIE,
                format!("{}={t}", routes::SESSION_COOKIE).parse().unwrap(),
            );
        }
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// A client logged in as `username`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Client {
        let c = self.anon();
        let r = c
            .post(self.at(routes::API_LOGIN))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "login as {username} failed: {}",
            r.text().await.unwrap_or_default()
        );
        c
    }

    /// Logs in through the API and returns the raw session token.
    pub async fn session_token(&self, username: &str, password: &str) -> String {
        let r = self
            .with_session(None)
            .post(self.at(routes::API_LOGIN))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login as {username} failed");
        session_cookie(&r).expect("login sets the session cookie")
    }

    pub async fn admin(&self) -> reqwest::Client {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// The fixed password `as_role`/`user` give a user named `name`.
    pub fn password_of(name: &str) -> String {
        format!("{name}-password-1")
    }

    /// Creates (or resets) a user straight in the store; returns its id.
    pub async fn user(&self, name: &str, role: Role) -> i64 {
        restic_manager::provisioning::user_save(
            self.db(),
            name,
            role,
            &Self::password_of(name),
            self.clock.now_ms(),
        )
        .await
        .unwrap()
        .id
    }

    /// A logged-in client with `role` (creates the user on first use).
    pub async fn as_role(&self, role: Role) -> reqwest::Client {
        if role == Role::Admin {
            return self.admin().await;
        }
        let name = role.as_str();
        if restic_manager::store::users::get_by_name(self.db(), name)
            .await
            .unwrap()
            .is_none()
        {
            self.user(name, role).await;
        }
        self.login(name, &Self::password_of(name)).await
    }

    /// Session token for `role` (creates the user on first use).
    pub async fn role_token(&self, role: Role) -> String {
        if role == Role::Admin {
            return self.session_token("admin", ADMIN_PASSWORD).await;
        }
        let name = role.as_str();
        if restic_manager::store::users::get_by_name(self.db(), name)
            .await
            .unwrap()
            .is_none()
        {
            self.user(name, role).await;
        }
        self.session_token(name, &Self::password_of(name)).await
    }

    /// Adds a host through the API; returns (id, enrollment token).
    pub async fn add_host(&self, name: &str) -> (i64, String) {
        let r = self
            .admin()
            .await
            .post(self.at(routes::API_HOSTS))
            .json(&serde_json::json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        (
            v["id"].as_i64().unwrap(),
            v["enrollment_token"].as_str().unwrap().to_string(),
        )
    }

    /// Adds a host straight in the store (no HTTP, no login); returns
    /// (id, enrollment token).
    pub async fn add_host_direct(&self, name: &str) -> (i64, String) {
        let c = restic_manager::provisioning::host_add(self.db(), name, self.clock.now_ms())
            .await
            .unwrap();
        (c.host_id, c.enrollment_token)
    }

    /// Adds and enrolls a host through the real enroll endpoint.
    pub async fn enrolled_host(&self, name: &str) -> AgentConfig {
        let (_, token) = self.add_host_direct(name).await;
        agent::enroll::enroll(&self.url, &token, name)
            .await
            .expect("enroll")
    }

    /// Starts a real agent for `cfg` reporting `version`.
    pub fn agent(&self, cfg: &AgentConfig, version: &str) -> AgentHandle {
        agent::client::spawn(cfg.clone(), sim::agent_options(cfg, version))
    }

    pub async fn host_json(&self, id: i64) -> serde_json::Value {
        self.admin()
            .await
            .get(self.at(&routes::api_host(id)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The host as the store sees it (no HTTP).
    pub async fn host_row(&self, id: i64) -> Option<restic_manager::store::hosts::Host> {
        restic_manager::store::hosts::get(self.db(), id).await.ok()
    }

    /// Runs a raw query; every column is read as text (NULL → None).
    /// Cast non-text columns in the SQL (`CAST(x AS TEXT)`).
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let db = self.db();
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        rows.iter()
            .map(|row| {
                (0..row.column_names().len())
                    .map(|i| {
                        row.try_get_by_index::<Option<String>>(i)
                            .unwrap_or_else(|e| panic!("column {i} of {sql:?}: {e}"))
                    })
                    .collect()
            })
            .collect()
    }

    /// First column of the first row of a raw query.
    pub async fn query_one(&self, sql: &str) -> Option<String> {
        self.query(sql)
            .await
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.query_one(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Everything a refused request must not change: hosts (with their
    /// secrets), enrollment tokens, users (with role and password hash),
    /// jobs, alerts, notification targets and deliveries, fleet updates.
    /// Sessions are left out: logging in is not a change of state.
    pub async fn snapshot(&self) -> String {
        let hosts = self
            .query("SELECT CAST(id AS TEXT), name, secret_hash, os, arch FROM hosts ORDER BY id")
            .await;
        let tokens = self
            .query(
                "SELECT CAST(id AS TEXT), CAST(host_id AS TEXT), CAST(used_at AS TEXT) \
                 FROM enrollment_tokens ORDER BY id",
            )
            .await;
        let users = self
            .query("SELECT CAST(id AS TEXT), username, role, password_hash FROM users ORDER BY id")
            .await;
        let jobs = self
            .query("SELECT CAST(id AS TEXT), status FROM jobs ORDER BY id")
            .await;
        let alerts = self
            .query("SELECT CAST(id AS TEXT), CAST(resolved_at AS TEXT) FROM alerts ORDER BY id")
            .await;
        let targets = self
            .query("SELECT CAST(id AS TEXT), name FROM notification_targets ORDER BY id")
            .await;
        let repositories = self
            .query(
                "SELECT CAST(id AS TEXT), name, url_masked, CAST(prune AS TEXT), \
                 CAST(updated_at AS TEXT) FROM repositories ORDER BY id",
            )
            .await;
        let deliveries = self.count("notification_deliveries").await;
        // Only how many: the fleet worker moves runs along by itself.
        let fleet_updates = self.count("fleet_updates").await;
        format!(
            "hosts={hosts:?}\ntokens={tokens:?}\nusers={users:?}\njobs={jobs:?}\n\
             alerts={alerts:?}\ntargets={targets:?}\ndeliveries={deliveries}\n\
             fleet_updates={fleet_updates}\nrepositories={repositories:?}"
        )
    }

    /// Opens a raw agent WebSocket with `Authorization: Bearer <secret>`
    /// (none when `secret` is None). The client accepts frames of any size,
    /// so it can send what a well-behaved agent would refuse to.
    pub async fn ws(&self, secret: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let url = format!("{}{}", self.url.replacen("http", "ws", 1), routes::AGENT_WS);
        let mut req = url.into_client_request()?;
        if let Some(s) = secret {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {s}").parse().unwrap());
        }
        let cfg = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        tokio_tungstenite::connect_async_with_config(req, Some(cfg), false)
            .await
            .map(|(ws, _)| ws)
    }
}

/// An `agent.hello` frame.
pub struct HostBuilder<'a> {
    app: &'a TestApp,
    name: String,
    version: String,
}

impl HostBuilder<'_> {
    /// The version the agent reports in its hello.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    /// Enrolls the host, starts its agent and waits until the server acked
    /// its hello.
    pub async fn online(self) -> (AgentConfig, AgentHandle) {
        let cfg = self.app.enrolled_host(&self.name).await;
        let agent = self.app.agent(&cfg, &self.version);
        wait_acked(&agent).await;
        (cfg, agent)
    }
}

pub fn hello_frame(version: &str, os: &str, arch: &str, hostname: &str) -> String {
    Hello {
        agent_version: version.into(),
        os: os.into(),
        arch: arch.into(),
        hostname: hostname.into(),
        update: None,
        ..Default::default()
    }
    .envelope()
    .to_text()
}

/// What the server sent next on a raw WebSocket: a parsed text frame, a
/// close (with its code), or the stream ending. Pings are skipped.
#[derive(Debug)]
pub enum WsEvent {
    Frame(Envelope),
    Text(String),
    Pong(Vec<u8>),
    Close(Option<u16>),
    /// The connection ended without a Close frame (or with an error).
    Ended(String),
}

pub async fn ws_next(ws: &mut Ws) -> WsEvent {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the server on the agent WebSocket");
        return match next {
            None => WsEvent::Ended("stream ended".into()),
            Some(Err(e)) => WsEvent::Ended(e.to_string()),
            Some(Ok(WsMessage::Text(t))) => match Envelope::parse(&t) {
                Ok(env) => WsEvent::Frame(env),
                Err(_) => WsEvent::Text(t.to_string()),
            },
            Some(Ok(WsMessage::Pong(p))) => WsEvent::Pong(p.to_vec()),
            Some(Ok(WsMessage::Close(f))) => WsEvent::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
        };
    }
}

/// Waits for the next text frame of type `kind`; panics on anything else
/// but pings.
pub async fn ws_expect(ws: &mut Ws, kind: &str) -> Envelope {
    match ws_next(ws).await {
        WsEvent::Frame(env) if env.kind == kind => env,
        other => panic!("expected a {kind} frame, got {other:?}"),
    }
}

pub async fn ws_send(ws: &mut Ws, text: impl Into<String>) {
    ws.send(WsMessage::text(text.into()))
        .await
        .expect("sending on the agent WebSocket");
}

/// Sends a ping and waits for its pong: proof the connection is alive and
/// the server is still reading it.
pub async fn ws_assert_alive(ws: &mut Ws) {
    ws.send(WsMessage::Ping(b"alive?".to_vec().into()))
        .await
        .expect("sending a ping");
    loop {
        match ws_next(ws).await {
            WsEvent::Pong(p) if p == b"alive?" => return,
            WsEvent::Frame(_) | WsEvent::Text(_) | WsEvent::Pong(_) => continue,
            other => panic!("connection not alive: {other:?}"),
        }
    }
}

/// Waits for an agent to be connected and acknowledged.
pub async fn wait_acked(a: &AgentHandle) -> ConnState {
    a.wait_for(WAIT, |s| s.connected && s.acked)
        .await
        .unwrap_or_else(|s| panic!("agent never got hello.ack: {s:?}"))
}

/// Polls `check` until it returns Some, at most `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(WAIT, what, check).await
}

/// Polls `check` until it returns Some, at most `limit`.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// JSON error body check: status and `error` code.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) {
    let got = r.status().as_u16();
    let url = r.url().to_string();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(got, status, "status of {url}; body {body}");
    assert_eq!(body["error"], code, "error code of {url}; body {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message of {url}; body {body}"
    );
}

/// The session token a response sets, if any (empty for a removal).
pub fn session_cookie(r: &reqwest::Response) -> Option<String> {
    set_cookie(r).and_then(|c| {
        let first = c.split(';').next()?.trim();
        first
            .strip_prefix(&format!("{}=", routes::SESSION_COOKIE))
            .map(str::to_string)
    })
}

/// The raw `Set-Cookie` header for the session cookie.
pub fn set_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{}=", routes::SESSION_COOKIE)))
        .map(str::to_string)
}

pub fn location(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An HTML response: status, content type and the parsed document.
pub struct Page {
    pub status: u16,
    pub content_type: String,
    pub doc: scraper::Html,
    pub text: String,
}

impl Page {
    pub async fn from(r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap_or_default();
        Page {
            status,
            content_type,
            doc: scraper::Html::parse_document(&text),
            text,
        }
    }

    /// Trimmed text of every element matching `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let sel = scraper::Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e}"));
        self.doc
            .select(&sel)
            .map(|e| {
                e.text()
                    .collect::<String>()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    /// The text of the single element matching `css`; panics otherwise.
    pub fn one(&self, css: &str) -> String {
        let all = self.texts(css);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {css:?} (status {}), page:\n{}",
            self.status,
            self.text
        );
        all.into_iter().next().unwrap()
    }

    pub fn has(&self, css: &str) -> bool {
        !self.texts(css).is_empty()
    }

    /// An attribute of the single element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let sel = scraper::Selector::parse(css).unwrap();
        self.doc
            .select(&sel)
            .next()
            .and_then(|e| e.value().attr(name))
            .map(str::to_string)
    }

    pub fn assert_html(&self) {
        assert!(
            self.content_type.starts_with("text/html"),
            "expected an HTML page, got {:?}: {}",
            self.content_type,
            self.text
        );
    }
}

/// The `restic-manager-agent` binary cargo built beside this test's
/// executable (target/debug/deps/<test> → target/debug/restic-manager-agent).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    let debug_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = debug_dir.join("restic-manager-agent");
    assert!(
        bin.is_file(),
        "the agent binary is missing at {}: build it first with \
         `cargo build -p restic-manager-agent` (or `cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// Kills (SIGKILL) and reaps a child process when dropped, so a failing
/// test never leaves an agent running.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(Some(child))
    }
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }
    /// Polls for the child's exit, at most `WAIT`.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("child");
        eventually("child process exits", || {
            let r = child.try_wait().expect("polling the child");
            async move { r }
        })
        .await
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
