//! The pages as a person uses them, in headless Chromium driven through
//! Debian's chromedriver (fantoccini): login, the dashboard's live htmx
//! refresh under the CSP, what a viewer sees, adding a host. Built only with
//! `--features browser-tests`; a missing browser fails the run, never skips it.
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use restic_manager::store::users::Role;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// How long to wait for an element after a navigation or a click.
const UI_WAIT: Duration = Duration::from_secs(20);
/// The host table refreshes itself every 10 s; allow a missed tick and slack.
const REFRESH_WAIT: Duration = Duration::from_secs(25);

/// At most two browsers at once: enough to overlap the dashboard test's
/// refresh wait with the others, few enough for a 2-core machine.
static BROWSERS: Semaphore = Semaphore::const_new(2);

fn chromium_bin() -> PathBuf {
    std::env::var_os("RM_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn chromedriver_bin() -> PathBuf {
    std::env::var_os("RM_CHROMEDRIVER")
        .map_or_else(|| "/usr/bin/chromedriver".into(), PathBuf::from)
}

fn require_binary(path: &Path, package: &str) {
    assert!(
        path.is_file(),
        "browser tests need {} (Debian package `{package}`: apt-get install {package}); \
         not found. These tests never skip: install it, or build without --features browser-tests",
        path.display()
    );
}

/// A chromedriver child in its own process group, so that dropping it (also
/// while a failed test unwinds) takes Chromium and its helpers down too.
struct Chromedriver {
    child: Child,
    port: u16,
    session: Option<String>,
    log: PathBuf,
    /// Chromium's profile and the driver's log; removed after the kill.
    dir: tempfile::TempDir,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let bin = chromedriver_bin();
        require_binary(&bin, "chromium-driver");
        require_binary(&chromium_bin(), "chromium");
        let mut last_failure = String::new();
        // A port picked free can be taken before chromedriver binds it.
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(d) => return d,
                Err(e) => last_failure = e,
            }
        }
        panic!("chromedriver did not start: {last_failure}");
    }

    fn try_start(bin: &Path) -> Result<Chromedriver, String> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a free port: {e}"))?
            .port();
        let log = dir.path().join("chromedriver.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut d = Chromedriver {
            child,
            port,
            session: None,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "exited with {status} on port {port}; log:\n{}",
                    d.log_text()
                ));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on port {port} after 10 s; log:\n{}",
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ends the WebDriver session synchronously (Drop cannot await), which
    /// makes chromedriver quit Chromium cleanly and release the profile.
    fn delete_session(&mut self) {
        let Some(sid) = self.session.take() else {
            return;
        };
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "DELETE /session/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        self.delete_session();
        // Whatever is left in chromedriver's process group (its own id).
        // libc, not /usr/bin/kill: procps-ng 4.0's kill was seen here to
        // signal every process when handed a negative id.
        let pgid = self.child.id() as libc::pid_t;
        if pgid > 1 {
            // SAFETY: killpg only sends a signal; the group is our child's.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session against one `TestApp`.
struct Browser {
    c: Client,
    base: String,
    driver: Chromedriver,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Browser {
    async fn open(app: &TestApp) -> Browser {
        let permit = BROWSERS
            .acquire()
            .await
            .expect("browser semaphore is never closed");
        let mut driver = Chromedriver::start();
        let profile = driver.dir.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_bin(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let c = match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await
        {
            Ok(c) => c,
            Err(e) => panic!(
                "could not open a Chromium session through chromedriver: {e}\nchromedriver log:\n{}",
                driver.log_text()
            ),
        };
        driver.session = c.session_id().await.ok().flatten();
        Browser {
            c,
            base: app.url.clone(),
            driver,
            _permit: permit,
        }
    }

    /// Ends the session cleanly; Drop covers the panicking path.
    async fn close(mut self) {
        if self.c.clone().close().await.is_ok() {
            self.driver.session = None;
        }
    }

    async fn goto(&self, path: &str) {
        let url = format!("{}{}", self.base, path);
        self.c
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// Path and query of the current page.
    async fn location(&self) -> String {
        let u = self.c.current_url().await.expect("current url");
        match u.query() {
            Some(q) => format!("{}?{}", u.path(), q),
            None => u.path().to_string(),
        }
    }

    /// What is on screen, for failure messages.
    async fn describe(&self) -> String {
        let url = self
            .c
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        let text = match self.c.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        format!(
            "at {url}, page text:\n{}",
            text.chars().take(1500).collect::<String>()
        )
    }

    async fn wait_css(&self, css: &str) -> Element {
        match self
            .c
            .wait()
            .at_most(UI_WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "no `{css}` within {UI_WAIT:?} ({e}); {}",
                self.describe().await
            ),
        }
    }

    /// Text of the first match. An htmx swap can replace the element between
    /// the find and the read (a stale reference); then it finds it again
    /// (bounded), as a person looking at the page would.
    async fn text(&self, css: &str) -> String {
        let mut last_err = None;
        for _ in 0..20 {
            match self.wait_css(css).await.text().await {
                Ok(t) => return t.trim().to_string(),
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("`{css}` kept changing under the reader: {last_err:?}")
    }

    /// Texts of all matches. An htmx swap can replace elements between the
    /// find and the read; then it reads again (bounded).
    async fn texts(&self, css: &str) -> Vec<String> {
        'retry: for _ in 0..20 {
            let mut out = Vec::new();
            for e in self.c.find_all(Locator::Css(css)).await.expect("find_all") {
                match e.text().await {
                    Ok(t) => out.push(t.trim().to_string()),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'retry;
                    }
                }
            }
            return out;
        }
        panic!("`{css}` kept changing under the reader")
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.wait_css(css).await;
        e.clear().await.expect("clear field");
        e.send_keys(value).await.expect("type into field");
    }

    /// Clicks the first match; like `text`, finds it again if an htmx swap
    /// replaced it between the find and the click.
    async fn click(&self, css: &str) {
        let mut last_err = None;
        for _ in 0..20 {
            match self.wait_css(css).await.click().await {
                Ok(()) => return,
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("clicking `{css}`: {last_err:?}")
    }

    async fn js(&self, script: &str) -> Value {
        self.c
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Fills and submits the login form (the browser must be on /login).
    async fn submit_login(&self, username: &str, password: &str) {
        self.fill("#username", username).await;
        self.fill("#password", password).await;
        self.click("form[action='/login'] button[type=submit]")
            .await;
    }

    /// Logs in through the form and waits for the dashboard.
    async fn login(&self, username: &str, password: &str) {
        self.goto("/login").await;
        self.submit_login(username, password).await;
        self.wait_css("[data-testid=whoami]").await;
    }

    /// Labels of the top navigation's links.
    async fn nav_labels(&self) -> Vec<String> {
        self.wait_css("header nav").await;
        self.texts("header nav a").await
    }

    /// The status pill of one dashboard row, if the row is there right now
    /// (an htmx swap can detach it between the find and the read).
    async fn row_status(&self, host_id: i64) -> Option<String> {
        let css = format!("tr[data-host-id='{host_id}'] [data-testid=status]");
        let e = self.c.find(Locator::Css(&css)).await.ok()?;
        e.text().await.ok().map(|t| t.trim().to_string())
    }

    async fn row_cell(&self, host_id: i64, testid: &str) -> String {
        self.text(&format!(
            "tr[data-host-id='{host_id}'] [data-testid={testid}]"
        ))
        .await
    }

    async fn row_name(&self, host_id: i64) -> String {
        self.text(&format!("tr[data-host-id='{host_id}'] td:first-child"))
            .await
    }

    /// Ids of the dashboard's rows, sorted. Reads again if the 10 s refresh
    /// swaps the table between the find and the read (bounded).
    async fn row_ids(&self) -> Vec<i64> {
        'retry: for _ in 0..20 {
            let mut ids = Vec::new();
            let rows = self
                .c
                .find_all(Locator::Css("[data-testid=host-row]"))
                .await
                .expect("rows");
            for row in rows {
                let Ok(id) = row.attr("data-host-id").await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'retry;
                };
                let id = id.unwrap_or_default();
                ids.push(
                    id.parse()
                        .unwrap_or_else(|_| panic!("row with a bad data-host-id {id:?}")),
                );
            }
            ids.sort();
            return ids;
        }
        panic!("the dashboard's rows kept changing under the reader")
    }

    /// An attribute of the first match (None: not set); finds it again if a
    /// swap replaced it between the find and the read.
    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let mut last_err = None;
        for _ in 0..20 {
            match self.wait_css(css).await.attr(name).await {
                Ok(v) => return v,
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("`{css}` kept changing under the reader: {last_err:?}")
    }

    /// Every CSP violation this document reported since it loaded
    /// (`buffered: true` hands over the ones from before the observer).
    async fn csp_violations(&self) -> Vec<String> {
        let script = r#"
            const done = arguments[arguments.length - 1];
            const seen = [];
            const take = (reports) => {
                for (const r of reports) seen.push(r.body.effectiveDirective + " " + r.body.blockedURL);
            };
            const obs = new ReportingObserver(take, { types: ["csp-violation"], buffered: true });
            obs.observe();
            setTimeout(() => { take(obs.takeRecords()); obs.disconnect(); done(seen); }, 200);
        "#;
        let v = self
            .c
            .execute_async(script, vec![])
            .await
            .expect("reading CSP reports");
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn screenshot(&self, name: &str) {
        if std::env::var("RM_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).expect("creating docs/screenshots");
        let png = self.c.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(name), png).expect("writing screenshot");
    }
}

#[tokio::test]
async fn login_redirects_shows_who_is_logged_in_and_refuses_a_wrong_password() {
    let app = TestApp::spawn().await;
    let b = Browser::open(&app).await;

    b.goto("/").await;
    b.wait_css("#username").await;
    assert_eq!(
        b.location().await,
        "/login?next=%2F",
        "an anonymous visit to / goes to the login page"
    );
    assert_eq!(b.c.title().await.expect("title"), "Log in · restic-manager");

    b.submit_login("admin", "not-the-password").await;
    let banner = b.text("[data-testid=error-banner]").await;
    assert!(
        banner.contains("wrong username or password"),
        "error banner: {banner:?}"
    );
    assert!(
        b.location().await.starts_with("/login"),
        "stays on the login page"
    );
    let kept = b
        .wait_css("#username")
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(
        kept.as_deref(),
        Some("admin"),
        "the username is kept for the retry"
    );
    assert_eq!(
        b.c.find_all(Locator::Css("[data-testid=whoami]"))
            .await
            .expect("find")
            .len(),
        0
    );

    b.submit_login("admin", ADMIN_PASSWORD).await;
    assert_eq!(b.text("[data-testid=whoami]").await, "admin · admin");
    assert_eq!(b.location().await, "/", "lands on the dashboard");
    assert_eq!(b.c.title().await.expect("title"), "Hosts · restic-manager");
    assert_eq!(b.text("[data-testid=tile-total] span").await, "0");

    // Logging out ends the session: the dashboard asks for a login again.
    b.click("header form[action='/logout'] button").await;
    b.wait_css("#username").await;
    b.goto("/").await;
    b.wait_css("#username").await;
    assert!(b.location().await.starts_with("/login"));
    b.close().await;
}

#[tokio::test]
async fn dashboard_lists_hosts_filters_and_refreshes_status_without_reload() {
    let app = TestApp::spawn().await;
    let online_cfg = app.enrolled_host("web-1").await;
    let silent_cfg = app.enrolled_host("db-1").await;
    let agent = app.agent(&online_cfg, "v9.9.9");
    wait_acked(&agent).await;
    let (on, off) = (online_cfg.host_id, silent_cfg.host_id);

    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.wait_css("[data-testid=host-row]").await;

    // Both rows, with what a person reads in them.
    assert_eq!(b.row_ids().await, {
        let mut v = vec![on, off];
        v.sort();
        v
    });
    assert_eq!(b.row_name(on).await, "web-1");
    assert_eq!(b.row_name(off).await, "db-1");
    assert_eq!(b.row_cell(on, "agent-version").await, "v9.9.9");
    assert_eq!(
        b.row_cell(off, "agent-version").await,
        "never connected",
        "an enrolled host that never connected shows no agent version"
    );
    assert_eq!(b.row_status(on).await.as_deref(), Some("online"));
    assert_eq!(b.row_status(off).await.as_deref(), Some("offline"));
    assert_eq!(b.text("[data-testid=tile-total] span").await, "2");
    assert_eq!(b.text("[data-testid=tile-online] span").await, "1");
    assert_eq!(b.text("[data-testid=tile-offline] span").await, "1");

    // The stylesheet and htmx loaded, under the CSP.
    let bg = b
        .wait_css(".pill-online")
        .await
        .css_value("background-color")
        .await
        .expect("computed style");
    assert!(
        !bg.is_empty() && bg != "rgba(0, 0, 0, 0)" && bg != "transparent",
        "the .pill-online background is {bg:?}: app.css did not load or apply"
    );
    let htmx = b
        .js("return (window.htmx && window.htmx.version) || null")
        .await;
    assert!(
        htmx.as_str().is_some_and(|v| v.starts_with('2')),
        "htmx 2 is loaded: {htmx}"
    );
    b.screenshot("dashboard.png").await;

    // The Online filter shows only the online host.
    b.click("[data-testid=status-filter] a[href='/?status=online']")
        .await;
    b.wait_css("[data-testid=status-filter] a[aria-current=page][href='/?status=online']")
        .await;
    assert_eq!(b.location().await, "/?status=online");
    assert_eq!(b.row_ids().await, vec![on]);
    assert_eq!(b.text("[data-testid=page-range]").await, "1–1 of 1");

    // Back to all hosts; mark the document so a full reload would show.
    b.click("[data-testid=status-filter] a[href='/']").await;
    b.wait_css("[data-testid=status-filter] a[aria-current=page][href='/']")
        .await;
    assert_eq!(b.row_ids().await.len(), 2);
    b.js("window.__rmNoReload = 'still here'; return null")
        .await;

    agent.shutdown().await;
    eventually("the server sees the agent gone", || async {
        (app.host_json(on).await["online"] == false).then_some(())
    })
    .await;

    let deadline = Instant::now() + REFRESH_WAIT;
    loop {
        if b.row_status(on).await.as_deref() == Some("offline") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the web-1 row still says {:?} {REFRESH_WAIT:?} after its agent stopped: \
             the htmx refresh did not run; {}",
            b.row_status(on).await,
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        b.js("return window.__rmNoReload || null").await,
        json!("still here"),
        "the row changed by a full page reload, not by the htmx swap"
    );
    assert_eq!(b.location().await, "/");
    assert_eq!(b.row_status(off).await.as_deref(), Some("offline"));

    // Nothing was blocked by the CSP, and the check itself works: an inline
    // style is refused and reported.
    let violations = b.csp_violations().await;
    assert!(
        violations.is_empty(),
        "CSP violations on the dashboard: {violations:?}"
    );
    b.js("const s = document.createElement('style'); s.textContent = 'body{}'; document.head.appendChild(s); return null")
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = b.csp_violations().await;
        if v.iter().any(|v| v.starts_with("style-src")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an inline <style> was not reported as a CSP violation: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A session ended on the server (logout elsewhere, expiry): the next
    // refresh gets 401 + HX-Redirect and the page goes to the login form.
    let cookie =
        b.c.get_named_cookie("rm_session")
            .await
            .expect("the session cookie");
    restic_manager::store::sessions::delete(app.db(), cookie.value())
        .await
        .expect("ending the session");
    let deadline = Instant::now() + REFRESH_WAIT;
    while !b.location().await.starts_with("/login") {
        assert!(
            Instant::now() < deadline,
            "the dashboard did not send an ended session to the login page; {}",
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.wait_css("#username").await;
    assert_eq!(b.location().await, "/login?next=%2F");
    b.close().await;
}

#[tokio::test]
async fn viewer_sees_no_admin_navigation_and_gets_a_readable_403() {
    let app = TestApp::spawn().await;
    restic_manager::provisioning::user_save(
        app.db(),
        "vera",
        Role::Viewer,
        "viewer-password-1",
        app.clock.now_ms(),
    )
    .await
    .expect("creating the viewer");

    let b = Browser::open(&app).await;
    b.login("vera", "viewer-password-1").await;
    assert_eq!(b.text("[data-testid=whoami]").await, "vera · viewer");
    let nav = b.nav_labels().await;
    assert!(nav.iter().any(|l| l == "Hosts"), "nav: {nav:?}");
    for hidden in ["Add host", "Users", "Audit"] {
        assert!(
            !nav.iter().any(|l| l == hidden),
            "a viewer must not see {hidden:?} in the nav: {nav:?}"
        );
    }
    assert_eq!(
        b.c.find_all(Locator::Css("a[href='/hosts/new']"))
            .await
            .expect("find")
            .len(),
        0
    );

    for path in ["/settings/users", "/hosts/new"] {
        b.goto(path).await;
        let heading = b.text("h1").await;
        assert_eq!(heading, "403 · Forbidden", "{path}: {}", b.describe().await);
        let msg = b.text("[data-testid=error-message]").await;
        assert!(
            msg.contains("your role does not allow this"),
            "{path}: {msg:?}"
        );
        assert!(
            b.c.find_all(Locator::Css("table"))
                .await
                .expect("find")
                .is_empty(),
            "{path} leaks the page"
        );
        // The error page is styled too.
        let card = b
            .wait_css(".card")
            .await
            .css_value("background-color")
            .await
            .expect("style");
        assert_ne!(
            card, "rgba(0, 0, 0, 0)",
            "{path}: the error page has no CSS"
        );
        b.click("a[href='/']").await;
        b.wait_css("[data-testid=whoami]").await;
    }
    b.close().await;
}

#[tokio::test]
async fn admin_adds_a_host_and_gets_a_working_install_command() {
    let app = TestApp::spawn().await;
    let b = Browser::open(&app).await;
    // Following a link to the form while logged out comes back to it.
    b.goto("/hosts/new").await;
    b.wait_css("#username").await;
    assert_eq!(b.location().await, "/login?next=%2Fhosts%2Fnew");
    b.submit_login("admin", ADMIN_PASSWORD).await;
    b.wait_css("#name").await;
    assert_eq!(b.location().await, "/hosts/new");
    let active = b.text("header nav a.bg-slate-700").await;
    assert_eq!(active, "Add host", "the nav marks the current page");

    b.fill("#name", "web-7").await;
    b.click("form[action='/hosts/new'] button[type=submit]")
        .await;

    let install = b.text("[data-testid=install-command]").await;
    assert!(install.contains("/agent/install.sh"), "{install}");
    assert!(
        install.contains(&format!("{}/agent/install.sh", app.url)),
        "the server's own URL: {install}"
    );
    assert!(install.contains("--token "), "{install}");
    assert!(b.text("h1").await.contains("web-7"));
    let token = install
        .split("--token ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a token after --token")
        .to_string();

    // The host exists, and the token shown is the one that enrolls it.
    let hosts: Value = app
        .admin()
        .await
        .get(app.at("/api/hosts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "web-7"))
        .and_then(|h| h["id"].as_i64())
        .unwrap_or_else(|| panic!("web-7 not in /api/hosts: {hosts}"));
    let cfg = agent::enroll::enroll(&app.url, &token, "web-7")
        .await
        .expect("the shown token enrolls the host");
    assert_eq!(cfg.host_id, id);

    b.click(&format!("a[href='/hosts/{id}']")).await;
    assert_eq!(b.text("[data-testid=host-name]").await, "web-7");
    b.close().await;
}

#[tokio::test]
async fn a_viewer_watches_a_job_log_grow_live_and_sees_it_finish() {
    use agent::wire::{FinishedStatus, JobFinished, JobStarted};
    let app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = app.agent(&cfg, "v1");
    wait_acked(&agent).await;
    let id = common::sim::new_job(&app, cfg.host_id).await;
    let s = agent.sender();
    s.send_message(&JobStarted {
        job_id: id,
        kind: None,
    })
    .await
    .unwrap();
    s.send_message(&common::sim::log_line(id, 1, "before the page opened"))
        .await
        .unwrap();
    restic_manager::provisioning::user_save(
        app.db(),
        "vera",
        Role::Viewer,
        "viewer-password-1",
        app.clock.now_ms(),
    )
    .await
    .unwrap();

    let b = Browser::open(&app).await;
    b.login("vera", "viewer-password-1").await;
    b.goto(&format!("/jobs/{id}")).await;
    b.wait_css(".log-line").await;
    b.js("window.__noReload = true; return null").await;
    assert_eq!(
        b.text("#job-summary [data-testid=job-status]").await,
        "running"
    );

    for i in 2..=4 {
        s.send_message(&common::sim::log_line(id, i, &format!("live line {i}")))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let lines = b.texts("#job-log .log-line").await;
        if lines.len() == 4 && lines[3].ends_with("live line 4") {
            assert!(lines[0].ends_with("before the page opened"), "{lines:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "live lines did not appear: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.send_message(&JobFinished {
        job_id: id,
        status: FinishedStatus::Failed,
        error: Some("repository locked".into()),
        exit_code: Some(1),
        warning: false,
        error_kind: None,
        result: None,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + UI_WAIT;
    while b.texts("#job-summary [data-testid=job-status]").await != ["failed"] {
        assert!(
            Instant::now() < deadline,
            "the status badge did not change: {}",
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.text("[data-testid=job-error]").await, "repository locked");
    assert_eq!(
        b.js("return window.__noReload === true").await,
        Value::Bool(true),
        "no reload happened"
    );
    b.close().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn admin_sees_the_out_of_date_chip_tile_and_update_button_and_a_viewer_no_button() {
    let app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;
    let agent = app.agent(&cfg, "v0.0.1-old");
    wait_acked(&agent).await;
    common::sim::stage_binary(&app, restic_manager::version::VERSION).await;

    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    let chip = b
        .text(&format!(
            "tr[data-host-id='{}'] [data-testid=update-chip]",
            cfg.host_id
        ))
        .await;
    assert_eq!(
        chip,
        format!(
            "out of date · v0.0.1-old → {}",
            restic_manager::version::VERSION
        )
    );
    let tile = b.text("[data-testid=hosts-behind-tile]").await;
    assert!(tile.contains("1") && tile.contains("host behind"), "{tile}");
    b.screenshot("out-of-date-host.png").await;
    b.click("[data-testid=hosts-behind-tile]").await;
    b.wait_css("[data-testid=behind-filter]").await;
    assert_eq!(b.location().await, "/?updates=behind");

    b.goto(&format!("/hosts/{}", cfg.host_id)).await;
    assert!(
        b.text("[data-testid=update-chip]")
            .await
            .starts_with("out of date")
    );
    assert_eq!(
        b.attr("[data-testid=update-agent]", "disabled").await,
        None,
        "enabled for an online, out-of-date host"
    );
    // A refusal (the agent went away since the page was drawn) shows as a
    // banner in the page's error slot, the page staying as it was.
    agent.shutdown().await;
    eventually("the host is offline", || async {
        (!app.host_row(cfg.host_id).await?.online).then_some(())
    })
    .await;
    b.click("[data-testid=update-agent]").await;
    let banner = b.text("#page-error [data-testid=error-banner]").await;
    assert!(banner.contains("offline"), "{banner}");
    assert!(b.location().await.starts_with("/hosts/"));
    let agent = app.agent(&cfg, "v0.0.1-old");
    wait_acked(&agent).await;
    // Clicking dispatches and htmx takes the admin to the live job page.
    b.click("[data-testid=update-agent]").await;
    let deadline = Instant::now() + UI_WAIT;
    while !b.location().await.starts_with("/jobs/") {
        assert!(
            Instant::now() < deadline,
            "not redirected to the job: {}",
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_css("#job-log").await;
    assert!(b.describe().await.contains("update"));
    b.close().await;

    restic_manager::provisioning::user_save(
        app.db(),
        "vera",
        Role::Viewer,
        "viewer-password-1",
        app.clock.now_ms(),
    )
    .await
    .unwrap();
    let v = Browser::open(&app).await;
    v.login("vera", "viewer-password-1").await;
    v.goto(&format!("/hosts/{}", cfg.host_id)).await;
    v.wait_css("[data-testid=update-chip]").await;
    assert!(
        v.texts("[data-testid=update-agent]").await.is_empty(),
        "viewers get no Update button"
    );
    v.close().await;
    agent.shutdown().await;
}

async fn fleet_app(plans: &[common::sim::Plan]) -> (TestApp, Vec<common::sim::Sim>) {
    let app = TestApp::spawn_with(|s| s.update_min_healthy = Duration::ZERO).await;
    common::sim::stage_binary(&app, restic_manager::version::VERSION).await;
    let mut sims = vec![];
    for (i, p) in plans.iter().enumerate() {
        let cfg = app.enrolled_host(&format!("node-{}", i + 1)).await;
        let id = cfg.host_id;
        sims.push(common::sim::simulate(cfg, "v0.0.9", *p));
        eventually("host online", || async {
            (app.host_json(id).await["online"] == true).then_some(())
        })
        .await;
    }
    (app, sims)
}

/// Waits until `css`'s text satisfies `ok`, reading again after each htmx swap.
async fn wait_text(
    b: &Browser,
    css: &str,
    wait: Duration,
    ok: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let t = b.texts(css).await;
        if ok(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never matched, last {t:?}; {}",
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn fleet_page_idle_refuses_a_wrong_count_and_follows_the_run_live() {
    use common::sim::Plan;
    let (app, sims) = fleet_app(&[Plan::Hold, Plan::Update, Plan::Update]).await;
    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;

    // The dashboard tile leads to the behind filter, which links here.
    b.click("[data-testid=hosts-behind-tile]").await;
    b.click("[data-testid=behind-filter] a[href='/settings/fleet-update']")
        .await;
    b.wait_css("[data-testid=fleet-idle]").await;
    assert_eq!(b.texts("[data-testid=fleet-candidate]").await.len(), 3);
    let idle = b.text("[data-testid=fleet-idle]").await;
    assert!(
        idle.contains("one host at a time") && idle.contains("halts on the first failure"),
        "{idle}"
    );
    b.screenshot("fleet-idle.png").await;

    // A wrong count is refused by the server (the browser would let it through).
    b.fill("#confirm_count", "4").await;
    b.click("[data-testid=fleet-start]").await;
    let banner = b.text("[data-testid=error-banner]").await;
    assert!(banner.contains("type 3"), "{banner}");
    assert!(
        b.texts("[data-testid=fleet-run]").await.is_empty(),
        "nothing started"
    );

    b.fill("#confirm_count", "3").await;
    b.click("[data-testid=fleet-start]").await;
    wait_text(&b, "[data-testid=fleet-host-status]", UI_WAIT, |t| {
        t.first().is_some_and(|s| s == "running")
    })
    .await;
    b.js("window.__noReload = true; return null").await;
    b.screenshot("fleet-running.png").await;
    // Every page shows the running run.
    assert!(
        b.text("[data-testid=fleet-banner]")
            .await
            .contains("is running")
    );

    sims[0].plan.send(Plan::Update).unwrap();
    let done = wait_text(
        &b,
        "[data-testid=fleet-host-status]",
        Duration::from_secs(30),
        |t| t.len() == 3 && t.iter().all(|s| s == "succeeded"),
    )
    .await;
    assert_eq!(done.len(), 3);
    wait_text(&b, "#fleet-live [data-testid=fleet-status]", UI_WAIT, |t| {
        t == ["completed"]
    })
    .await;
    assert_eq!(
        b.js("return window.__noReload === true").await,
        Value::Bool(true),
        "updated without a reload"
    );
    b.close().await;
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn fleet_page_shows_a_halted_run_and_why() {
    use common::sim::Plan;
    let (app, sims) = fleet_app(&[Plan::Update, Plan::Fail, Plan::Update]).await;
    let r = app
        .admin()
        .await
        .post(app.at("/api/fleet/update"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["fleet_update_id"]
        .as_i64()
        .unwrap();
    eventually("halted", || async {
        let r: Value = app
            .admin()
            .await
            .get(app.at(&format!("/api/fleet-updates/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (r["fleet_update"]["status"] == "halted").then_some(())
    })
    .await;
    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.goto("/settings/fleet-update").await;
    let reason = b.text("[data-testid=fleet-halted-reason]").await;
    assert!(reason.contains("checksum mismatch"), "{reason}");
    assert_eq!(
        b.texts("[data-testid=fleet-host-status]").await,
        ["succeeded", "failed", "pending"]
    );
    assert!(
        b.texts("[data-testid=fleet-banner]").await.is_empty(),
        "no banner once halted"
    );
    b.screenshot("fleet-halted.png").await;
    b.close().await;
    for s in sims {
        s.task.abort();
    }
}

#[tokio::test]
async fn admin_adds_a_repository_whose_secrets_never_come_back_and_runs_a_job() {
    let app = TestApp::spawn().await;
    let (host_id, _) = app.add_host_direct("web-1").await;
    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.click("header nav a[href='/repositories']").await;
    assert_eq!(b.text("h1").await, "Repositories");
    b.fill("#name", "offsite").await;
    b.fill("#url", "rest:http://backup:url-secret-81@127.0.0.1:9/fleet")
        .await;
    b.fill("#password", "repo-secret-82").await;
    b.fill(
        "[data-testid=env-rows] input[name=env_key]",
        "AWS_SECRET_ACCESS_KEY",
    )
    .await;
    b.fill(
        "[data-testid=env-rows] input[name=env_value]",
        "env-secret-83",
    )
    .await;
    b.click("[data-testid=repo-create-form] button[type=submit]")
        .await;

    assert_eq!(b.text("[data-testid=repo-name]").await, "offsite");
    assert_eq!(
        b.text("[data-testid=repo-url]").await,
        "rest:http://backup:***@127.0.0.1:9/fleet"
    );
    assert_eq!(b.text("[data-testid=repo-kind]").await, "shared");
    assert_eq!(b.text("[data-testid=password-state]").await, "set");
    let html = b.c.source().await.expect("page source");
    for secret in ["url-secret-81", "repo-secret-82", "env-secret-83"] {
        assert!(!html.contains(secret), "the page shows {secret}");
    }
    // The edit form offers the variable's name, never its value.
    let names = b
        .js("return [...document.querySelectorAll('[data-testid=repo-edit-form] input[name=env_key]')].map(e => e.value)")
        .await;
    assert_eq!(names[0], "AWS_SECRET_ACCESS_KEY");

    // A job on an offline host waits queued; its page can cancel it.
    b.js(&format!(
        "document.querySelector('#host_id').value = '{host_id}'; return true"
    ))
    .await;
    b.js("document.querySelector('#kind').value = 'check'; return true")
        .await;
    b.click("[data-testid=repo-run-job]").await;
    b.wait_css("[data-testid=job-cancel]").await;
    assert!(
        b.location().await.starts_with("/jobs/"),
        "{}",
        b.describe().await
    );
    assert_eq!(b.text("[data-testid=job-status]").await, "queued");
    b.click("[data-testid=job-cancel]").await;
    wait_text(&b, "[data-testid=job-status]", UI_WAIT, |t| {
        t.first().is_some_and(|s| s == "cancelled")
    })
    .await;
    let violations = b.csp_violations().await;
    assert!(violations.is_empty(), "{violations:?}");
    b.close().await;
}

/// A job through the admin API, once it ended.
async fn finished_job(app: &TestApp, admin: &reqwest::Client, id: i64) -> Value {
    eventually_within(
        Duration::from_secs(120),
        &format!("job {id} ends"),
        || async {
            let j: Value = admin
                .get(app.at(&restic_manager::routes::api_job(id)))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (!matches!(j["status"].as_str(), Some("queued" | "running"))).then_some(j)
        },
    )
    .await
}

/// Every regular file below `root` (relative path → sha256).
fn tree_hashes(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest;
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(
                    rel,
                    hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The restore flow as an admin does it on the host page: pick the
/// snapshot, open folders down to a name with a space and one with
/// non-ASCII letters, tick two of them, ask for an in-place restore and be
/// refused a wrong typed name (nothing queued), then restore into a new
/// directory and land on the job page, which goes live to its result. The
/// restored files match the source byte for byte.
#[tokio::test]
async fn restore_flow_browses_ticks_confirms_and_lands_on_the_live_job() {
    use agent::restic::{ResticHandler, ResticSettings};
    use restic_manager::{
        restic::jobs::{Requester, enqueue},
        routes,
        store::{self, jobs::ActorKind, jobs::JobKind},
    };
    let restic = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("restic"))
                .find(|p| p.is_file())
        })
        .expect("restic is not installed: this test needs it (apt-get install restic)");
    let lab = tempfile::tempdir().unwrap();
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let cfg = app.enrolled_host("web-1").await;
    let host = cfg.host_id;
    let mut opts = common::sim::agent_options(&cfg, "v-restic");
    std::fs::create_dir_all(lab.path().join("secrets")).unwrap();
    opts.handler = std::sync::Arc::new(ResticHandler::new(ResticSettings {
        restic_path: restic,
        cache_dir: lab.path().join("cache"),
        cancel_grace: Duration::from_secs(5),
        secrets_dir: Some(lab.path().join("secrets")),
    }));
    let agent = agent::client::spawn(cfg.clone(), opts);
    wait_acked(&agent).await;
    eventually("restic version reported", || async {
        app.host_json(host).await["restic_version"]
            .as_str()
            .map(|_| ())
    })
    .await;

    // A local repository with one backup of a small tree.
    let data = lab.path().join("data");
    std::fs::create_dir_all(data.join("sub dir/ünï")).unwrap();
    std::fs::write(data.join("hello.txt"), b"hello restic\n").unwrap();
    std::fs::write(data.join("sub dir/with space.txt"), b"spaced out\n").unwrap();
    std::fs::write(data.join("sub dir/ünï/naïve.bin"), [7u8; 4096]).unwrap();
    let r = admin
        .post(app.at(routes::API_REPOSITORIES))
        .json(&json!({"name": "local", "url": lab.path().join("repo"), "password": "pw-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let repo_id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = admin
        .post(app.at(&routes::api_repository_jobs(repo_id)))
        .json(&json!({"kind": "init", "host_id": host}))
        .send()
        .await
        .unwrap();
    let init = r.json::<Value>().await.unwrap()["job_ids"][0]
        .as_i64()
        .unwrap();
    assert_eq!(
        finished_job(&app, &admin, init).await["status"],
        "succeeded"
    );
    let repo = store::repositories::get(app.db(), repo_id).await.unwrap();
    let who = Requester {
        kind: ActorKind::User,
        id: None,
        name: "test".into(),
    };
    let options = agent::wire::ResticOptions {
        paths: vec![data.display().to_string()],
        host: Some("web-1".into()),
        ..Default::default()
    };
    let b = enqueue(
        app.state(),
        &who,
        &repo,
        host,
        JobKind::Backup,
        None,
        &options,
    )
    .await
    .unwrap();
    let j = finished_job(&app, &admin, b.id).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let snap = j["result"]["snapshot_id"].as_str().unwrap().to_string();

    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.goto(&routes::host(host)).await;
    assert!(
        b.text("[data-testid=host-snapshot-row]")
            .await
            .contains(&snap[..8])
    );
    b.click("[data-testid=restore-snapshot]").await;
    b.wait_css("[data-testid=restore-panel] [data-testid=browse-list]")
        .await;
    assert_eq!(
        b.attr("[data-testid=restore-target]", "value").await,
        Some(format!("/var/tmp/restore-{}", &snap[..8]))
    );
    // Down the folders to the data, one htmx listing each.
    let mut sel = String::from("[data-testid=browser]");
    let components: Vec<String> = data
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .chain(["sub dir".to_string(), "ünï".to_string()])
        .collect();
    for name in &components {
        let entry = format!("{sel} [data-testid=browse-entry][data-name=\"{name}\"]");
        b.click(&format!("{entry} > [data-testid=open-dir]")).await;
        sel = format!("{entry} > .browse-children");
        b.wait_css(&format!("{sel} [data-testid=browse-list]"))
            .await;
    }
    // Inside "ünï": one file; its parent "sub dir" has the spaced file.
    let inner = b.texts(&format!("{sel} [data-testid=browse-entry]")).await;
    assert_eq!(inner.len(), 1, "{inner:?}");
    assert!(inner[0].contains("naïve.bin"), "{inner:?}");
    let sub = "[data-testid=browse-entry][data-name=\"sub dir\"] > .browse-children";
    let listed = b
        .texts(&format!("{sub} > ul > [data-testid=browse-entry]"))
        .await;
    assert_eq!(listed.len(), 2, "one level only: {listed:?}");
    b.click(&format!(
        "{sub} [data-testid=browse-entry][data-name=\"with space.txt\"] > input"
    ))
    .await;
    b.click(&format!(
        "{sel} [data-testid=browse-entry][data-name=\"naïve.bin\"] > input"
    ))
    .await;
    b.js("document.querySelector('[data-testid=restore-panel]').scrollIntoView(); return null")
        .await;
    b.screenshot("restore-browse.png").await;

    // In place: the review asks for the host's name; a wrong one is refused.
    b.click("[data-testid=restore-in-place]").await;
    b.click("[data-testid=restore-review]").await;
    b.wait_css("[data-testid=restore-confirm] [data-testid=confirm-name]")
        .await;
    assert!(
        b.text("[data-testid=confirm-paths]")
            .await
            .contains("2 selected")
    );
    b.fill("[data-testid=confirm-name]", "web-1").await;
    b.screenshot("restore-confirm.png").await;
    b.fill("[data-testid=confirm-name]", "web-2").await;
    b.click("[data-testid=confirm-restore]").await;
    assert!(
        b.text("#restore-confirm-result [data-testid=error-banner]")
            .await
            .contains("web-1")
    );
    let restores = || async {
        app.query_one("SELECT CAST(COUNT(*) AS TEXT) FROM jobs WHERE kind = 'restore'")
            .await
    };
    assert_eq!(restores().await.as_deref(), Some("0"));

    // Into a new directory instead: review, confirm, the job page.
    let target = lab.path().join("restored");
    b.click("[data-testid=restore-in-place]").await;
    b.fill("[data-testid=restore-target]", target.to_str().unwrap())
        .await;
    b.click("[data-testid=restore-review]").await;
    let deadline = Instant::now() + UI_WAIT;
    let into = target.to_str().unwrap();
    while !b.text("[data-testid=confirm-target]").await.contains(into) {
        assert!(Instant::now() < deadline, "{}", b.describe().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.c.find(Locator::Css("[data-testid=confirm-name]"))
            .await
            .is_err()
    );
    b.click("[data-testid=confirm-restore]").await;
    let deadline = Instant::now() + UI_WAIT;
    while !b.location().await.starts_with("/jobs/") {
        assert!(Instant::now() < deadline, "{}", b.describe().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job_id: i64 = b.location().await["/jobs/".len()..].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.texts("#job-summary [data-testid=job-status]").await != ["succeeded"] {
        assert!(Instant::now() < deadline, "{}", b.describe().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = b.text("[data-testid=job-result]").await;
    assert!(result.starts_with("2 files"), "{result}");
    let j = finished_job(&app, &admin, job_id).await;
    assert_eq!(j["kind"], "restore");
    assert_eq!(j["result"]["files_restored"], 2);
    let source: std::collections::BTreeMap<_, _> = tree_hashes(&data)
        .into_iter()
        .filter(|(k, _)| k.starts_with("sub dir/"))
        .collect();
    assert_eq!(
        tree_hashes(&target.join(data.strip_prefix("/").unwrap())),
        source
    );
    b.close().await;
    agent.shutdown().await;
}

/// An in-process agent running real restic, for the backup pages.
fn restic_agent(cfg: &agent::config::AgentConfig, dir: &Path) -> agent::client::AgentHandle {
    use agent::restic::{ResticHandler, ResticSettings};
    let restic = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("restic"))
                .find(|p| p.is_file())
        })
        .expect("restic is not installed (apt-get install restic)");
    let mut opts = common::sim::agent_options(cfg, "v-restic");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    opts.handler = std::sync::Arc::new(ResticHandler::new(ResticSettings {
        restic_path: restic,
        cache_dir: dir.join("cache"),
        cancel_grace: Duration::from_secs(5),
        secrets_dir: Some(dir.join("secrets")),
    }));
    agent::client::spawn(cfg.clone(), opts)
}

/// `mb` MiB of incompressible bytes (a backup that takes a few seconds).
fn big_file(path: &Path, mb: usize) {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut block = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..mb {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
    }
}

#[tokio::test]
async fn admin_creates_a_plan_through_the_form_and_watches_a_backup_progress() {
    let app = TestApp::spawn().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = app.enrolled_host("web-1").await;
    let agent = restic_agent(&cfg, &work.path().join("agent"));
    wait_acked(&agent).await;
    let admin = app.admin().await;
    let repo_path = work.path().join("repo");
    let r = admin
        .post(app.at(restic_manager::routes::API_REPOSITORIES))
        .json(&json!({"name": "local", "url": repo_path, "password": "pw-browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let repo = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = admin
        .post(app.at(&restic_manager::routes::api_repository_jobs(repo)))
        .json(&json!({"kind": "init", "host_id": cfg.host_id}))
        .send()
        .await
        .unwrap();
    let init = r.json::<Value>().await.unwrap()["job_ids"][0]
        .as_i64()
        .unwrap();
    assert_eq!(app.wait_job(init, "succeeded").await["status"], "succeeded");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    big_file(&data.join("big.bin"), 300);

    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.goto("/plans").await;
    assert!(b.nav_labels().await.contains(&"Plans".to_string()));
    b.fill("#name", "nightly").await;
    b.fill("#paths", &format!("{}\n", data.display())).await;
    b.fill("#excludes", "*.tmp").await;
    b.fill("#schedule", "30 2 * * *").await;
    // The preview follows what is typed.
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let runs = b.texts("[data-testid=preview-run]").await;
        if runs.len() == 5 && runs.iter().all(|r| r.contains("02:30:00")) {
            break;
        }
        assert!(Instant::now() < deadline, "preview: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.fill("#schedule", "nonsense").await;
    let deadline = Instant::now() + UI_WAIT;
    while b.texts("[data-testid=preview-error]").await.is_empty() {
        assert!(Instant::now() < deadline, "no preview error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.fill("#schedule", "30 2 * * *").await;
    b.fill("#keep_daily", "7").await;
    b.click(&format!("input[name=hosts][value='{}']", cfg.host_id))
        .await;
    b.click("[data-testid=plan-create]").await;
    b.wait_css("[data-testid=covered-row]").await;
    assert_eq!(b.text("[data-testid=plan-name]").await, "nightly");
    assert!(b.text("[data-testid=covered-row]").await.contains("web-1"));
    b.screenshot("plan.png").await;

    b.click("[data-testid=covered-row] [data-testid=backup-now]")
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<String> = Vec::new();
    let mut shot = false;
    loop {
        let texts = b.texts("[data-testid=job-progress-text]").await;
        if let Some(t) = texts.first()
            && seen.last() != Some(t)
        {
            seen.push(t.clone());
            if !shot && seen.len() >= 2 {
                b.screenshot("backup-progress.png").await;
                shot = true;
            }
        }
        let status = b.texts("#job-summary [data-testid=job-status]").await;
        if status == ["succeeded"] {
            break;
        }
        assert!(
            Instant::now() < deadline && status != ["failed"],
            "backup did not finish: {status:?} {}",
            b.describe().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 2, "the progress bar did not move: {seen:?}");
    b.close().await;
    agent.shutdown().await;
}

/// Never falls due in a test (29 February): moving the clock a day starts
/// no scheduled backup or maintenance.
const NEVER_SOON: &str = "0 3 29 2 *";

async fn post_json(app: &TestApp, c: &reqwest::Client, path: &str, body: Value) -> Value {
    let r = c.post(app.at(path)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test]
async fn dashboard_health_tiles_count_failing_stale_and_unprotected_hosts_and_filter_the_list() {
    use restic_manager::routes;
    let app = TestApp::spawn_with(|s| {
        // The clock moves a day ahead; the admin's API session outlives it.
        s.session_idle = Duration::from_secs(3 * 86_400);
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let good_cfg = app.enrolled_host("web-1").await;
    let bad_cfg = app.enrolled_host("web-2").await;
    let good_agent = restic_agent(&good_cfg, &work.path().join("a1"));
    let bad_agent = restic_agent(&bad_cfg, &work.path().join("a2"));
    wait_acked(&good_agent).await;
    wait_acked(&bad_agent).await;
    let (good, bad) = (good_cfg.host_id, bad_cfg.host_id);
    let (quiet, _) = app.add_host_direct("db-1").await;
    let (bare1, _) = app.add_host_direct("db-2").await;
    let (bare2, _) = app.add_host_direct("mail-1").await;
    let admin = app.admin().await;
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), b"health\n").unwrap();
    let mut repos = Vec::new();
    for name in ["good", "bad"] {
        let r = post_json(
            &app,
            &admin,
            routes::API_REPOSITORIES,
            json!({"name": name, "url": work.path().join(name), "password": "pw",
                   "maintenance_schedule": NEVER_SOON}),
        )
        .await;
        repos.push(r["id"].as_i64().unwrap());
    }
    let mut plans = Vec::new();
    for (name, repo, hosts) in [
        ("web", repos[0], vec![good]),
        ("web-legacy", repos[1], vec![bad]),
        ("db", repos[1], vec![quiet]),
    ] {
        let p = post_json(
            &app,
            &admin,
            routes::API_PLANS,
            json!({"name": name, "repository_id": repo, "paths": [data], "schedule": NEVER_SOON,
                   "hosts": hosts}),
        )
        .await;
        plans.push(p["id"].as_i64().unwrap());
    }
    let state = |id: i64| {
        let (app, admin) = (&app, &admin);
        async move {
            let r = admin
                .get(app.at(&routes::api_host(id)))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["backup_state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    eventually("the plans cover their hosts", || async {
        (state(quiet).await == "pending").then_some(())
    })
    .await;
    // A day and more later: db-1 never had a success (stale); web-1 backs
    // up fine (ok); web-2's repository was never initialised (failing).
    app.clock.advance(Duration::from_secs(27 * 3600));
    let init = post_json(
        &app,
        &admin,
        &routes::api_repository_jobs(repos[0]),
        json!({"kind": "init", "host_id": good}),
    )
    .await["job_ids"][0]
        .as_i64()
        .unwrap();
    app.wait_job(init, "succeeded").await;
    for (plan, host, want) in [(plans[0], good, "succeeded"), (plans[1], bad, "failed")] {
        let j = post_json(
            &app,
            &admin,
            &routes::api_plan_run(plan),
            json!({"host_id": host}),
        )
        .await["job_ids"][0]
            .as_i64()
            .unwrap();
        app.wait_job(j, want).await;
    }
    for (host, want) in [(good, "ok"), (bad, "failing"), (quiet, "stale")] {
        eventually(&format!("host {host} is {want}"), || async {
            (state(host).await == want).then_some(())
        })
        .await;
    }

    let b = Browser::open(&app).await;
    b.login("admin", ADMIN_PASSWORD).await;
    b.wait_css("[data-testid=tile-backup-failing]").await;
    assert_eq!(b.row_ids().await.len(), 5);
    assert_eq!(
        b.text("[data-testid=tile-backup-failing] .tile-value")
            .await,
        "1"
    );
    assert_eq!(
        b.text("[data-testid=tile-backup-stale] .tile-value").await,
        "1"
    );
    assert_eq!(
        b.text("[data-testid=tile-backup-unprotected] .tile-value")
            .await,
        "2"
    );
    assert!(b.row_cell(good, "last-backup").await.contains("succeeded"));
    assert!(b.row_cell(bad, "last-backup").await.contains("failed"));
    assert_eq!(b.row_cell(quiet, "last-backup").await, "never");
    assert!(b.row_cell(good, "next-backup").await.starts_with("in "));
    assert_eq!(b.row_cell(bare1, "next-backup").await, "—");
    // The failing tile is red (app.css carries it).
    let bg = b
        .wait_css("[data-testid=tile-backup-failing]")
        .await
        .css_value("background-color")
        .await
        .expect("computed style");
    assert_eq!(bg, "rgba(254, 242, 242, 1)", "tile-red did not apply");
    b.screenshot("health-tiles.png").await;

    for (tile, want) in [
        ("failing", vec![bad]),
        ("stale", vec![quiet]),
        ("unprotected", {
            let mut v = vec![bare1, bare2];
            v.sort();
            v
        }),
    ] {
        b.goto("/").await;
        b.click(&format!("[data-testid=tile-backup-{tile}]")).await;
        b.wait_css("[data-testid=backup-filter]").await;
        assert_eq!(b.location().await, format!("/?backup={tile}"));
        assert_eq!(b.row_ids().await, want, "tile {tile}");
        assert!(b.text("[data-testid=backup-filter]").await.contains(tile));
        for id in want {
            assert_eq!(b.row_cell(id, "backup-state").await, tile);
        }
    }
    // "Show all hosts" clears the filter.
    b.click("[data-testid=backup-filter] a").await;
    b.wait_css("[data-testid=tile-backup-failing]").await;
    assert_eq!(b.location().await, "/");
    assert_eq!(b.row_ids().await.len(), 5);
    assert!(b.csp_violations().await.is_empty());
    b.close().await;
    good_agent.shutdown().await;
    bad_agent.shutdown().await;
}
