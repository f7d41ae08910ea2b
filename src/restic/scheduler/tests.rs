//! The scheduler against a fake (clock, time zone, what it queued) over a
//! real database (SQLite, or Postgres with `TEST_DATABASE_URL`): every
//! rule, a DST change, and a server down across several due times.
use std::sync::{
    Mutex,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::{
    restic::repositories::{RepositoryInput, create as create_repo},
    secrets::SecretKey,
    store::plans::PlanRow,
};

struct Fake {
    db: DatabaseConnection,
    now: AtomicI64,
    tz: Tz,
    queued: Mutex<Vec<i64>>,
    marks: Arc<crate::agents::marks::HostMarks>,
    _dir: tempfile::TempDir,
}

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn show(t: i64, tz: Tz) -> String {
    Utc.timestamp_millis_opt(t)
        .unwrap()
        .with_timezone(&tz)
        .format("%m-%d %H:%M %Z")
        .to_string()
}

async fn database(dir: &tempfile::TempDir) -> DatabaseConnection {
    crate::db::testing::fresh_database(dir.path())
        .await
        .unwrap()
}

impl Fake {
    async fn new(now: &str, tz: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        Fake {
            db,
            now: AtomicI64::new(ms(now)),
            tz: tz.parse().unwrap(),
            queued: Mutex::new(vec![]),
            marks: Arc::default(),
            _dir: dir,
        }
    }

    fn set(&self, now: &str) {
        self.now.store(ms(now), Ordering::SeqCst);
    }

    fn queued(&self) -> Vec<i64> {
        self.queued.lock().unwrap().clone()
    }

    async fn host(&self, name: &str, labels: &[&str]) -> i64 {
        let h = store::hosts::create(&self.db, name, 0).await.unwrap();
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        store::hosts::set_labels(&self.db, h.id, &labels)
            .await
            .unwrap();
        h.id
    }

    async fn repo(&self, url: &str) -> Repository {
        let key = SecretKey::from_bytes([7; 32]);
        create_repo(
            &self.db,
            &key,
            RepositoryInput {
                name: Some(format!("repo-{}", url.len())),
                url: Some(url.into()),
                password: Some("pw".into()),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap()
    }

    async fn plan(
        &self,
        repo: i64,
        schedule: &str,
        tz: &str,
        hosts: &[i64],
        labels: &[&str],
    ) -> Plan {
        let row = PlanRow {
            name: format!("plan-{schedule}-{}", hosts.len()),
            repository_id: repo,
            paths: vec!["/srv".into()],
            schedule: schedule.into(),
            timezone: tz.into(),
            hosts: hosts.to_vec(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            enabled: true,
            ..Default::default()
        };
        store::plans::create(&self.db, &row, 0).await.unwrap()
    }

    async fn next(&self, plan: i64, host: i64) -> Option<i64> {
        store::plans::schedules_of_plan(&self.db, plan)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.host_id == host)
            .map(|r| r.next_run_at)
    }

    async fn job(&self, id: i64) -> Job {
        store::jobs::get(&self.db, id).await.unwrap()
    }

    async fn backups(&self, plan: i64) -> Vec<Job> {
        store::jobs::list(
            &self.db,
            &store::jobs::JobFilter {
                plan_id: Some(plan),
                kind: Some(JobKind::Backup),
                ..Default::default()
            },
            Page::new(Some(1000), None),
        )
        .await
        .unwrap()
    }
}

impl SchedulerOps for Fake {
    fn db(&self) -> &DatabaseConnection {
        &self.db
    }
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
    fn timezone(&self) -> Tz {
        self.tz
    }
    fn marks(&self) -> &Arc<crate::agents::marks::HostMarks> {
        &self.marks
    }
    async fn queued(&self, jobs: &[Job]) {
        self.queued
            .lock()
            .unwrap()
            .extend(jobs.iter().map(|j| j.id));
    }
}

#[tokio::test]
async fn covered_hosts_get_a_stored_next_run_by_host_and_by_label() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let a = f.host("a", &["db"]).await;
    let b = f.host("b", &[]).await;
    let c = f.host("c", &["web"]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f.plan(repo.id, "0 * * * *", "UTC", &[b], &["db"]).await;
    let earliest = pass(&f).await.unwrap();
    assert_eq!(f.next(p.id, a).await, Some(ms("2026-05-04T11:00:00Z")));
    assert_eq!(f.next(p.id, b).await, Some(ms("2026-05-04T11:00:00Z")));
    assert_eq!(
        f.next(p.id, c).await,
        None,
        "c has neither the id nor the label"
    );
    assert_eq!(earliest, Some(ms("2026-05-04T11:00:00Z")));
    assert!(f.queued().is_empty(), "nothing is due yet");

    // The label goes: a is no longer covered; c gains it.
    store::hosts::set_labels(&f.db, a, &[]).await.unwrap();
    store::hosts::set_labels(&f.db, c, &["db".into()])
        .await
        .unwrap();
    pass(&f).await.unwrap();
    assert_eq!(f.next(p.id, a).await, None);
    assert!(f.next(p.id, c).await.is_some());

    // A changed schedule recomputes the stored run; disabling drops them.
    let mut row = PlanRow::from(&p);
    row.schedule = "30 12 * * *".into();
    store::plans::update(&f.db, p.id, &row, 0).await.unwrap();
    pass(&f).await.unwrap();
    assert_eq!(f.next(p.id, b).await, Some(ms("2026-05-04T12:30:00Z")));
    row.enabled = false;
    store::plans::update(&f.db, p.id, &row, 0).await.unwrap();
    pass(&f).await.unwrap();
    assert!(
        store::plans::schedules_of_plan(&f.db, p.id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn splay_is_stable_per_plan_and_host_and_within_the_window() {
    for (p, h) in [(1, 1), (1, 2), (7, 1000), (123, 9)] {
        let s = splay_ms(p, h, 600);
        assert!((0..600_000).contains(&s), "{s}");
        assert_eq!(s % 1000, 0);
        assert_eq!(s, splay_ms(p, h, 600), "stable");
    }
    let spread: std::collections::HashSet<i64> = (1..50).map(|h| splay_ms(3, h, 3600)).collect();
    assert!(
        spread.len() > 40,
        "hosts spread over the window: {spread:?}"
    );
    assert_eq!(splay_ms(3, 4, 0), 0);

    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let h = f.host("a", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let mut row = PlanRow::from(&f.plan(repo.id, "@hourly", "UTC", &[h], &[]).await);
    row.splay_secs = 1800;
    store::plans::update(&f.db, 1, &row, 0).await.unwrap();
    pass(&f).await.unwrap();
    let off = splay_ms(1, h, 1800);
    let next = f.next(1, h).await.unwrap();
    // The first hourly run plus this host's offset that is still ahead.
    let base = if ms("2026-05-04T10:00:00Z") + off > ms("2026-05-04T10:15:00Z") {
        ms("2026-05-04T10:00:00Z")
    } else {
        ms("2026-05-04T11:00:00Z")
    };
    assert_eq!(next, base + off);
}

#[tokio::test]
async fn a_due_run_queues_one_backup_and_moves_to_the_next_time() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let h = f.host("web-1", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f.plan(repo.id, "0 * * * *", "UTC", &[h], &[]).await;
    pass(&f).await.unwrap();
    assert!(!f.marks.seen(Mark::Jobs, h).maybe);
    f.set("2026-05-04T11:00:00Z");
    pass(&f).await.unwrap();
    let q = f.queued();
    assert_eq!(q.len(), 1);
    // The host's next hello looks for it.
    assert!(f.marks.seen(Mark::Jobs, h).maybe);
    let j = f.job(q[0]).await;
    assert_eq!(
        (j.kind, j.status, j.actor_kind),
        (JobKind::Backup, JobStatus::Queued, ActorKind::Schedule)
    );
    assert_eq!(j.plan_id, Some(p.id));
    let o: agent::wire::ResticOptions =
        serde_json::from_str(j.options.as_deref().unwrap()).unwrap();
    assert_eq!(o.tags, vec![format!("rm-plan:{}", p.id)]);
    assert_eq!(o.host.as_deref(), Some("web-1"));
    assert_eq!(o.paths, vec!["/srv"]);
    assert_eq!(f.next(p.id, h).await, Some(ms("2026-05-04T12:00:00Z")));
    // A second pass at the same time does nothing more.
    pass(&f).await.unwrap();
    assert_eq!(f.queued().len(), 1);
}

#[tokio::test]
async fn still_queued_at_the_next_due_time_is_superseded_and_the_new_one_queues() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let h = f.host("laptop", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f.plan(repo.id, "0 * * * *", "UTC", &[h], &[]).await;
    pass(&f).await.unwrap();
    f.set("2026-05-04T11:00:01Z");
    pass(&f).await.unwrap();
    f.set("2026-05-04T12:00:01Z");
    pass(&f).await.unwrap();
    let q = f.queued();
    assert_eq!(q.len(), 2);
    let old = f.job(q[0]).await;
    assert_eq!(old.status, JobStatus::Skipped);
    assert_eq!(old.error.as_deref(), Some(SUPERSEDED));
    assert_eq!(f.job(q[1]).await.status, JobStatus::Queued);
    // Only one live backup of the plan on the host: it runs once on connect.
    assert_eq!(
        store::plans::live_backups(&f.db, p.id, h)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_run_still_running_makes_the_next_one_skipped() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let h = f.host("db-1", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f.plan(repo.id, "0 * * * *", "UTC", &[h], &[]).await;
    pass(&f).await.unwrap();
    f.set("2026-05-04T11:00:00Z");
    pass(&f).await.unwrap();
    let first = f.queued()[0];
    assert!(store::jobs::mark_dispatched(&f.db, first, 0).await.unwrap());
    f.set("2026-05-04T12:00:00Z");
    pass(&f).await.unwrap();
    assert_eq!(f.queued().len(), 1, "nothing new queued");
    let all = f.backups(p.id).await;
    assert_eq!(all.len(), 2);
    let skipped = all.iter().find(|j| j.id != first).unwrap();
    assert_eq!(skipped.status, JobStatus::Skipped);
    assert_eq!(skipped.error.as_deref(), Some(PREVIOUS_RUNNING));
    assert_eq!(f.job(first).await.status, JobStatus::Running);
    assert_eq!(f.next(p.id, h).await, Some(ms("2026-05-04T13:00:00Z")));
}

/// The dispatcher marks a queued run running just as the next run falls
/// due: the scheduler waits for it and counts it as running (the next run
/// is skipped); it never supersedes a run its agent has been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_being_dispatched_as_the_next_falls_due_counts_as_running() {
    use sea_orm::TransactionTrait;
    let f = Arc::new(Fake::new("2026-05-04T10:15:00Z", "UTC").await);
    let h = f.host("db-2", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f.plan(repo.id, "0 * * * *", "UTC", &[h], &[]).await;
    pass(&*f).await.unwrap();
    f.set("2026-05-04T11:00:00Z");
    pass(&*f).await.unwrap();
    let first = f.queued()[0];
    f.set("2026-05-04T12:00:00Z");
    // The dispatcher's transaction, not yet committed when the run falls due.
    let txn = f.db.begin().await.unwrap();
    assert!(store::jobs::mark_dispatched(&txn, first, 0).await.unwrap());
    let scheduler = tokio::spawn({
        let f = f.clone();
        async move { pass(&*f).await }
    });
    // Let the pass reach the queued run before the dispatcher commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    txn.commit().await.unwrap();
    scheduler.await.unwrap().unwrap();
    assert_eq!(
        f.job(first).await.status,
        JobStatus::Running,
        "never superseded"
    );
    let all = f.backups(p.id).await;
    assert_eq!(all.len(), 2);
    let next = all.iter().find(|j| j.id != first).unwrap();
    assert_eq!(next.status, JobStatus::Skipped);
    assert_eq!(next.error.as_deref(), Some(PREVIOUS_RUNNING));
}

#[tokio::test]
async fn a_server_down_across_several_due_times_runs_each_plan_and_host_once() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let a = f.host("a", &["all"]).await;
    let b = f.host("b", &["all"]).await;
    let repo = f.repo("/srv/repo").await;
    let hourly = f.plan(repo.id, "0 * * * *", "UTC", &[], &["all"]).await;
    let daily = f.plan(repo.id, "@daily", "UTC", &[a], &[]).await;
    pass(&f).await.unwrap();
    // Down for three days: 72 hourly and 3 daily times passed.
    f.set("2026-05-07T10:20:00Z");
    pass(&f).await.unwrap();
    let mut backups = 0;
    for id in f.queued() {
        if f.job(id).await.kind == JobKind::Backup {
            backups += 1;
        }
    }
    assert_eq!(
        backups, 3,
        "one per (plan, host): hourly a, hourly b, daily a"
    );
    assert_eq!(f.backups(hourly.id).await.len(), 2);
    assert_eq!(f.backups(daily.id).await.len(), 1);
    assert_eq!(f.next(hourly.id, a).await, Some(ms("2026-05-07T11:00:00Z")));
    assert_eq!(f.next(hourly.id, b).await, Some(ms("2026-05-07T11:00:00Z")));
    assert_eq!(f.next(daily.id, a).await, Some(ms("2026-05-08T00:00:00Z")));
}

#[tokio::test]
async fn daily_runs_follow_the_wall_clock_across_a_dst_change() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let f = Fake::new("2026-03-28T12:00:00Z", "UTC").await;
    let h = f.host("a", &[]).await;
    let repo = f.repo("/srv/repo").await;
    let p = f
        .plan(repo.id, "30 2 * * *", "Europe/Berlin", &[h], &[])
        .await;
    pass(&f).await.unwrap();
    // 02:30 does not exist on the 29th: the run comes right after the gap.
    let first = f.next(p.id, h).await.unwrap();
    assert_eq!(show(first, tz), "03-29 03:00 CEST");
    f.now.store(first, Ordering::SeqCst);
    pass(&f).await.unwrap();
    assert_eq!(f.queued().len(), 1);
    assert_eq!(show(f.next(p.id, h).await.unwrap(), tz), "03-30 02:30 CEST");
    // Autumn: 02:30 happens twice on 10-25; it runs once that day.
    f.set("2026-10-24T12:00:00Z");
    pass(&f).await.unwrap();
    let oct25 = f.next(p.id, h).await.unwrap();
    assert_eq!(show(oct25, tz), "10-25 02:30 CEST");
    f.now.store(oct25, Ordering::SeqCst);
    pass(&f).await.unwrap();
    assert_eq!(show(f.next(p.id, h).await.unwrap(), tz), "10-26 02:30 CET");
}

#[tokio::test]
async fn maintenance_forgets_per_plan_then_prunes_then_checks_when_due() {
    let f = Fake::new("2026-05-04T02:00:00Z", "UTC").await;
    let h = f.host("a", &[]).await;
    let repo = f.repo("rest:http://127.0.0.1:9/x").await;
    let mut p1 = PlanRow::from(&f.plan(repo.id, "@daily", "UTC", &[h], &[]).await);
    p1.retention.keep_last = Some(2);
    store::plans::update(&f.db, 1, &p1, 0).await.unwrap();
    let p2 = f.plan(repo.id, "@hourly", "UTC", &[h], &[]).await;
    let mut row2 = PlanRow::from(&p2);
    row2.retention.keep_daily = Some(7);
    store::plans::update(&f.db, p2.id, &row2, 0).await.unwrap();
    // A plan without retention gets no forget.
    f.plan(repo.id, "@weekly", "UTC", &[h], &[]).await;
    // The host has used the repository (the maintenance host by default).
    pass(&f).await.unwrap();
    f.set("2026-05-04T02:59:00Z");
    pass(&f).await.unwrap();
    let before = f.queued().len();
    f.set("2026-05-04T03:00:00Z");
    pass(&f).await.unwrap();
    let made: Vec<Job> = {
        let mut v = Vec::new();
        for id in &f.queued()[before..] {
            v.push(f.job(*id).await);
        }
        v.into_iter()
            .filter(|j| j.kind != JobKind::Backup)
            .collect()
    };
    let kinds: Vec<(JobKind, Option<i64>)> = made.iter().map(|j| (j.kind, j.plan_id)).collect();
    assert_eq!(
        kinds,
        vec![
            (JobKind::Forget, Some(1)),
            (JobKind::Forget, Some(p2.id)),
            (JobKind::Prune, None),
            (JobKind::Check, None)
        ]
    );
    let o: agent::wire::ResticOptions =
        serde_json::from_str(made[0].options.as_deref().unwrap()).unwrap();
    assert_eq!(o.tags, vec!["rm-plan:1"]);
    assert_eq!(o.group_by.as_deref(), Some("host,paths"));
    assert_eq!(o.retention.unwrap().keep_last, Some(2));
    assert!(made.iter().all(|j| j.actor_kind == ActorKind::Schedule));

    // The next day, while those are still queued: nothing new.
    f.set("2026-05-05T03:00:00Z");
    let before = f.queued().len();
    maintain_due(&f).await.unwrap();
    assert_eq!(f.queued().len(), before);
    // Once done, and with a check made just now: forget and prune only.
    for j in &made {
        let _ = store::jobs::finish(&f.db, j.id, None, JobStatus::Succeeded, None, None, 0)
            .await
            .unwrap();
    }
    store::repositories::set_last_check(&f.db, repo.id, ms("2026-05-05T03:00:00Z"))
        .await
        .unwrap();
    // (Cleared as a hello that found nothing would: maintenance marks it.)
    let seen = f.marks.seen(Mark::Jobs, h);
    f.marks.settled(Mark::Jobs, h, seen);
    assert!(!f.marks.seen(Mark::Jobs, h).maybe);
    f.set("2026-05-06T03:00:00Z");
    let made = maintain_due(&f).await.unwrap();
    assert!(f.marks.seen(Mark::Jobs, h).maybe);
    let kinds: Vec<JobKind> = made.iter().map(|j| j.kind).collect();
    assert_eq!(
        kinds,
        vec![JobKind::Forget, JobKind::Forget, JobKind::Prune]
    );
}

#[tokio::test]
async fn a_plan_over_many_hosts_stores_one_run_each_in_batches() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let now = f.now_ms();
    // Three batches, the last one partial.
    let n = 2 * store::plans::SCHEDULE_BATCH + 103;
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        hosts.push(
            store::hosts::create(&f.db, &format!("h{i}"), 0)
                .await
                .unwrap()
                .id,
        );
    }
    let repo = f.repo("/srv/repo").await;
    let never_soon = "0 3 29 2 *";
    let mut row = PlanRow::from(&f.plan(repo.id, never_soon, "UTC", &hosts, &[]).await);
    row.splay_secs = 1800;
    let p = store::plans::update(&f.db, 1, &row, 0).await.unwrap();
    sync(&f).await.unwrap();
    let stored = store::plans::schedules_of_plan(&f.db, p.id).await.unwrap();
    assert_eq!(
        stored.iter().map(|r| r.host_id).collect::<Vec<_>>(),
        hosts,
        "exactly one row per covered host"
    );
    let s = schedule::parse(never_soon).unwrap();
    for r in &stored {
        let want = next_run(&s, Tz::UTC, splay_ms(p.id, r.host_id, 1800), now);
        assert_eq!(Some(r.next_run_at), want, "host {}", r.host_id);
        assert_eq!(r.covered_since, now);
        assert_eq!(r.basis, p.basis());
    }
    // A second pass stores nothing new and keeps the rows.
    sync(&f).await.unwrap();
    assert_eq!(
        store::plans::schedules_of_plan(&f.db, p.id).await.unwrap(),
        stored
    );

    // Pairs covered again start from the backups they had: one succeeded,
    // one failed, one never ran.
    let (a, b, c) = (
        hosts[0],
        hosts[store::plans::SCHEDULE_BATCH + 1],
        hosts[n - 1],
    );
    let q = f.plan(repo.id, "0 * * * *", "UTC", &[a, b, c], &[]).await;
    pass(&f).await.unwrap();
    f.set("2026-05-04T11:00:00Z");
    pass(&f).await.unwrap();
    let queued = f.queued();
    assert_eq!(queued.len(), 3);
    let mut done = Vec::new();
    for (id, status) in queued.iter().zip([JobStatus::Succeeded, JobStatus::Failed]) {
        assert!(store::jobs::mark_dispatched(&f.db, *id, 0).await.unwrap());
        store::jobs::finish(&f.db, *id, None, status, None, Some(0), f.now_ms())
            .await
            .unwrap()
            .unwrap();
        done.push(f.job(*id).await.host_id);
    }
    let mut qrow = PlanRow::from(&q);
    qrow.enabled = false;
    store::plans::update(&f.db, q.id, &qrow, 0).await.unwrap();
    sync(&f).await.unwrap();
    assert!(
        store::plans::schedules_of_plan(&f.db, q.id)
            .await
            .unwrap()
            .is_empty()
    );
    qrow.enabled = true;
    store::plans::update(&f.db, q.id, &qrow, 0).await.unwrap();
    sync(&f).await.unwrap();
    let pairs = store::health::pairs_of_hosts(&f.db, &[a, b, c])
        .await
        .unwrap();
    let status_of = |h: i64| {
        pairs
            .iter()
            .find(|x| x.plan_id == q.id && x.host_id == h)
            .map(|x| x.last_status.clone())
    };
    assert_eq!(status_of(done[0]), Some(Some("succeeded".into())));
    assert_eq!(status_of(done[1]), Some(Some("failed".into())));
    let never = [a, b, c].into_iter().find(|h| !done.contains(h)).unwrap();
    assert_eq!(status_of(never), Some(None));
}

#[tokio::test]
async fn many_hosts_due_at_once_fire_in_batches_each_with_its_own_rules() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    // Three batches, the last one partial.
    let n = 2 * FIRE_BATCH + 7;
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        hosts.push(f.host(&format!("w{i}"), &[]).await);
    }
    let repo = f.repo("/srv/repo").await;
    f.plan(repo.id, "0 * * * *", "UTC", &hosts, &[]).await;
    pass(&f).await.unwrap();
    f.set("2026-05-04T11:00:00Z");
    let first = fire_due(&f).await.unwrap();
    assert_eq!(first.len(), n, "one job per host");
    assert_eq!(f.queued().len(), n, "the dispatcher heard of each");
    let mut seen: Vec<i64> = first.iter().map(|j| j.host_id).collect();
    seen.sort_unstable();
    assert_eq!(seen, hosts);
    // The same minute again fires nothing: every row moved on.
    assert!(fire_due(&f).await.unwrap().is_empty());

    // An hour on: the host whose run is still running (in the last batch)
    // gets a skipped run; every other host's queued run is superseded.
    let running = first[n - 1].clone();
    assert!(
        store::jobs::mark_dispatched(&f.db, running.id, 0)
            .await
            .unwrap()
    );
    f.set("2026-05-04T12:00:00Z");
    let second = fire_due(&f).await.unwrap();
    assert_eq!(second.len(), n - 1);
    assert!(second.iter().all(|j| j.host_id != running.host_id));
    assert_eq!(f.job(running.id).await.status, JobStatus::Running);
    for old in &first[..n - 1] {
        let old = f.job(old.id).await;
        assert_eq!(old.status, JobStatus::Skipped);
        assert_eq!(old.error.as_deref(), Some(SUPERSEDED));
    }
    let skipped: Vec<Job> = store::jobs::list(
        &f.db,
        &store::jobs::JobFilter {
            host_id: Some(running.host_id),
            status: Some(JobStatus::Skipped),
            ..Default::default()
        },
        Page::new(Some(10), None),
    )
    .await
    .unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].error.as_deref(), Some(PREVIOUS_RUNNING));
}

/// The batched move takes only rows still at the time the pass read: one
/// that another pass moved meanwhile keeps its new time and fires nothing
/// here; rows with different next times (splay) each get their own.
#[tokio::test]
async fn a_batched_move_leaves_a_row_another_pass_moved() {
    let f = Fake::new("2026-05-04T10:15:00Z", "UTC").await;
    let mut hosts = Vec::new();
    for i in 0..3 {
        hosts.push(f.host(&format!("m{i}"), &[]).await);
    }
    let repo = f.repo("/srv/repo").await;
    let plan = f.plan(repo.id, "0 * * * *", "UTC", &hosts, &[]).await;
    pass(&f).await.unwrap();
    let rows = store::plans::schedules_of_plan(&f.db, plan.id)
        .await
        .unwrap();
    let was = rows[0].next_run_at;
    assert!(rows.iter().all(|r| r.next_run_at == was));
    // Another pass moved the first host's row already.
    let elsewhere = was + 7_000;
    let other = rows.iter().find(|r| r.host_id == hosts[0]).unwrap();
    assert!(
        store::plans::move_schedule(&f.db, other.id, was, elsewhere, "b")
            .await
            .unwrap()
    );
    let moves: Vec<store::plans::Move> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, was, was + 3_600_000 + i as i64, "b".to_string()))
        .collect();
    let moved = store::plans::move_schedules(&f.db, &moves).await.unwrap();
    assert_eq!(moved.len(), 2);
    assert!(!moved.contains(&other.id));
    assert_eq!(f.next(plan.id, hosts[0]).await, Some(elsewhere));
    for (i, r) in rows.iter().enumerate() {
        if r.id != other.id {
            assert_eq!(
                f.next(plan.id, r.host_id).await,
                Some(was + 3_600_000 + i as i64)
            );
        }
    }
}
