//! The worker against fakes (hub, dispatch, completion events) over a real
//! SQLite store: the plan's six cases, resume after a restart, racing starts.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::sync::broadcast;

use super::*;
use crate::store::fleet_updates::{self as fu, PlannedHost};

#[derive(Clone)]
enum Behaviour {
    Succeed,
    Fail(&'static str),
    /// Never finishes until the test says so.
    Hold,
    /// Succeeds, and takes this other host offline as it does.
    SucceedAndDrop(i64),
}

struct Fake {
    db: DatabaseConnection,
    hosts: Mutex<HashMap<i64, Host>>,
    online: Mutex<HashSet<i64>>,
    behaviour: Mutex<HashMap<i64, Behaviour>>,
    dispatched: Mutex<Vec<i64>>,
    outcomes: Mutex<HashMap<i64, Finished>>,
    halted: Mutex<Vec<(i64, String)>>,
    /// Dispatch answers this instead, once (e.g. an adopted job).
    dispatch_error: Mutex<Option<DispatchError>>,
    events: broadcast::Sender<Finished>,
    next_job: AtomicI64,
}

fn host(id: i64, version: &str) -> Host {
    Host {
        id,
        name: format!("h{id}"),
        hostname: format!("h{id}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: version.into(),
        online: true,
        last_seen_at: None,
        created_at: 0,
        enrolled: true,
        labels: vec![],
        restic_version: None,
        restic_capable: false,
    }
}

impl Fake {
    async fn new(dir: &tempfile::TempDir, hosts: &[(i64, &str)]) -> Arc<Fake> {
        let db = crate::db::testing::fresh_database(dir.path())
            .await
            .unwrap();
        Arc::new(Fake {
            db,
            hosts: Mutex::new(hosts.iter().map(|(id, v)| (*id, host(*id, v))).collect()),
            online: Mutex::new(hosts.iter().map(|(id, _)| *id).collect()),
            behaviour: Mutex::new(HashMap::new()),
            dispatched: Mutex::new(vec![]),
            outcomes: Mutex::new(HashMap::new()),
            halted: Mutex::new(vec![]),
            dispatch_error: Mutex::new(None),
            events: broadcast::channel(64).0,
            next_job: AtomicI64::new(100),
        })
    }

    fn set(&self, host: i64, b: Behaviour) {
        self.behaviour.lock().unwrap().insert(host, b);
    }

    fn finish(&self, job_id: i64, host_id: i64, ok: bool, reason: Option<&str>) {
        let f = Finished {
            job_id,
            host_id,
            succeeded: ok,
            reason: reason.map(Into::into),
        };
        self.outcomes.lock().unwrap().insert(job_id, f.clone());
        let _ = self.events.send(f);
    }

    fn dispatched(&self) -> Vec<i64> {
        self.dispatched.lock().unwrap().clone()
    }

    async fn start(&self, ids: &[i64]) -> FleetUpdate {
        let planned: Vec<PlannedHost> = ids
            .iter()
            .map(|id| PlannedHost {
                host_id: *id,
                hostname: format!("h{id}"),
                from_version: "v1".into(),
            })
            .collect();
        fu::create(&self.db, Some(1), "admin", "v2", &planned, 0)
            .await
            .unwrap()
    }
}

impl FleetOps for Fake {
    fn db(&self) -> &DatabaseConnection {
        &self.db
    }
    fn now_ms(&self) -> i64 {
        1
    }
    async fn host(&self, id: i64) -> Option<Host> {
        self.hosts.lock().unwrap().get(&id).cloned()
    }
    fn is_online(&self, id: i64) -> bool {
        self.online.lock().unwrap().contains(&id)
    }
    async fn dispatch(&self, host_id: i64, _run: &FleetUpdate) -> Result<i64, DispatchError> {
        if let Some(e) = self.dispatch_error.lock().unwrap().take() {
            return Err(e);
        }
        self.dispatched.lock().unwrap().push(host_id);
        let job = self.next_job.fetch_add(1, Ordering::SeqCst);
        let b = self
            .behaviour
            .lock()
            .unwrap()
            .get(&host_id)
            .cloned()
            .unwrap_or(Behaviour::Succeed);
        match b {
            Behaviour::Succeed => self.finish(job, host_id, true, None),
            Behaviour::Fail(r) => self.finish(job, host_id, false, Some(r)),
            Behaviour::Hold => {}
            Behaviour::SucceedAndDrop(other) => {
                self.online.lock().unwrap().remove(&other);
                self.finish(job, host_id, true, None);
            }
        }
        Ok(job)
    }
    async fn job_outcome(&self, job_id: i64) -> Option<Finished> {
        self.outcomes.lock().unwrap().get(&job_id).cloned()
    }
    fn subscribe(&self) -> broadcast::Receiver<Finished> {
        self.events.subscribe()
    }
    async fn raise_halted(&self, run_id: i64, reason: &str) {
        self.halted.lock().unwrap().push((run_id, reason.into()));
    }
}

async fn statuses(fake: &Fake, id: i64) -> (FleetUpdate, Vec<(i64, HostStatus, Option<String>)>) {
    let (run, hosts) = fu::get_with_hosts(&fake.db, id).await.unwrap();
    (
        run,
        hosts
            .into_iter()
            .map(|h| (h.host_id, h.status, h.failed_reason))
            .collect(),
    )
}

#[tokio::test]
async fn all_hosts_succeed_and_the_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1"), (2, "v1")]).await;
    let run = fake.start(&[1, 2]).await;
    drive(&*fake, &Fleet::default(), run.id).await.unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Completed);
    assert!(run.completed_at.is_some());
    assert_eq!(
        hosts.iter().map(|h| h.1).collect::<Vec<_>>(),
        [HostStatus::Succeeded, HostStatus::Succeeded]
    );
    assert_eq!(fake.dispatched(), [1, 2]);
}

