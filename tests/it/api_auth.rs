//! Logging in and out (API and form), session cookies and their expiry,
//! login throttling, the post-login redirect, the cross-site guard, and
//! user administration with its last-admin guard.
use std::time::Duration;

use crate::common::*;
use restic_manager::{routes, store::users::Role};
use serde_json::{Value, json};

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.with_session(Some(token))
        .get(app.at(routes::API_ME))
        .send()
        .await
        .unwrap()
}

async fn login_status(app: &TestApp, username: &str, password: &str) -> reqwest::Response {
    app.with_session(None)
        .post(app.at(routes::API_LOGIN))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

fn form_login(
    app: &TestApp,
    username: &str,
    password: &str,
    next: &str,
) -> reqwest::RequestBuilder {
    let body = serde_urlencoded::to_string([
        ("username", username),
        ("password", password),
        ("next", next),
    ])
    .unwrap();
    app.with_session(None)
        .post(app.at(routes::LOGIN))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
}

fn form(client: &reqwest::Client, url: String, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(pairs).unwrap())
}

fn assert_session_cookie_attributes(set_cookie: &str) {
    let attrs: Vec<String> = set_cookie
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.contains(&"httponly".into()), "{set_cookie}");
    assert!(attrs.contains(&"samesite=lax".into()), "{set_cookie}");
    assert!(attrs.contains(&"path=/".into()), "{set_cookie}");
    // Served over plain http here: a Secure cookie would never come back.
    assert!(!attrs.contains(&"secure".into()), "{set_cookie}");
}

// ---- Login and logout ------------------------------------------------------

#[tokio::test]
async fn api_login_sets_an_httponly_samesite_lax_session_cookie() {
    let app = TestApp::spawn().await;
    let r = login_status(&app, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200);
    let cookie = set_cookie(&r).expect("a session cookie");
    assert_session_cookie_attributes(&cookie);
    let token = session_cookie(&r).unwrap();
    assert!(token.len() >= 32, "session token too short: {token:?}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["username"], "admin");
    assert_eq!(body["role"], "admin");

    let who: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!(who["username"], "admin");
    // Only a hash of the token is stored.
    let stored = app.query("SELECT token_hash FROM sessions").await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0][0].as_deref(), Some(token.as_str()));
}

