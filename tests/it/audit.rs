//! Every admin action leaves an audit row (actor, action, target, client
//! address); only admins can read the log.
use crate::common::*;
use restic_manager::{routes, store::users::Role};
use serde_json::{Value, json};

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app
        .admin()
        .await
        .get(app.at(&format!("/api/audit{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn has(rows: &[Value], action: &str, actor: &str) -> bool {
    rows.iter()
        .any(|r| r["action"] == action && r["actor"] == actor && r["client_addr"] == "127.0.0.1")
}

#[tokio::test]
async fn admin_actions_write_audit_rows() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;

    // Failed login, user lifecycle.
    let r = app
        .anon()
        .post(app.at(routes::API_LOGIN))
        .json(&json!({"username": "admin", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin
        .post(app.at(routes::API_USERS))
        .json(&json!({"username": "olga", "password": "olga-password-1", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let olga: Value = r.json().await.unwrap();
    let id = olga["id"].as_i64().unwrap();
    for (path, body) in [
        (routes::api_user_role(id), json!({"role": "operator"})),
        (
            routes::api_user_password(id),
            json!({"password": "another-password"}),
        ),
    ] {
        let r = admin.post(app.at(&path)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let r = admin
        .delete(app.at(&routes::api_user(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Host lifecycle, including the agent's enrollment.
    let (_, token) = app.add_host("web-1").await;
    let cfg = agent::enroll::enroll(&app.url, &token, "web-1")
        .await
        .unwrap();
    let r = admin
        .post(app.at(&routes::api_host_token(cfg.host_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin
        .delete(app.at(&routes::api_host(cfg.host_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = admin.post(app.at(routes::API_LOGOUT)).send().await.unwrap();
    assert_eq!(r.status(), 204);

    let rows = audit(&app, "?limit=1000").await;
    for (action, actor) in [
        ("login", "admin"),
        ("login.failed", "admin"),
        ("user.add", "admin"),
        ("user.role_change", "admin"),
        ("user.password_reset", "admin"),
        ("user.remove", "admin"),
        ("host.add", "admin"),
        ("host.enroll", "agent"),
        ("host.token_create", "admin"),
        ("host.remove", "admin"),
        ("logout", "admin"),
    ] {
        assert!(
            has(&rows, action, actor),
            "no {action} row by {actor} in {rows:#?}"
        );
    }
    let add = rows.iter().find(|r| r["action"] == "user.add").unwrap();
    assert_eq!(add["target_kind"], "user");
    assert_eq!(add["target_id"], id.to_string());
    assert_eq!(add["details"]["username"], "olga");
    // No secret ever lands in the log.
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains(&cfg.secret));
    assert!(!text.contains("another-password") && !text.contains("wrong-password"));

    // Filters narrow the list.
    let only = audit(&app, "?action=host.remove").await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["action"], "host.remove");
}

#[tokio::test]
async fn only_admins_read_the_audit_log() {
    let app = TestApp::spawn().await;
    for role in [Role::Viewer, Role::Operator] {
        let c = app.as_role(role).await;
        assert_error(
            c.get(app.at(routes::API_AUDIT)).send().await.unwrap(),
            403,
            "forbidden",
        )
        .await;
        let page = c.get(app.at(routes::AUDIT_PAGE)).send().await.unwrap();
        assert_eq!(page.status(), 403);
    }
    let page = app
        .admin()
        .await
        .get(app.at(routes::AUDIT_PAGE))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = scraper::Html::parse_document(&page.text().await.unwrap());
    let sel = scraper::Selector::parse("[data-testid=audit-row]").unwrap();
    // At least the admin's own logins are listed.
    assert!(html.select(&sel).count() >= 1);
}

/// A queued update job on `host_id`: a live job the removal takes with it.
async fn live_job(app: &TestApp, host_id: i64) -> i64 {
    use restic_manager::store::jobs;
    let job = jobs::NewJob {
        host_id,
        kind: jobs::JobKind::Update,
        actor_kind: jobs::ActorKind::System,
        actor_id: None,
        actor_name: "test".into(),
        target_version: Some("9.9.9".into()),
        deadline_at: None,
    };
    jobs::create(app.db(), &job, app.clock.now_ms())
        .await
        .unwrap()
        .id
}

async fn host_remove_rows(app: &TestApp, host_id: i64) -> i64 {
    app.query_one(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM audit_log \
         WHERE action = 'host.remove' AND target_id = '{host_id}'"
    ))
    .await
    .unwrap()
    .parse()
    .unwrap()
}

/// The removal and its audit row are one transaction: while the row cannot
/// be written the host and its live job stay; once it can, both go with
/// exactly one row.
#[tokio::test]
async fn a_host_removal_and_its_audit_row_commit_together() {
    use restic_manager::store::jobs;
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (host_id, _) = app.add_host_direct("doomed").await;
    let job_id = live_job(&app, host_id).await;
    let (refuse, allow): (&[&str], &str) = if app.is_sqlite() {
        (
            &[
                "CREATE TRIGGER refuse_host_remove BEFORE INSERT ON audit_log \
               WHEN NEW.action = 'host.remove' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            ],
            "DROP TRIGGER refuse_host_remove",
        )
    } else {
        (
            &[
                "CREATE FUNCTION refuse_host_remove() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.action = 'host.remove' THEN RAISE EXCEPTION 'refused'; END IF; \
                 RETURN NEW; END $$",
                "CREATE TRIGGER refuse_host_remove BEFORE INSERT ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION refuse_host_remove()",
            ],
            "DROP TRIGGER refuse_host_remove ON audit_log",
        )
    };
    for sql in refuse {
        app.db().execute_unprepared(sql).await.unwrap();
    }
    let url = app.at(&routes::api_host(host_id));
    let r = admin.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(app.host_row(host_id).await.is_some(), "removed unaudited");
    assert!(jobs::get(app.db(), job_id).await.is_ok());
    assert_eq!(host_remove_rows(&app, host_id).await, 0);

    app.db().execute_unprepared(allow).await.unwrap();
    let r = admin.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(app.host_row(host_id).await.is_none());
    assert!(
        jobs::get(app.db(), job_id).await.is_err(),
        "job outlived its host"
    );
    assert_eq!(host_remove_rows(&app, host_id).await, 1);
}

/// Removals of one host (with a live job) at the same time: exactly one
/// removes it (204) and writes the one audit row; the others find no host.
#[tokio::test]
async fn concurrent_removals_of_a_host_succeed_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for round in 0..3 {
        let (host_id, _) = app.add_host_direct(&format!("raced-{round}")).await;
        live_job(&app, host_id).await;
        let url = app.at(&routes::api_host(host_id));
        let answers =
            futures_util::future::join_all((0..4).map(|_| admin.delete(&url).send())).await;
        let mut codes: Vec<u16> = answers
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
        codes.sort_unstable();
        assert_eq!(codes, [204, 404, 404, 404], "round {round}");
        assert!(app.host_row(host_id).await.is_none());
        assert_eq!(host_remove_rows(&app, host_id).await, 1, "round {round}");
    }
}