#[tokio::test]
async fn the_second_host_timing_out_halts_the_run_and_leaves_the_third_pending() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1"), (2, "v1"), (3, "v1")]).await;
    fake.set(
        2,
        Behaviour::Fail("timeout: agent did not reconnect within 90s"),
    );
    let run = fake.start(&[1, 2, 3]).await;
    drive(&*fake, &Fleet::default(), run.id).await.unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Halted);
    assert_eq!(
        run.halted_reason.as_deref(),
        Some("update failed on h2: timeout: agent did not reconnect within 90s")
    );
    assert_eq!(hosts[0].1, HostStatus::Succeeded);
    assert_eq!(hosts[1].1, HostStatus::Failed);
    assert_eq!(hosts[2].1, HostStatus::Pending);
    assert_eq!(fake.dispatched(), [1, 2]);
    assert_eq!(
        fake.halted.lock().unwrap().len(),
        1,
        "fleet_update_halted raised once"
    );
}

#[tokio::test]
async fn a_host_going_offline_mid_run_halts_with_host_went_offline() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1"), (2, "v1"), (3, "v1")]).await;
    fake.set(1, Behaviour::SucceedAndDrop(2));
    let run = fake.start(&[1, 2, 3]).await;
    drive(&*fake, &Fleet::default(), run.id).await.unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Halted);
    assert_eq!(run.halted_reason.as_deref(), Some("host went offline: h2"));
    assert_eq!(hosts[1].2.as_deref(), Some("host offline at dispatch time"));
    assert_eq!(hosts[2].1, HostStatus::Pending);
    assert_eq!(fake.dispatched(), [1]);
}