#[tokio::test]
async fn login_form_sets_the_cookie_and_redirects_to_next() {
    let app = TestApp::spawn().await;
    let r = form_login(&app, "admin", ADMIN_PASSWORD, "/hosts/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r).as_deref(), Some("/hosts/1"));
    assert_session_cookie_attributes(&set_cookie(&r).expect("a session cookie"));
    let token = session_cookie(&r).unwrap();
    assert_eq!(me(&app, &token).await.status(), 200);

    // The page itself is a form posting to /login with the target kept.
    let page = Page::from(
        app.anon()
            .get(app.at("/login?next=%2Fhosts%2F1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.attr("form[method=post]", "action").as_deref(),
        Some(routes::LOGIN)
    );
    assert_eq!(
        page.attr("input[name=next]", "value").as_deref(),
        Some("/hosts/1")
    );
}

#[tokio::test]
async fn api_logout_deletes_the_session_server_side() {
    let app = TestApp::spawn().await;
    let token = app.session_token("admin", ADMIN_PASSWORD).await;
    let other = app.session_token("admin", ADMIN_PASSWORD).await;
    assert_eq!(app.count("sessions").await, 2);

    let r = app
        .with_session(Some(&token))
        .post(app.at(routes::API_LOGOUT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let removal = set_cookie(&r).expect("logout clears the cookie");
    assert!(
        session_cookie(&r).is_some_and(|v| v.is_empty()),
        "cookie emptied: {removal}"
    );
    // The server forgot it: replaying the old cookie does not work.
    assert_eq!(app.count("sessions").await, 1);
    assert_error(me(&app, &token).await, 401, "unauthorized").await;
    let page = app
        .with_session(Some(&token))
        .get(app.at("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    // Another session of the same user is untouched.
    assert_eq!(me(&app, &other).await.status(), 200);
}

#[tokio::test]
async fn form_logout_deletes_the_session_server_side() {
    let app = TestApp::spawn().await;
    let token = app.session_token("admin", ADMIN_PASSWORD).await;
    let r = app
        .with_session(Some(&token))
        .post(app.at(routes::LOGOUT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r).as_deref(), Some(routes::LOGIN));
    assert!(session_cookie(&r).is_some_and(|v| v.is_empty()));
    assert_eq!(app.count("sessions").await, 0);
    assert_error(me(&app, &token).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let app = TestApp::spawn().await;
    let r = login_status(&app, "admin", "not-the-password").await;
    assert!(set_cookie(&r).is_none(), "no cookie on a failed login");
    assert_error(r, 401, "invalid_credentials").await;
    let wrong: Value = login_status(&app, "admin", "nope-nope-1")
        .await
        .json()
        .await
        .unwrap();
    let unknown: Value = login_status(&app, "nobody", "nope-nope-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        wrong, unknown,
        "the answer must not reveal which users exist"
    );
    assert_eq!(app.count("sessions").await, 0);
}

#[tokio::test]
async fn login_form_with_a_wrong_password_shows_the_error_and_keeps_the_username() {
    let app = TestApp::spawn().await;
    let r = form_login(&app, "admin", "wrong-password", "/settings/users")
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&r).is_none());
    let page = Page::from(r).await;
    assert_eq!(page.status, 401);
    page.assert_html();
    assert!(
        page.one("[data-testid=error-banner]")
            .contains("wrong username or password"),
        "{}",
        page.text
    );
    assert_eq!(page.attr("#username", "value").as_deref(), Some("admin"));
    assert_eq!(
        page.attr("input[name=next]", "value").as_deref(),
        Some("/settings/users")
    );
}

#[tokio::test]
async fn five_failures_lock_the_login_even_for_the_right_password() {
    let app = TestApp::spawn().await;
    for i in 1..=5 {
        let r = login_status(&app, "admin", &format!("guess-{i}-wrong")).await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    let r = login_status(&app, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!(set_cookie(&r).is_none(), "a locked login sets no cookie");
    let retry: u64 = r
        .headers()
        .get("Retry-After")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=15 * 60).contains(&retry), "Retry-After {retry}");
    assert_error(r, 429, "too_many_attempts").await;

    // The form says so too, readably.
    let page = Page::from(
        form_login(&app, "admin", ADMIN_PASSWORD, "/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 429);
    assert!(
        page.one("[data-testid=error-banner]")
            .contains("too many failed logins"),
        "{}",
        page.text
    );
    assert_eq!(app.count("sessions").await, 0);
}

async fn login_from(
    app: &TestApp,
    forwarded_for: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    app.with_session(None)
        .post(app.at(routes::API_LOGIN))
        .header("X-Forwarded-For", forwarded_for)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Behind a trusted proxy, five failures for `admin` from one client lock
/// that client out of `admin`, not `admin` for everyone; the audit log shows
/// the client's address, and a header from an untrusted peer is not believed.
#[tokio::test]
async fn failed_logins_lock_one_client_behind_a_trusted_proxy_not_the_user() {
    let app = TestApp::spawn_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    // The attacker claims an address, the proxy appends the real one.
    let attacker = "192.0.2.66, 203.0.113.7";
    for i in 1..=5 {
        let r = login_from(&app, attacker, "admin", &format!("guess-{i}")).await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    assert_error(
        login_from(&app, attacker, "admin", ADMIN_PASSWORD).await,
        429,
        "too_many_attempts",
    )
    .await;
    // Changing the part the proxy did not write changes nothing.
    assert_error(
        login_from(&app, "192.0.2.1, 203.0.113.7", "admin", ADMIN_PASSWORD).await,
        429,
        "too_many_attempts",
    )
    .await;
    // The real admin, elsewhere, logs in.
    let r = login_from(&app, "198.51.100.9", "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert!(set_cookie(&r).is_some());
    // The audit log has the client's address, not the proxy's or the claim.
    let rows: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/audit?action=login.failed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["client_addr"] == "203.0.113.7"),
        "{rows:?}"
    );
    let rows: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/audit?action=login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        rows.iter().any(|r| r["client_addr"] == "198.51.100.9"),
        "{rows:?}"
    );
}

/// Without `--trusted-proxies`, `X-Forwarded-For` is the client's say-so:
/// a client cannot dodge its lock by inventing addresses.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_not_believed() {
    let app = TestApp::spawn().await;
    for i in 1..=5 {
        let r = login_from(&app, &format!("198.51.100.{i}"), "admin", "wrong").await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    assert_error(
        login_from(&app, "198.51.100.99", "admin", ADMIN_PASSWORD).await,
        429,
        "too_many_attempts",
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_wrong_passwords_sent_at_once_is_still_locked_after_five() {
    // Sent together, every attempt would pass the lock check before any
    // failure is counted; password checks take turns, so no more than the
    // five allowed (plus those already checking) are ever tried.
    let app = TestApp::spawn().await;
    let app_ref = &app;
    let burst = futures_util::future::join_all(
        (0..40).map(|i| async move { login_status(app_ref, "admin", &format!("spray-{i}")).await }),
    )
    .await;
    let tried = burst.iter().filter(|r| r.status() == 401).count();
    let locked = burst.iter().filter(|r| r.status() == 429).count();
    assert_eq!(tried + locked, 40, "only 401 or 429");
    let slots = restic_manager::auth::password_slots();
    assert!(
        (5..=5 + slots).contains(&tried),
        "{tried} passwords tried with {slots} checking at a time"
    );
    assert_error(
        login_status(&app, "admin", ADMIN_PASSWORD).await,
        429,
        "too_many_attempts",
    )
    .await;
    // An absurd username is refused like any other wrong one (it is its own
    // pair with this address, which is not locked for other names yet).
    let r = login_status(&app, &format!("x\u{0}{}", "y".repeat(60_000)), "pw").await;
    assert_error(r, 401, "invalid_credentials").await;
    assert_eq!(app.count("sessions").await, 0);
}

#[tokio::test]
async fn an_absurd_username_is_a_plain_wrong_login() {
    let app = TestApp::spawn().await;
    for name in ["a\u{0}b".to_string(), "x".repeat(60_000), "".into()] {
        assert_error(
            login_status(&app, &name, "whatever").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    assert_eq!(
        login_status(&app, "admin", ADMIN_PASSWORD).await.status(),
        200
    );
}

// ---- Session expiry --------------------------------------------------------

#[tokio::test]
async fn an_idle_session_expires_and_activity_keeps_it_alive() {
    let app = TestApp::spawn().await;
    let idle = app.settings.session_idle;
    let token = app.session_token("admin", ADMIN_PASSWORD).await;
    let almost = idle - Duration::from_secs(5 * 60);

    // Used just before the idle limit each time: it stays alive beyond it.
    app.clock.advance(almost);
    assert_eq!(me(&app, &token).await.status(), 200);
    app.clock.advance(almost);
    assert_eq!(
        me(&app, &token).await.status(),
        200,
        "a request must refresh the idle timer"
    );

    // Then left alone past the limit: gone, on the API and on pages.
    app.clock.advance(idle + Duration::from_secs(60));
    let page = app
        .with_session(Some(&token))
        .get(app.at("/hosts/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(location(&page).as_deref(), Some("/login?next=%2Fhosts%2F7"));
    assert_error(me(&app, &token).await, 401, "unauthorized").await;
    assert_eq!(app.count("sessions").await, 0, "the expired row is deleted");
}

#[tokio::test]
async fn a_session_ends_at_the_absolute_limit_even_when_active() {
    let app = TestApp::spawn().await;
    let idle = app.settings.session_idle;
    let absolute = app.settings.session_absolute;
    let token = app.session_token("admin", ADMIN_PASSWORD).await;
    let step = idle - Duration::from_secs(3600);
    let mut elapsed = Duration::ZERO;
    loop {
        app.clock.advance(step);
        elapsed += step;
        let status = me(&app, &token).await.status().as_u16();
        if elapsed < absolute {
            assert_eq!(status, 200, "active session refused after {elapsed:?}");
        } else {
            assert_eq!(status, 401, "session still valid after {elapsed:?}");
            break;
        }
    }
    // A fresh login works: the limit is per session, not per user.
    let fresh = app.session_token("admin", ADMIN_PASSWORD).await;
    assert_eq!(me(&app, &fresh).await.status(), 200);
}

// ---- Post-login redirect ---------------------------------------------------

#[tokio::test]
async fn login_next_only_redirects_within_this_site() {
    let app = TestApp::spawn().await;
    let base = reqwest::Url::parse(&app.url).unwrap();
    let cases = [
        ("/hosts/3?x=1", "/hosts/3?x=1"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        // Browsers drop tabs and newlines from URLs: `/<TAB>/evil` is `//evil`.
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("/\r\n/evil.example", "/"),
    ];
    let mut failures = Vec::new();
    for (next, want) in cases {
        let r = form_login(&app, "admin", ADMIN_PASSWORD, next)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let loc = location(&r);
        if status != 303 || loc.as_deref() != Some(want) {
            failures.push(format!(
                "next={next:?}: got {status} {loc:?}, want 303 {want}"
            ));
        }
        // Whatever the answer, a browser following it stays on this site.
        if let Some(loc) = &loc {
            let target = base
                .join(loc)
                .map(|u| (u.host_str().map(str::to_string), u.port()));
            if target != Ok((base.host_str().map(str::to_string), base.port())) {
                failures.push(format!(
                    "next={next:?}: Location {loc:?} leaves the site ({target:?})"
                ));
            }
        }
    }
    // The login page never puts a foreign target into its form either.
    let page = Page::from(
        app.anon()
            .get(app.at("/login?next=%2F%2Fevil.example"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.attr("input[name=next]", "value").as_deref(), Some("/"));
    // Nor does it bounce a logged-in user off-site.
    let admin = app.admin().await;
    let r = admin
        .get(app.at("/login?next=https%3A%2F%2Fevil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r).as_deref(), Some("/"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- Cross-site guard ------------------------------------------------------

#[tokio::test]
async fn cross_site_posts_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let token = app.session_token("admin", ADMIN_PASSWORD).await;
    let (host_id, _) = app.add_host_direct("keep-me").await;
    let victim = app.user("victim", Role::Viewer).await;
    let admin = app.with_session(Some(&token));
    let hostile: [(&str, &str); 3] = [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let before = app.snapshot().await;
    for (header, value) in hostile {
        let what = format!("{header}: {value}");
        let r = admin
            .post(app.at(routes::API_HOSTS))
            .header(header, value)
            .json(&json!({"name": "csrf-host"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what}");
        assert_error(r, 403, "cross_site").await;

        let r = admin
            .delete(app.at(&routes::api_host(host_id)))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_error(r, 403, "cross_site").await;

        let r = form(&admin, app.at(routes::HOST_NEW), &[("name", "csrf-page")])
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "form, {what}");

        let r = form(&admin, app.at(&routes::user_delete(victim)), &[])
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "user delete, {what}");

        // Login CSRF: a foreign page must not log the browser in.
        let r = form_login(&app, "admin", ADMIN_PASSWORD, "/")
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "login, {what}");
        assert!(set_cookie(&r).is_none(), "login, {what}");
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a cross-site request changed state"
    );
    // Reads are not state-changing and stay allowed.
    let r = admin
        .get(app.at(routes::API_HOSTS))
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_cross_site_form_post_gets_a_readable_403_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let r = form(&admin, app.at(routes::HOST_NEW), &[("name", "csrf-page")])
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    let page = Page::from(r).await;
    assert_eq!(page.status, 403);
    // A person followed a form from elsewhere: tell them, in a page.
    page.assert_html();
    assert!(
        page.one("[data-testid=error-message]")
            .contains("cross-site"),
        "{}",
        page.text
    );
    assert_eq!(app.count("hosts").await, 0);
}

#[tokio::test]
async fn same_origin_posts_pass_the_cross_site_guard() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let cases: [(&str, String); 3] = [
        ("Origin", app.url.clone()),
        ("Sec-Fetch-Site", "same-origin".into()),
        ("Sec-Fetch-Site", "none".into()),
    ];
    for (i, (header, value)) in cases.iter().enumerate() {
        let r = admin
            .post(app.at(routes::API_HOSTS))
            .header(*header, value)
            .json(&json!({"name": format!("ok-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{header}: {value}");
    }
    assert_eq!(app.count("hosts").await, 3);
}

// ---- User administration ---------------------------------------------------

async fn user_id(app: &TestApp, name: &str) -> i64 {
    restic_manager::store::users::get_by_name(app.db(), name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no user {name}"))
        .id
}

#[tokio::test]
async fn admin_adds_a_user_through_the_api_who_can_then_log_in() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let r = admin
        .post(app.at(routes::API_USERS))
        .json(&json!({"username": "vera", "password": "vera-password-1", "role": "operator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["username"], "vera");
    assert_eq!(body["role"], "operator");
    assert!(body["id"].is_i64());
    assert!(body.get("password_hash").is_none(), "{body}");

    let list: Value = admin
        .get(app.at(routes::API_USERS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "vera"]);

    let token = app.session_token("vera", "vera-password-1").await;
    let who: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!(who["role"], "operator");
}

#[tokio::test]
async fn admin_adds_a_user_through_the_form() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let page = Page::from(
        form(
            &admin,
            app.at(routes::USERS_PAGE),
            &[
                ("username", "walt"),
                ("password", "walt-password-1"),
                ("role", "operator"),
            ],
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.one("[role=status]").contains("added walt as operator"));
    assert_eq!(
        page.one("tr[data-testid=user-row][data-username=walt] select[name=role] option[selected]"),
        "operator"
    );
    let token = app.session_token("walt", "walt-password-1").await;
    assert_eq!(me(&app, &token).await.status(), 200);
}

#[tokio::test]
async fn a_role_change_applies_to_the_users_open_session() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let id = app.user("vera", Role::Viewer).await;
    let vera = app.with_session(Some(
        &app.session_token("vera", &TestApp::password_of("vera"))
            .await,
    ));
    let users_api = app.at(routes::API_USERS);
    assert_error(vera.get(&users_api).send().await.unwrap(), 403, "forbidden").await;

    let r = admin
        .post(app.at(&routes::api_user_role(id)))
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "admin");
    assert_eq!(vera.get(&users_api).send().await.unwrap().status(), 200);

    // And back down, through the form.
    let page = Page::from(
        form(
            &admin,
            app.at(&routes::user_role(id)),
            &[("role", "viewer")],
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(
        page.one("tr[data-username=vera] select[name=role] option[selected]"),
        "viewer"
    );
    assert_error(vera.get(&users_api).send().await.unwrap(), 403, "forbidden").await;
    // A made-up role is refused.
    let r = admin
        .post(app.at(&routes::api_user_role(id)))
        .json(&json!({"role": "root"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_role").await;
}

#[tokio::test]
async fn a_password_reset_stops_the_old_password_and_ends_their_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let id = app.user("vera", Role::Operator).await;
    let old = TestApp::password_of("vera");
    let session = app.session_token("vera", &old).await;

    let r = admin
        .post(app.at(&routes::api_user_password(id)))
        .json(&json!({"password": "brand-new-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_error(
        login_status(&app, "vera", &old).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(me(&app, &session).await, 401, "unauthorized").await;
    assert_eq!(
        login_status(&app, "vera", "brand-new-password")
            .await
            .status(),
        200
    );

    // The form does the same.
    let page = Page::from(
        form(
            &admin,
            app.at(&routes::user_password(id)),
            &[("password", "third-password-x")],
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.one("[role=status]").contains("password of vera reset"));
    assert_eq!(
        login_status(&app, "vera", "third-password-x")
            .await
            .status(),
        200
    );
    assert_error(
        login_status(&app, "vera", "brand-new-password").await,
        401,
        "invalid_credentials",
    )
    .await;
}

/// Resetting your own password logs you out everywhere else, and keeps the
/// session you did it from.
#[tokio::test]
async fn resetting_your_own_password_ends_your_other_sessions() {
    let app = TestApp::spawn().await;
    let here = app.session_token("admin", ADMIN_PASSWORD).await;
    let elsewhere = app.session_token("admin", ADMIN_PASSWORD).await;
    let admin_id = user_id(&app, "admin").await;
    let r = app
        .with_session(Some(&here))
        .post(app.at(&routes::api_user_password(admin_id)))
        .json(&json!({"password": "a-new-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me(&app, &here).await.status(), 200, "this session stays");
    assert_eq!(
        me(&app, &elsewhere).await.status(),
        401,
        "the other one ended"
    );
    // The same through the form.
    let third = app.session_token("admin", "a-new-password-1").await;
    let page = Page::from(
        form(
            &app.with_session(Some(&here)),
            app.at(&routes::user_password(admin_id)),
            &[("password", "a-newer-password-2")],
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(me(&app, &here).await.status(), 200);
    assert_eq!(me(&app, &third).await.status(), 401);
}

/// `Secure` follows the configuration, never a forwarded header; HSTS with it.
#[tokio::test]
async fn the_secure_cookie_flag_and_hsts_follow_the_configuration_not_headers() {
    let attrs = |r: &reqwest::Response| -> Vec<String> {
        set_cookie(r)
            .unwrap()
            .split(';')
            .map(|a| a.trim().to_ascii_lowercase())
            .collect()
    };
    let login = |app: &TestApp| {
        app.with_session(None)
            .post(app.at(routes::API_LOGIN))
            .header("X-Forwarded-Proto", "https")
            .header("Forwarded", "proto=https")
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
    };
    let plain = TestApp::spawn().await;
    let r = login(&plain).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !attrs(&r).contains(&"secure".into()),
        "a peer's header decided it"
    );
    assert!(r.headers().get("Strict-Transport-Security").is_none());

    let public =
        TestApp::spawn_with(|s| s.public_url = Some("HTTPS://backup.example.com".into())).await;
    let r = login(&public).await.unwrap();
    assert!(attrs(&r).contains(&"secure".into()));
    assert_eq!(r.headers()["Strict-Transport-Security"], "max-age=31536000");

    let flag = TestApp::spawn_with(|s| s.secure_cookies = true).await;
    let r = flag
        .anon()
        .get(flag.at(routes::LOGIN))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("Strict-Transport-Security").is_some());
    let r = login(&flag).await.unwrap();
    assert!(attrs(&r).contains(&"secure".into()));
}

#[tokio::test]
async fn removing_a_user_ends_their_access() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let vera = app.user("vera", Role::Operator).await;
    let walt = app.user("walt", Role::Viewer).await;
    let session = app
        .session_token("vera", &TestApp::password_of("vera"))
        .await;

    let r = admin
        .delete(app.at(&routes::api_user(vera)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_error(me(&app, &session).await, 401, "unauthorized").await;
    assert_error(
        login_status(&app, "vera", &TestApp::password_of("vera")).await,
        401,
        "invalid_credentials",
    )
    .await;

    let page = Page::from(
        form(&admin, app.at(&routes::user_delete(walt)), &[])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.one("[role=status]").contains("removed walt"));
    let rows: Vec<String> = page
        .doc
        .select(&scraper::Selector::parse("tr[data-testid=user-row]").unwrap())
        .filter_map(|e| e.value().attr("data-username").map(str::to_string))
        .collect();
    assert_eq!(rows, ["admin"]);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed_or_demoted() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let admin_id = user_id(&app, "admin").await;
    let before = app.snapshot().await;

    let r = admin
        .delete(app.at(&routes::api_user(admin_id)))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "last_admin").await;
    for role in ["operator", "viewer"] {
        let r = admin
            .post(app.at(&routes::api_user_role(admin_id)))
            .json(&json!({"role": role}))
            .send()
            .await
            .unwrap();
        assert_error(r, 409, "last_admin").await;
    }

    // The page shows the reason and keeps the admin listed as admin.
    for page in [
        form(&admin, app.at(&routes::user_delete(admin_id)), &[]),
        form(
            &admin,
            app.at(&routes::user_role(admin_id)),
            &[("role", "viewer")],
        ),
    ] {
        let page = Page::from(page.send().await.unwrap()).await;
        assert_eq!(page.status, 409, "{}", page.text);
        page.assert_html();
        assert!(
            page.one("[data-testid=error-banner]")
                .contains("last admin"),
            "{}",
            page.text
        );
        assert_eq!(
            page.one("tr[data-username=admin] select[name=role] option[selected]"),
            "admin"
        );
    }
    assert_eq!(app.snapshot().await, before);

    // With a second admin, the first may step down; the second is then last.
    let second = app.user("root2", Role::Admin).await;
    let r = admin
        .post(app.at(&routes::api_user_role(admin_id)))
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let root2 = app.login("root2", &TestApp::password_of("root2")).await;
    let r = root2
        .delete(app.at(&routes::api_user(second)))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "last_admin").await;
}

#[tokio::test]
async fn bad_user_input_is_refused_with_codes_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let vera = app.user("vera", Role::Viewer).await;
    let before = app.snapshot().await;
    let long = "x".repeat(65);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"username": "newbie", "password": "short", "role": "viewer"}),
            400,
            "weak_password",
        ),
        (
            json!({"username": "bad name", "password": "long-enough-1", "role": "viewer"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username": "", "password": "long-enough-1", "role": "viewer"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username": "<script>", "password": "long-enough-1", "role": "viewer"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username": long, "password": "long-enough-1", "role": "viewer"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username": "newbie", "password": "long-enough-1", "role": "root"}),
            400,
            "invalid_role",
        ),
        (
            json!({"username": "vera", "password": "long-enough-1", "role": "viewer"}),
            409,
            "username_taken",
        ),
        (
            json!({"username": "admin", "password": "long-enough-1", "role": "admin"}),
            409,
            "username_taken",
        ),
    ];
    for (body, status, code) in cases {
        let r = admin
            .post(app.at(routes::API_USERS))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_error(r, status, code).await;
    }
    let r = admin
        .post(app.at(&routes::api_user_password(vera)))
        .json(&json!({"password": "1234567"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "weak_password").await;

    // The form shows the same refusals as a banner, with the right status.
    for (pairs, status, says) in [
        (
            [
                ("username", "newbie"),
                ("password", "short"),
                ("role", "viewer"),
            ],
            400,
            "at least 8 characters",
        ),
        (
            [
                ("username", "vera"),
                ("password", "long-enough-1"),
                ("role", "viewer"),
            ],
            409,
            "already exists",
        ),
    ] {
        let page = Page::from(
            form(&admin, app.at(routes::USERS_PAGE), &pairs)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, status, "{}", page.text);
        assert!(
            page.one("[data-testid=error-banner]").contains(says),
            "{}",
            page.text
        );
    }
    assert_eq!(app.snapshot().await, before);
}

/// Two admins demoting (or deleting) each other at the same moment: each
/// transaction takes its locks, then both write before either commits. The
/// second must wait for the first and then see one admin left (on Postgres
/// under READ COMMITTED each would otherwise count the other). Runs on
/// Postgres when TEST_DATABASE_URL is set, else SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_removing_each_other_at_once_leave_one_admin() {
    use restic_manager::store::{self, users};
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn().await;
    for delete in [false, true] {
        let a = user_id(&app, "admin").await;
        let b = app
            .user(if delete { "bob-2" } else { "bob" }, Role::Admin)
            .await;
        let db = app.db().clone();
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel::<()>();

        let txn_a = app.db().begin().await.unwrap();
        users::lock(&txn_a, b).await.unwrap();
        // Bob removes the admin, in his own transaction.
        let other = tokio::spawn(async move {
            let txn = db.begin().await?;
            users::lock(&txn, a).await?;
            let _ = locked_tx.send(());
            let _ = go_rx.await;
            let r = if delete {
                users::delete(&txn, a).await.map(|_| ())
            } else {
                users::set_role(&txn, a, Role::Viewer, 1).await.map(|_| ())
            };
            let _ = wrote_tx.send(());
            r?;
            txn.commit().await?;
            Ok::<(), store::StoreError>(())
        });
        // Give the other transaction every chance to take its locks and
        // write before this one commits (it must not be able to).
        let _ = tokio::time::timeout(Duration::from_millis(500), locked_rx).await;
        if delete {
            users::delete(&txn_a, b).await.unwrap();
        } else {
            users::set_role(&txn_a, b, Role::Viewer, 1).await.unwrap();
        }
        let _ = go_tx.send(());
        let _ = tokio::time::timeout(Duration::from_millis(500), wrote_rx).await;
        txn_a.commit().await.unwrap();
        let r = tokio::time::timeout(WAIT, other).await.unwrap().unwrap();
        assert!(
            matches!(r, Err(store::StoreError::Conflict("last_admin", _))),
            "the second removal must find the last admin: {r:?}"
        );
        let admins: Vec<Value> = app
            .get_json::<Vec<Value>>(routes::API_USERS)
            .await
            .into_iter()
            .filter(|u| u["role"] == "admin")
            .collect();
        assert_eq!(admins.len(), 1, "delete={delete}: {admins:?}");
        assert_eq!(admins[0]["username"], "admin");
    }
}
