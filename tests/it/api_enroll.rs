//! Adding hosts and enrolling agents: `POST /api/hosts` and its CLI twin,
//! the one-time token's rules, secrets stored only as hashes, the agent
//! binary download (credentials, integrity headers, platform allow-list),
//! and the install script run for real against the real agent binary.
use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use crate::common::*;
use agent::enroll::{EnrollError, enroll};
use restic_manager::{agent_binaries, routes};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn refused(e: EnrollError) -> (u16, String) {
    match e {
        EnrollError::Refused { status, code, .. } => (status, code),
        other => panic!("expected the server to refuse, got {other:?}"),
    }
}

async fn create_host(app: &TestApp, admin: &reqwest::Client, name: &str) -> reqwest::Response {
    admin
        .post(app.at(routes::API_HOSTS))
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
}

// ---- Adding hosts ----------------------------------------------------------

#[tokio::test]
async fn api_host_create_returns_an_id_and_a_one_time_token() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let r = create_host(&app, &admin, "web-1").await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_i64().expect("id");
    let token = body["enrollment_token"].as_str().expect("token");
    assert!(token.len() >= 32, "token too short: {token:?}");
    assert!(body["expires_at"].is_string(), "{body}");

    let h = app.host_json(id).await;
    assert_eq!(h["name"], "web-1");
    assert_eq!(h["enrolled"], false);
    assert_eq!(h["online"], false);
    assert_eq!(h["agent_version"], "");
    assert_eq!(h["update_available"], false, "no version yet: not behind");

    // The token is stored hashed only.
    let stored = app
        .query_one(&format!(
            "SELECT token_hash FROM enrollment_tokens WHERE host_id = {id}"
        ))
        .await
        .unwrap();
    assert_ne!(stored, token);
    assert!(!stored.contains(token));
}

#[tokio::test]
async fn cli_host_add_is_the_api_twin() {
    let app = TestApp::spawn().await;
    let run = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_restic-manager"))
            .args(["host", "add", name, "--data-dir"])
            .arg(&app.settings.data_dir)
            .args(["--database-url", &app.settings.database_url])
            .output()
            .expect("running restic-manager host add")
    };
    let out = run("cli-1");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .trim()
            .to_string()
    };
    let id: i64 = field("host_id").parse().unwrap();
    let token = field("enrollment_token");

    // The server sees it, and the token enrolls like one from the API.
    let listed: Value = app
        .admin()
        .await
        .get(app.at(routes::API_HOSTS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["name"], "cli-1");
    let cfg = enroll(&app.url, &token, "cli-1").await.expect("enroll");
    assert_eq!(cfg.host_id, id);

    // Same rules as the API.
    let dup = run("cli-1");
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let bad = run("bad name");
    assert!(!bad.status.success());
    assert_eq!(app.count("hosts").await, 1);
}

#[tokio::test]
async fn duplicate_and_invalid_host_names_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    assert_eq!(create_host(&app, &admin, "web-1").await.status(), 201);
    let before = app.snapshot().await;
    assert_error(create_host(&app, &admin, "web-1").await, 409, "host_exists").await;
    let long = "h".repeat(65);
    for bad in [
        "",
        "   ",
        "bad name",
        "../x",
        "a/b",
        "<script>",
        "web;rm",
        long.as_str(),
    ] {
        assert_error(create_host(&app, &admin, bad).await, 400, "invalid_name").await;
    }
    // The form answers with the reason on the add-host page.
    for (name, status, says) in [("web-1", 409, "already exists"), ("bad name", 400, "1–64")] {
        let page = Page::from(
            admin
                .post(app.at(routes::HOST_NEW))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string([("name", name)]).unwrap())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, status, "{name}: {}", page.text);
        assert!(
            page.one("[data-testid=error-banner]").contains(says),
            "{}",
            page.text
        );
        assert_eq!(page.attr("input#name", "value").as_deref(), Some(name));
    }
    assert_eq!(app.snapshot().await, before);
}