#[tokio::test]
async fn a_host_already_at_target_or_deleted_is_skipped_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v2"), (2, "v1")]).await;
    let run = fake.start(&[1, 9, 2]).await; // host 9 was removed
    drive(&*fake, &Fleet::default(), run.id).await.unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Completed);
    assert_eq!(
        hosts[0],
        (1, HostStatus::Skipped, Some("already at target".into()))
    );
    assert_eq!(
        hosts[1],
        (9, HostStatus::Skipped, Some("host deleted".into()))
    );
    assert_eq!(hosts[2].1, HostStatus::Succeeded);
    assert_eq!(fake.dispatched(), [2]);
}

#[tokio::test]
async fn cancel_mid_run_lets_the_current_job_finish_and_dispatches_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1"), (2, "v1")]).await;
    fake.set(1, Behaviour::Hold);
    let run = fake.start(&[1, 2]).await;
    let fleet = Arc::new(Fleet::default());
    let (f2, fl2, id) = (fake.clone(), fleet.clone(), run.id);
    let task = tokio::spawn(async move { drive(&*f2, &fl2, id).await });
    for _ in 0..200 {
        if !fake.dispatched().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.dispatched(), [1]);
    assert!(fu::cancel(&fake.db, run.id, 2).await.unwrap());
    fleet.kick();
    fake.finish(100, 1, true, None); // the current host's job ends on its own
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Cancelled);
    assert_eq!(hosts[0].1, HostStatus::Succeeded);
    assert_eq!(hosts[1].1, HostStatus::Pending);
    assert_eq!(fake.dispatched(), [1], "no dispatch after the cancel");
}

#[tokio::test]
async fn a_second_start_while_one_runs_is_refused_even_when_racing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1")]).await;
    let planned = || {
        vec![PlannedHost {
            host_id: 1,
            hostname: "h1".into(),
            from_version: "v1".into(),
        }]
    };
    let (p1, p2) = (planned(), planned());
    let (a, b) = tokio::join!(
        fu::create(&fake.db, Some(1), "admin", "v2", &p1, 0),
        fu::create(&fake.db, Some(1), "admin", "v2", &p2, 0),
    );
    let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "exactly one racing start wins");
    let err = if let Err(e) = a { e } else { b.unwrap_err() };
    assert!(
        matches!(
            err,
            crate::store::StoreError::Conflict("already_running", _)
        ),
        "{err:?}"
    );
    let again = fu::create(&fake.db, Some(1), "admin", "v2", &planned(), 0).await;
    assert!(matches!(
        again,
        Err(crate::store::StoreError::Conflict("already_running", _))
    ));
}

#[tokio::test]
async fn a_resumed_run_never_dispatches_a_host_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&dir, &[(1, "v1"), (2, "v1"), (3, "v1")]).await;
    let run = fake.start(&[1, 2, 3]).await;
    // Before the "restart": host 1 was dispatched as job 77, which has
    // since succeeded; host 2's update was sent but not yet recorded here.
    fu::set_host_status(&fake.db, run.id, 1, HostStatus::Running, None, Some(77))
        .await
        .unwrap();
    fake.outcomes.lock().unwrap().insert(
        77,
        Finished {
            job_id: 77,
            host_id: 1,
            succeeded: true,
            reason: None,
        },
    );
    *fake.dispatch_error.lock().unwrap() = Some(DispatchError::UpdateInProgress(78));
    fake.outcomes.lock().unwrap().insert(
        78,
        Finished {
            job_id: 78,
            host_id: 2,
            succeeded: true,
            reason: None,
        },
    );
    drive(&*fake, &Fleet::default(), run.id).await.unwrap();
    let (run, hosts) = statuses(&fake, run.id).await;
    assert_eq!(run.status, FleetStatus::Completed);
    assert!(
        hosts.iter().all(|h| h.1 == HostStatus::Succeeded),
        "{hosts:?}"
    );
    assert_eq!(
        fake.dispatched(),
        [3],
        "hosts 1 and 2 were not dispatched again"
    );
    let (_, rows) = fu::get_with_hosts(&fake.db, run.id).await.unwrap();
    assert_eq!(rows[1].job_id, Some(78), "the live job was adopted");
}
