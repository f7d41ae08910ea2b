//! Agents' `job.started` and `job.finished` recorded in groups
//! (`jobs::event_batch`): many agents' messages in one transaction, each
//! with its own rules, a refused or failing one costing the others nothing.
use agent::wire::{BackupResult, FinishedStatus, JobFinished, JobStarted};
use restic_manager::{
    jobs::event_batch::{self, Event, Finish, Item, Recorded},
    routes,
    store::{
        self,
        jobs::{ActorKind, JobKind, JobStatus, NewJob, NewResticJob, Refusal},
    },
};
use sea_orm::ConnectionTrait;
use serde_json::Value;

use crate::{
    common::{sim::new_job, *},
    restic::{Api, Lab},
};

fn report(job_id: i64, status: FinishedStatus, result: Option<Value>) -> JobFinished {
    JobFinished {
        job_id,
        status,
        error: (status == FinishedStatus::Failed).then(|| "boom".to_string()),
        exit_code: Some(if status == FinishedStatus::Failed {
            1
        } else {
            0
        }),
        warning: false,
        error_kind: None,
        result,
    }
}

fn start(app: &TestApp, host_id: i64, job_id: i64) -> Item {
    Item {
        host_id,
        event: Event::Started { job_id },
        now: app.clock.now_ms(),
    }
}

fn finish(app: &TestApp, host_id: i64, r: JobFinished) -> Item {
    let status = match r.status {
        FinishedStatus::Succeeded => JobStatus::Succeeded,
        FinishedStatus::Failed => JobStatus::Failed,
        FinishedStatus::Cancelled => JobStatus::Cancelled,
    };
    Item {
        host_id,
        event: Event::Finished(Box::new(Finish {
            error: r.error.clone(),
            error_kind: None,
            result: r.result.as_ref().map(|v| v.to_string()),
            status,
            report: r,
        })),
        now: app.clock.now_ms(),
    }
}

/// Whether the answer is a change of the job to `status`.
fn changed_to(a: &restic_manager::store::Result<Recorded>, status: JobStatus) -> bool {
    matches!(a, Ok(Recorded::Done { t, .. }) if t.changed && t.job.status == status)
}

async fn job(app: &TestApp, id: i64) -> Value {
    app.get_json(&routes::api_job(id)).await
}

#[tokio::test]
async fn one_group_of_several_agents_messages_keeps_each_ones_rules() {
    let app = TestApp::spawn().await;
    let a = app.enrolled_host("grp-a").await.host_id;
    let b = app.enrolled_host("grp-b").await.host_id;
    let j1 = new_job(&app, a).await;
    let j2 = new_job(&app, b).await;
    let theirs = new_job(&app, b).await;
    let ended = new_job(&app, a).await;
    store::jobs::finish(app.db(), ended, None, JobStatus::Cancelled, None, None, 1)
        .await
        .unwrap()
        .unwrap();
    let update = store::jobs::create(
        app.db(),
        &NewJob {
            host_id: a,
            kind: JobKind::Update,
            actor_kind: ActorKind::User,
            actor_id: None,
            actor_name: "admin".into(),
            target_version: Some("v2".into()),
            deadline_at: None,
        },
        app.clock.now_ms(),
    )
    .await
    .unwrap()
    .id;

    let items = vec![
        start(&app, a, j1),
        start(&app, b, j2),
        // Another host's job, an ended one, an unknown one, an end the
        // kind does not take from the agent: each refused alone.
        finish(&app, a, report(theirs, FinishedStatus::Succeeded, None)),
        finish(&app, a, report(ended, FinishedStatus::Succeeded, None)),
        finish(&app, a, report(99_999_999, FinishedStatus::Succeeded, None)),
        finish(&app, a, report(update, FinishedStatus::Succeeded, None)),
        // Started and ended in the same group: ends as finished.
        finish(&app, a, report(j1, FinishedStatus::Succeeded, None)),
        finish(&app, b, report(j2, FinishedStatus::Failed, None)),
    ];
    let answers = event_batch::record(app.state(), &items).await.unwrap();
    assert_eq!(answers.len(), items.len());
    assert!(
        changed_to(&answers[0], JobStatus::Running),
        "{:?}",
        answers[0]
    );
    assert!(
        changed_to(&answers[1], JobStatus::Running),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(answers[2], Ok(Recorded::Refused(Refusal::OtherHost))),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[3], Ok(Recorded::Done { t, .. }) if !t.changed && t.job.status == JobStatus::Cancelled),
        "{:?}",
        answers[3]
    );
    assert!(
        matches!(answers[4], Ok(Recorded::Refused(Refusal::UnknownJob))),
        "{:?}",
        answers[4]
    );
    assert!(
        matches!(&answers[5], Ok(Recorded::NotTheAgents(j)) if j.id == update),
        "{:?}",
        answers[5]
    );
    assert!(
        changed_to(&answers[6], JobStatus::Succeeded),
        "{:?}",
        answers[6]
    );
    assert!(
        changed_to(&answers[7], JobStatus::Failed),
        "{:?}",
        answers[7]
    );

    let j = job(&app, j1).await;
    assert_eq!(j["status"], "succeeded");
    assert!(j["started_at"].is_string() && j["finished_at"].is_string());
    let j = job(&app, j2).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "boom");
    assert_eq!(job(&app, theirs).await["status"], "queued");
    assert_eq!(job(&app, ended).await["status"], "cancelled");
    assert_eq!(job(&app, update).await["status"], "queued");
}