// ---- Enrollment ------------------------------------------------------------

#[tokio::test]
async fn enrollment_stores_only_hashes_of_the_token_and_the_secret() {
    let app = TestApp::spawn().await;
    let (id, token) = app.add_host("web-1").await;
    let cfg = enroll(&app.url, &token, "web-1").await.expect("enroll");
    assert_eq!(cfg.host_id, id);
    assert!(cfg.secret.len() >= 32);
    assert_ne!(cfg.secret, token);

    let secret_hash = app
        .query_one(&format!("SELECT secret_hash FROM hosts WHERE id = {id}"))
        .await
        .expect("a secret hash");
    assert_ne!(secret_hash, cfg.secret);
    assert!(!secret_hash.contains(&cfg.secret));
    let token_hash = app
        .query_one(&format!(
            "SELECT token_hash FROM enrollment_tokens WHERE host_id = {id}"
        ))
        .await
        .unwrap();
    assert_ne!(token_hash, token);
    assert!(!token_hash.contains(&token));

    // Not anywhere in the database files either (SQLite: file + WAL).
    if app.is_sqlite() {
        for entry in std::fs::read_dir(&app.settings.data_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                for (what, s) in [("secret", &cfg.secret), ("token", &token)] {
                    assert!(
                        !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                        "the {what} is in clear in {}",
                        path.display()
                    );
                }
            }
        }
    }

    let h = app.host_json(id).await;
    assert_eq!(h["enrolled"], true);
    assert!(!h.to_string().contains(&cfg.secret));
    // The secret works on the WebSocket.
    let agent = app.agent(&cfg, "v1");
    wait_acked(&agent).await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_used_token_is_refused_with_token_used() {
    let app = TestApp::spawn().await;
    let (_, token) = app.add_host("web-1").await;
    let first = enroll(&app.url, &token, "web-1").await.expect("enroll");
    let before = app.snapshot().await;
    let again = enroll(&app.url, &token, "web-1").await.unwrap_err();
    assert_eq!(refused(again), (401, "token_used".into()));
    assert_eq!(app.snapshot().await, before, "the secret was not replaced");
    let agent = app.agent(&first, "v1");
    wait_acked(&agent).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_with_one_token_have_exactly_one_winner() {
    let app = TestApp::spawn().await;
    // A few rounds: the race is between transactions, so give it chances.
    for round in 0..4 {
        let name = format!("web-{round}");
        let (id, token) = app.add_host(&name).await;
        let tries: Vec<_> = (0..8)
            .map(|_| {
                let (url, token, name) = (app.url.clone(), token.clone(), name.clone());
                tokio::spawn(async move { enroll(&url, &token, &name).await })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for t in tries {
            match t.await.unwrap() {
                Ok(cfg) => winners.push(cfg),
                Err(e) => losers.push(e.to_string()),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners; losers said: {losers:?}"
        );
        for l in &losers {
            assert!(
                l.contains("token_used") && l.contains("401"),
                "round {round}: a loser must hear token_used, got: {l}"
            );
        }
        // The winner's secret is the one stored.
        let agent = app.agent(&winners[0], "v1");
        wait_acked(&agent).await;
        agent.shutdown().await;
        assert_eq!(app.host_json(id).await["enrolled"], true);
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_invalid_token() {
    let app = TestApp::spawn().await;
    let (_, token) = app.add_host("web-1").await;
    let before = app.snapshot().await;
    let e = enroll(&app.url, &format!("{token}x"), "web-1")
        .await
        .unwrap_err();
    assert_eq!(refused(e), (401, "invalid_token".into()));
    let e = enroll(&app.url, "not-a-token", "web-1").await.unwrap_err();
    assert_eq!(refused(e), (401, "invalid_token".into()));
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn an_expired_token_is_refused_with_token_expired() {
    let app = TestApp::spawn().await;
    let (_, token) = app.add_host("web-1").await;
    app.clock.advance(Duration::from_secs(25 * 3600));
    let before = app.snapshot().await;
    let e = enroll(&app.url, &token, "web-1").await.unwrap_err();
    assert_eq!(refused(e), (401, "token_expired".into()));
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn a_new_token_re_enrolls_the_host_and_revokes_the_old_secret() {
    let app = TestApp::spawn().await;
    let (id, token) = app.add_host("web-1").await;
    let old = enroll(&app.url, &token, "web-1").await.unwrap();
    let old_agent = app.agent(&old, "v1");
    wait_acked(&old_agent).await;

    let r = app
        .admin()
        .await
        .post(app.at(&routes::api_host_token(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token2 = r.json::<Value>().await.unwrap()["enrollment_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(token2, token);
    let new = enroll(&app.url, &token2, "web-1").await.unwrap();
    assert_eq!(new.host_id, id);
    assert_ne!(new.secret, old.secret);

    // The old agent is cut off and cannot come back with the old secret.
    let s = old_agent
        .wait_for(WAIT, |s| {
            s.last_error.as_deref() == Some(agent::client::SECRET_REJECTED)
        })
        .await
        .expect("the old secret is refused after re-enrollment");
    assert!(!s.connected);
    old_agent.shutdown().await;
    match app.ws(Some(&old.secret)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("old secret still opens a WebSocket: {:?}", other.is_ok()),
    }
    let new_agent = app.agent(&new, "v2");
    wait_acked(&new_agent).await;
    new_agent.shutdown().await;
}

// ---- Agent binary download -------------------------------------------------

const BINARY: &[u8] = b"#!/bin/sh\necho 'restic-manager-agent v9'\n\x00\x01\x02binary-bytes";

/// Stages `BINARY` as linux/x86_64 version v9; returns its hex SHA-256.
async fn stage_fake(app: &TestApp) -> String {
    let src = app.dir.path().join("fake-agent");
    std::fs::write(&src, BINARY).unwrap();
    let b = agent_binaries::stage_with_version(
        app.db(),
        &app.settings.data_dir,
        &src,
        "linux",
        "x86_64",
        Some("v9".into()),
    )
    .await
    .expect("staging");
    let sha = hex::encode(Sha256::digest(BINARY));
    assert_eq!(b.sha256, sha);
    sha
}

async fn download(app: &TestApp, query: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut req = app
        .with_session(None)
        .get(format!("{}?{query}", app.at(routes::AGENT_BINARY)));
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    req.send().await.unwrap()
}

async fn assert_is_the_staged_binary(r: reqwest::Response, sha: &str) {
    assert_eq!(r.status(), 200);
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("X-Agent-Sha256").as_deref(), Some(sha));
    assert_eq!(header("X-Agent-Version").as_deref(), Some("v9"));
    assert_eq!(
        header("Content-Length"),
        Some(BINARY.len().to_string()),
        "size announced up front"
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], BINARY);
}

#[tokio::test]
async fn agent_binary_needs_an_agent_credential() {
    let app = TestApp::spawn().await;
    stage_fake(&app).await;
    let q = "os=linux&arch=x86_64";
    assert_error(download(&app, q, None).await, 401, "unauthorized").await;
    assert_error(
        download(&app, q, Some("nonsense")).await,
        401,
        "invalid_token",
    )
    .await;
    // A logged-in admin's session is no agent credential.
    let r = app
        .admin()
        .await
        .get(format!("{}?{q}", app.at(routes::AGENT_BINARY)))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app
        .with_session(None)
        .get(format!("{}?{q}", app.at(routes::AGENT_BINARY)))
        .header("Authorization", "Basic YWRtaW46eA==")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn agent_binary_with_an_enrollment_token_does_not_use_it_up() {
    let app = TestApp::spawn().await;
    let sha = stage_fake(&app).await;
    let (_, token) = app.add_host("web-1").await;
    let q = "os=linux&arch=x86_64";
    assert_is_the_staged_binary(download(&app, q, Some(&token)).await, &sha).await;
    assert_is_the_staged_binary(download(&app, q, Some(&token)).await, &sha).await;

    // Still good for enrolling, and then used up for downloads too.
    let cfg = enroll(&app.url, &token, "web-1")
        .await
        .expect("a download must not use up the token");
    assert_error(download(&app, q, Some(&token)).await, 401, "token_used").await;
    // The agent's secret works from then on.
    assert_is_the_staged_binary(download(&app, q, Some(&cfg.secret)).await, &sha).await;
}

#[tokio::test]
async fn agent_binary_refuses_an_expired_token() {
    let app = TestApp::spawn().await;
    stage_fake(&app).await;
    let (_, token) = app.add_host("web-1").await;
    app.clock.advance(Duration::from_secs(25 * 3600));
    assert_error(
        download(&app, "os=linux&arch=x86_64", Some(&token)).await,
        401,
        "token_expired",
    )
    .await;
}

#[tokio::test]
async fn agent_binary_refuses_hostile_platforms() {
    let app = TestApp::spawn().await;
    stage_fake(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    let secret = Some(cfg.secret.as_str());
    for q in [
        "os=../../etc&arch=x86_64",
        "os=linux/../x&arch=x86_64",
        "os=%2e%2e&arch=x86_64",
        "os=%2e%2e%2f%2e%2e%2fetc&arch=passwd",
        "os=linux&arch=..%2Fx86_64",
        "os=linux&arch=x86_64%00",
        "os=Linux&arch=x86_64",
        "os=linux&arch=",
        "os=&arch=",
    ] {
        let r = download(&app, q, secret).await;
        assert_eq!(r.status(), 400, "{q}");
        assert_error(r, 400, "unsupported_platform").await;
    }
    // Missing parameters are bad input too.
    for q in ["", "os=linux"] {
        assert_eq!(download(&app, q, secret).await.status(), 400, "{q:?}");
    }
}

#[tokio::test]
async fn agent_binary_for_an_allowed_but_unstaged_platform_is_404_no_binary() {
    let app = TestApp::spawn().await;
    stage_fake(&app).await;
    let cfg = app.enrolled_host("web-1").await;
    for q in ["os=macos&arch=aarch64", "os=linux&arch=aarch64"] {
        assert_error(download(&app, q, Some(&cfg.secret)).await, 404, "no_binary").await;
    }
}

// ---- Install script --------------------------------------------------------

#[tokio::test]
async fn install_sh_names_this_server() {
    let app = TestApp::spawn().await;
    let r = app
        .with_session(None)
        .get(app.at(routes::AGENT_INSTALL_SH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/x-shellscript"), "{ct}");
    let script = r.text().await.unwrap();
    assert!(script.starts_with("#!/bin/sh"));
    assert!(
        script.contains(&format!("SERVER_URL=\"{}\"", app.url)),
        "server URL not filled in"
    );
    assert!(!script.contains("__SERVER_URL__"));

    // A Host header that would break out of the shell string is refused.
    let r = app
        .with_session(None)
        .get(app.at(routes::AGENT_INSTALL_SH))
        .header("Host", "x\"$(id)\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn install_sh_uses_the_public_url_when_set() {
    let app =
        TestApp::spawn_with(|s| s.public_url = Some("https://backup.example.com/".into())).await;
    let script = app
        .with_session(None)
        .get(app.at(routes::AGENT_INSTALL_SH))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(script.contains("SERVER_URL=\"https://backup.example.com\""));
    assert!(!script.contains(&app.url));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Fetches install.sh from the server and runs it with `sh -s -- --token
/// TOKEN --prefix DIR --no-systemd`, as the Add-host page shows it (minus
/// sudo). Returns the output and both streams as one log.
async fn run_install_sh(
    app: &TestApp,
    token: &str,
    prefix: &Path,
) -> (std::process::Output, String) {
    run_install_sh_with(app, token, prefix, None).await
}

/// [`run_install_sh`] with `path_first` put in front of `PATH`.
async fn run_install_sh_with(
    app: &TestApp,
    token: &str,
    prefix: &Path,
    path_first: Option<&Path>,
) -> (std::process::Output, String) {
    let path = match path_first {
        Some(dir) => format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    let script = app
        .with_session(None)
        .get(app.at(routes::AGENT_INSTALL_SH))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix_path = prefix.to_path_buf();
    let token_arg = token.to_string();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .env("PATH", &path)
            .args(["-s", "--", "--token", &token_arg, "--prefix"])
            .arg(&prefix_path)
            .arg("--no-systemd")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running sh");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, log)
}

/// The real thing: install.sh from the server, run by `sh`, downloads the
/// staged agent with curl, verifies and installs it, enrolls; then the
/// installed binary runs, comes online, and goes offline on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_script_installs_enrolls_and_the_agent_comes_online() {
    let bin = agent_binary();
    let app = TestApp::spawn().await;
    let staged = agent_binaries::stage_with_version(
        app.db(),
        &app.settings.data_dir,
        &bin,
        std::env::consts::OS,
        std::env::consts::ARCH,
        None,
    )
    .await
    .expect("staging the real agent binary (it must answer --version)");
    let (id, token) = app.add_host("installed-1").await;

    let prefix = tempfile::tempdir().unwrap();
    let (out, log) = run_install_sh(&app, &token, prefix.path()).await;
    assert!(out.status.success(), "install.sh failed\n{log}");

    let installed = prefix.path().join("bin/restic-manager-agent");
    let config = prefix.path().join("etc/restic-manager-agent/config.toml");
    assert_eq!(mode(&installed), 0o755, "{log}");
    assert_eq!(mode(&config), 0o600, "{log}");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&bin).unwrap(),
        "installed binary is the staged one"
    );
    let h = app.host_json(id).await;
    assert_eq!(h["enrolled"], true, "{h}");
    assert!(
        !log.contains(&token),
        "install.sh printed the token:\n{log}"
    );

    // Run it the way a supervisor would.
    let run_log = prefix.path().join("agent.log");
    let mut agent = ChildGuard::new(
        std::process::Command::new(&installed)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(&run_log).unwrap())
            .stderr(std::fs::File::create(&run_log).unwrap())
            .spawn()
            .expect("starting the installed agent"),
    );
    let agent_log = || std::fs::read_to_string(&run_log).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let h = loop {
        let h = app.host_json(id).await;
        if h["online"] == true {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the installed agent never came online; its log:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(h["agent_version"], staged.version.as_str(), "{h}");
    assert_eq!(h["os"], std::env::consts::OS);
    assert_eq!(h["arch"], std::env::consts::ARCH);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = agent.wait_exit().await;
    assert!(
        status.success(),
        "agent exit on SIGTERM: {status:?}\n{}",
        agent_log()
    );
    eventually("host offline after the agent stopped", || async {
        (app.host_json(id).await["online"] == false).then_some(())
    })
    .await;
}

// ---- Token and secret forms ------------------------------------------------

/// A bare base64url credential, the form issued before the `rme_`/`rms_`
/// prefixes, made to begin with `-` as one in 64 of them did.
fn old_style_credential() -> String {
    format!("-{}", &restic_manager::auth::random_token()[1..])
}

/// The SHA-256 hex the server stored for a credential before the prefixes.
fn old_style_hash(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

/// Stores an unused old-style enrollment token for `host_id`, the way the
/// server stored tokens before the prefix, and returns it.
async fn old_style_token(app: &TestApp, host_id: i64) -> String {
    let token = old_style_credential();
    let now = app.clock.now_ms();
    app.db()
        .execute_unprepared(&format!(
            "INSERT INTO enrollment_tokens (host_id, token_hash, created_at, expires_at) \
             VALUES ({host_id}, '{}', {now}, {})",
            old_style_hash(&token),
            now + 3_600_000
        ))
        .await
        .expect("storing an old-style token");
    token
}

/// `rme_`/`rms_` followed by 32 random bytes in base64url.
fn assert_prefixed(credential: &str, prefix: &str) {
    let rest = credential
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{credential:?} does not begin with {prefix:?}"));
    assert_eq!(rest.len(), 43, "{credential:?}");
    assert!(
        rest.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{credential:?}"
    );
}

#[tokio::test]
async fn new_tokens_and_secrets_carry_their_prefix() {
    let app = TestApp::spawn().await;
    let (id, token) = app.add_host("web-1").await;
    assert_prefixed(&token, "rme_");
    let (_, cli_token) = app.add_host_direct("web-2").await;
    assert_prefixed(&cli_token, "rme_");
    let r = app
        .admin()
        .await
        .post(app.at(&format!("/api/hosts/{id}/token")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let again = r.json::<Value>().await.unwrap()["enrollment_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_prefixed(&again, "rme_");

    let cfg = enroll(&app.url, &again, "web-1").await.expect("enroll");
    assert_eq!(cfg.host_id, id);
    assert_prefixed(&cfg.secret, "rms_");
    let agent = app.agent(&cfg, "v1");
    wait_acked(&agent).await;
    agent.shutdown().await;
}

/// Runs the real agent binary's `enroll` with `args` after `--server URL
/// --config PATH`; `env_token` goes in `RM_AGENT_TOKEN`.
async fn agent_enroll(
    app: &TestApp,
    config: &Path,
    args: &[&str],
    env_token: Option<&str>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(agent_binary());
    cmd.args(["enroll", "--server", &app.url, "--config"])
        .arg(config)
        .args(args)
        .env_remove("RM_AGENT_TOKEN")
        .env_remove("RM_AGENT_SERVER")
        .env_remove("RM_AGENT_CONFIG")
        .stdin(std::process::Stdio::null());
    if let Some(t) = env_token {
        cmd.env("RM_AGENT_TOKEN", t);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("running the agent"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_that_begins_with_a_hyphen_enrolls_through_the_agent_binary() {
    let app = TestApp::spawn().await;
    let (id, _) = app.add_host_direct("old-1").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");

    let spaced = old_style_token(&app, id).await;
    let equals = old_style_token(&app, id).await;
    let from_env = old_style_token(&app, id).await;
    let runs: [(&str, Vec<String>, Option<&str>); 3] = [
        ("--token -…", vec!["--token".into(), spaced.clone()], None),
        ("--token=-…", vec![format!("--token={equals}")], None),
        ("RM_AGENT_TOKEN=-…", vec![], Some(&from_env)),
    ];
    let mut secrets = Vec::new();
    for (form, args, env_token) in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent_enroll(&app, &config, &args, env_token).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{form}: enroll failed ({:?})\nstdout: {}\nstderr: {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        let cfg = agent::config::AgentConfig::load(&config).expect("the config enroll wrote");
        assert_eq!(cfg.host_id, id, "{form}");
        assert_prefixed(&cfg.secret, "rms_");
        secrets.push(cfg.secret);
    }
    // Each run was a real, separate enrollment that used its token up.
    assert_eq!(
        app.query_one(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM enrollment_tokens \
             WHERE host_id = {id} AND used_at IS NOT NULL"
        ))
        .await
        .as_deref(),
        Some("3")
    );
    assert_ne!(secrets[0], secrets[1]);
    assert_ne!(secrets[1], secrets[2]);
    let e = enroll(&app.url, &spaced, "old-1").await.unwrap_err();
    assert_eq!(refused(e), (401, "token_used".into()));
    assert_eq!(app.host_json(id).await["enrolled"], true);
}

/// Writes an executable shell script atomically (no half-written file is
/// ever run).
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// install.sh hands the token to curl and to the agent without putting it
/// on any command line (another local user could read it with `ps`): the
/// curl on PATH and the staged agent record every argument they get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sh_never_puts_the_token_on_a_command_line() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let argv_log = dir.path().join("argv.log");
    let record = |name: &str, real: &Path| {
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >>'{}'\nexec '{}' \"$@\"\n",
            argv_log.display(),
            real.display()
        )
    };
    let agent = dir.path().join("agent-recording-its-arguments");
    write_script(&agent, &record("agent", &agent_binary()));
    agent_binaries::stage_with_version(
        app.db(),
        &app.settings.data_dir,
        &agent,
        std::env::consts::OS,
        std::env::consts::ARCH,
        None,
    )
    .await
    .expect("staging the recording agent");
    let real_curl = std::process::Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .unwrap();
    let real_curl = String::from_utf8(real_curl.stdout).unwrap();
    let path_dir = dir.path().join("path");
    std::fs::create_dir(&path_dir).unwrap();
    write_script(
        &path_dir.join("curl"),
        &record("curl", Path::new(real_curl.trim())),
    );

    let (id, token) = app.add_host("quiet-1").await;
    let prefix = tempfile::tempdir().unwrap();
    let (out, log) = run_install_sh_with(&app, &token, prefix.path(), Some(&path_dir)).await;
    assert!(out.status.success(), "install.sh failed\n{log}");
    assert_eq!(app.host_json(id).await["enrolled"], true);
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.contains("curl ") && argv.contains("agent enroll "),
        "curl and the agent were run:\n{argv}"
    );
    assert!(
        !argv.contains(&token),
        "the token on a command line:\n{argv}"
    );
    assert!(!argv.contains("Bearer"), "{argv}");
    // The header file is gone with the temporary directory.
    assert!(!log.contains(&token), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_that_begins_with_a_hyphen_enrolls_through_install_sh() {
    let app = TestApp::spawn().await;
    agent_binaries::stage_with_version(
        app.db(),
        &app.settings.data_dir,
        &agent_binary(),
        std::env::consts::OS,
        std::env::consts::ARCH,
        None,
    )
    .await
    .expect("staging the real agent binary");
    let (id, _) = app.add_host_direct("old-2").await;
    let token = old_style_token(&app, id).await;

    let prefix = tempfile::tempdir().unwrap();
    let (out, log) = run_install_sh(&app, &token, prefix.path()).await;
    assert!(out.status.success(), "install.sh failed\n{log}");
    assert!(
        !log.contains(&token),
        "install.sh printed the token:\n{log}"
    );
    let cfg = agent::config::AgentConfig::load(
        &prefix.path().join("etc/restic-manager-agent/config.toml"),
    )
    .expect("the config install.sh wrote");
    assert_eq!(cfg.host_id, id);
    assert_prefixed(&cfg.secret, "rms_");
    assert_eq!(app.host_json(id).await["enrolled"], true);
}

#[tokio::test]
async fn an_old_token_without_a_prefix_still_enrolls_and_an_old_secret_still_connects() {
    let app = TestApp::spawn().await;
    let (id, _) = app.add_host_direct("old-3").await;
    let token = old_style_token(&app, id).await;
    let cfg = enroll(&app.url, &token, "old-3")
        .await
        .expect("an old-style token enrolls");
    assert_eq!(cfg.host_id, id);

    // A secret issued before the prefix, stored as it was then.
    let old_secret = old_style_credential();
    app.db()
        .execute_unprepared(&format!(
            "UPDATE hosts SET secret_hash = '{}' WHERE id = {id}",
            old_style_hash(&old_secret)
        ))
        .await
        .unwrap();
    let old = agent::config::AgentConfig {
        secret: old_secret,
        ..cfg.clone()
    };
    let agent = app.agent(&old, "v1");
    wait_acked(&agent).await;
    agent.shutdown().await;
    // And the new one it replaced is refused.
    let refused = app.ws(Some(&cfg.secret)).await;
    assert!(refused.is_err(), "the replaced secret still connects");
}