#[tokio::test]
async fn a_failed_index_write_in_a_group_keeps_that_end_and_indexes_the_others() {
    let lab = Lab::new();
    let app = TestApp::spawn().await;
    let api = Api::new(&app).await;
    let host = app.enrolled_host("grp-idx").await.host_id;
    let repo_path = lab.path("repo");
    let repo = api.repo("grp", repo_path.to_str().unwrap(), "grp-pw").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let j = store::jobs::create_restic(
            app.db(),
            &NewResticJob {
                host_id: host,
                kind: JobKind::Backup,
                actor_kind: ActorKind::User,
                actor_id: None,
                actor_name: "admin".into(),
                repository_id: repo,
                plan_id: None,
                options: "{}".into(),
                scope: format!("r{repo}"),
            },
            app.clock.now_ms(),
        )
        .await
        .unwrap();
        ids.push(j.id);
    }
    let (refuse, allow): (&[&str], &str) = if app.is_sqlite() {
        (
            &["CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots \
               WHEN NEW.snapshot_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END"],
            "DROP TRIGGER refuse_snapshot",
        )
    } else {
        (
            &[
                "CREATE FUNCTION refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.snapshot_id = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; \
                 RETURN NEW; END $$",
                "CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots \
                 FOR EACH ROW EXECUTE FUNCTION refuse_snapshot()",
            ],
            "DROP TRIGGER refuse_snapshot ON snapshots",
        )
    };
    for sql in refuse {
        app.db().execute_unprepared(sql).await.unwrap();
    }
    let result = |id: &str| {
        Some(
            serde_json::to_value(BackupResult {
                snapshot_id: id.into(),
                ..BackupResult::default()
            })
            .unwrap(),
        )
    };
    let mut items: Vec<Item> = ids.iter().map(|&j| start(&app, host, j)).collect();
    for (j, snap) in ids.iter().zip(["good-1", "bad", "good-2"]) {
        items.push(finish(
            &app,
            host,
            report(*j, FinishedStatus::Succeeded, result(snap)),
        ));
    }
    let answers = event_batch::record(app.state(), &items).await.unwrap();
    for a in &answers[3..] {
        assert!(changed_to(a, JobStatus::Succeeded), "{a:?}");
    }
    app.db().execute_unprepared(allow).await.unwrap();
    for j in &ids {
        assert_eq!(job(&app, *j).await["status"], "succeeded");
    }
    let mut indexed: Vec<String> = api
        .get(&format!("{}?host_id={host}", routes::API_SNAPSHOTS))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    indexed.sort();
    assert_eq!(indexed, ["good-1", "good-2"]);
}

#[tokio::test]
async fn many_agents_starting_and_ending_at_once_each_get_their_end() {
    let app = TestApp::spawn().await;
    let mut agents = Vec::new();
    for i in 0..12 {
        let (cfg, a) = app.host(&format!("wave-{i}")).online().await;
        let id = new_job(&app, cfg.host_id).await;
        agents.push((id, a));
    }
    let first_job = agents[1].0;
    let sends = agents.iter().enumerate().map(|(i, (id, a))| {
        let s = a.sender();
        let id = *id;
        async move {
            s.send_message(&JobStarted {
                job_id: id,
                kind: None,
            })
            .await
            .unwrap();
            // Agent 0 also claims agent 1's job: refused, and agent 1's
            // own end is unaffected.
            if i == 0 {
                s.send_message(&JobFinished {
                    exit_code: Some(9),
                    ..report(first_job, FinishedStatus::Failed, None)
                })
                .await
                .unwrap();
            }
            s.send_message(&report(id, FinishedStatus::Succeeded, None))
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(sends).await;
    for (id, _) in &agents {
        let j = app.wait_job(*id, "succeeded").await;
        assert_eq!(j["exit_code"], 0, "{j}");
        assert!(j["started_at"].is_string());
    }
    for (_, a) in agents {
        a.shutdown().await;
    }
}

#[tokio::test]
async fn marking_many_jobs_dispatched_marks_only_those_still_queued() {
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn().await;
    let h = app.enrolled_host("grp-mark").await.host_id;
    let queued = new_job(&app, h).await;
    let running = new_job(&app, h).await;
    let ended = new_job(&app, h).await;
    assert!(
        store::jobs::mark_dispatched(app.db(), running, 0)
            .await
            .unwrap()
    );
    store::jobs::finish(app.db(), ended, None, JobStatus::Cancelled, None, None, 1)
        .await
        .unwrap()
        .unwrap();
    let txn = app.db().begin().await.unwrap();
    let marked = store::jobs::mark_dispatched_many(&txn, &[queued, running, ended, 99_999_999])
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(marked, [queued].into_iter().collect());
    assert_eq!(job(&app, queued).await["status"], "running");
    assert_eq!(job(&app, running).await["status"], "running");
    assert_eq!(job(&app, ended).await["status"], "cancelled");
}
