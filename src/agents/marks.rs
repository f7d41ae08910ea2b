//! What a hello might have to settle, kept in memory so that the common
//! hello (a host with no open alert and no live job) reads nothing: which
//! hosts *may* have an open alert a hello can settle (`host_offline`,
//! `update_failed`, `restic_missing`) and which *may* have a live job
//! (queued or running, of any kind). A third record, kept the same way,
//! says which hosts may have an open `backup_failed` or `backup_stale`
//! alert, so a successful backup of an unmarked host (nearly every one)
//! looks for none to resolve.
//!
//! A host that is not marked has none: its hello skips the reads. A marked
//! host's hello reads, as it always did, and clears the mark when the read
//! finds nothing. So a stale mark costs one read; a missing one would lose
//! an alert's resolve or a job's dispatch, and the rules below keep it from
//! happening:
//!
//! - loaded from the database at server start (one query each);
//! - whatever creates such a row (`alerts::raise`, every job creation) holds
//!   a [`MarkGuard`] across its write: the host is marked before the write
//!   and again when the guard drops, after the commit (or the failure);
//! - a hello takes [`HostMarks::seen`] *before* its read and clears with
//!   [`HostMarks::settled`] only if nothing marked the host since: a row
//!   committed after the read began was marked again after its commit, so
//!   the clear is refused and the next hello reads again.
//!
//! Rows written straight to the database by another process while the
//! server runs are not seen until a restart (the server owns its database).
//!
//! Memory: an entry only for a marked host, 16 bytes of key and stamp plus
//! the map's control byte (about 20–40 bytes a host, by load factor), in
//! two maps; an unmarked host costs nothing.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use sea_orm::ConnectionTrait;

use crate::store;

/// Which record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// An open `host_offline`, `update_failed` or `restic_missing` alert.
    Alerts,
    /// A queued or running job.
    Jobs,
    /// An open `backup_failed` or `backup_stale` alert (a successful
    /// backup resolves them).
    BackupAlerts,
}

/// The alert kinds a hello settles: what [`Mark::Alerts`] tracks.
pub const HELLO_ALERT_KINDS: [&str; 3] = [
    crate::alerts::HOST_OFFLINE,
    crate::alerts::UPDATE_FAILED,
    crate::alerts::health::RESTIC_MISSING,
];

/// The alert kinds a successful backup settles: what [`Mark::BackupAlerts`]
/// tracks. Their keys are `<kind>:<host id>:<plan id>`.
pub const BACKUP_ALERT_KINDS: [&str; 2] = [
    crate::restic::plans::BACKUP_FAILED,
    crate::alerts::health::BACKUP_STALE,
];

#[derive(Default)]
struct Inner {
    /// Bumped by every mark.
    stamp: u64,
    alerts: HashMap<i64, u64>,
    jobs: HashMap<i64, u64>,
    backups: HashMap<i64, u64>,
}

impl Inner {
    fn map(&mut self, m: Mark) -> &mut HashMap<i64, u64> {
        match m {
            Mark::Alerts => &mut self.alerts,
            Mark::Jobs => &mut self.jobs,
            Mark::BackupAlerts => &mut self.backups,
        }
    }
}

#[derive(Default)]
pub struct HostMarks {
    inner: Mutex<Inner>,
}

/// A host's mark as a hello saw it before reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// False: the host has nothing of this kind; skip the read.
    pub maybe: bool,
    stamp: u64,
}

impl Seen {
    /// For a caller without a record (it reads, and never clears).
    pub const MAYBE: Seen = Seen {
        maybe: true,
        stamp: 0,
    };
}

/// The host of an alert key a hello settles (`<kind>:<host id>`), if it is
/// one.
pub fn hello_alert_host(dedup_key: &str) -> Option<i64> {
    let (kind, id) = dedup_key.split_once(':')?;
    if !HELLO_ALERT_KINDS.contains(&kind) {
        return None;
    }
    id.parse().ok()
}

/// The record an alert key belongs to and its host, if it is tracked.
pub fn alert_mark(dedup_key: &str) -> Option<(Mark, i64)> {
    if let Some(id) = hello_alert_host(dedup_key) {
        return Some((Mark::Alerts, id));
    }
    let mut parts = dedup_key.split(':');
    let (kind, host) = (parts.next()?, parts.next()?);
    if !BACKUP_ALERT_KINDS.contains(&kind) {
        return None;
    }
    Some((Mark::BackupAlerts, host.parse().ok()?))
}

impl HostMarks {
    /// The record as the database has it now: hosts with an open alert of a
    /// kind a hello or a backup settles, hosts with a live job.
    pub async fn load<C: ConnectionTrait>(db: &C) -> store::Result<HostMarks> {
        let marks = HostMarks::default();
        for key in store::alerts::active_keys_of_kinds(db, &HELLO_ALERT_KINDS).await? {
            if let Some(id) = hello_alert_host(&key) {
                marks.mark(Mark::Alerts, id);
            }
        }
        for key in store::alerts::active_keys_of_kinds(db, &BACKUP_ALERT_KINDS).await? {
            if let Some((m, id)) = alert_mark(&key) {
                marks.mark(m, id);
            }
        }
        for id in store::jobs::hosts_with_live_jobs(db).await? {
            marks.mark(Mark::Jobs, id);
        }
        Ok(marks)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is one insert or remove: a panic elsewhere while
        // holding the lock leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host may have something of this kind: its next hello reads.
    pub fn mark(&self, m: Mark, host_id: i64) {
        let mut inner = self.lock();
        inner.stamp += 1;
        let stamp = inner.stamp;
        inner.map(m).insert(host_id, stamp);
    }

    /// Marks the host now and again when the guard drops: hold it across
    /// the transaction that writes the alert or job.
    pub fn guard(self: &Arc<Self>, m: Mark, host_id: i64) -> MarkGuard {
        self.mark(m, host_id);
        MarkGuard {
            marks: self.clone(),
            mark: m,
            host_id,
        }
    }

    /// Whether the host is marked; take it before the read that checks.
    pub fn seen(&self, m: Mark, host_id: i64) -> Seen {
        let mut inner = self.lock();
        let stamp = inner.stamp;
        Seen {
            maybe: inner.map(m).contains_key(&host_id),
            stamp,
        }
    }

    /// A read begun after `seen` found nothing of this kind: clears the
    /// mark, unless something marked the host since `seen`.
    pub fn settled(&self, m: Mark, host_id: i64, seen: Seen) {
        if !seen.maybe || seen == Seen::MAYBE {
            return;
        }
        let mut inner = self.lock();
        let map = inner.map(m);
        if map.get(&host_id).is_some_and(|s| *s <= seen.stamp) {
            map.remove(&host_id);
        }
    }

    /// How many hosts are marked.
    pub fn len(&self, m: Mark) -> usize {
        self.lock().map(m).len()
    }

    pub fn is_empty(&self, m: Mark) -> bool {
        self.len(m) == 0
    }
}

/// See [`HostMarks::guard`].
pub struct MarkGuard {
    marks: Arc<HostMarks>,
    mark: Mark,
    host_id: i64,
}

impl Drop for MarkGuard {
    fn drop(&mut self) {
        self.marks.mark(self.mark, self.host_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_clears_only_when_nothing_marked_the_host_since_the_read_began() {
        let marks = Arc::new(HostMarks::default());
        assert!(!marks.seen(Mark::Jobs, 1).maybe);
        marks.mark(Mark::Jobs, 1);
        let seen = marks.seen(Mark::Jobs, 1);
        assert!(seen.maybe);
        assert!(
            !marks.seen(Mark::Alerts, 1).maybe,
            "the records are separate"
        );
        marks.settled(Mark::Jobs, 1, seen);
        assert!(!marks.seen(Mark::Jobs, 1).maybe);

        // A write in flight across the read: its guard marks again after
        // the commit, and the clear that raced it is refused.
        let guard = marks.guard(Mark::Jobs, 2);
        let seen = marks.seen(Mark::Jobs, 2);
        drop(guard);
        marks.settled(Mark::Jobs, 2, seen);
        assert!(marks.seen(Mark::Jobs, 2).maybe);
        // The next read clears it.
        let seen = marks.seen(Mark::Jobs, 2);
        marks.settled(Mark::Jobs, 2, seen);
        assert!(marks.is_empty(Mark::Jobs));

        // A clear with a snapshot from before any mark does nothing.
        marks.mark(Mark::Alerts, 3);
        marks.settled(Mark::Alerts, 3, Seen::MAYBE);
        assert_eq!(marks.len(Mark::Alerts), 1);
    }

    #[test]
    fn alert_keys_a_hello_settles_name_their_host() {
        assert_eq!(hello_alert_host("host_offline:7"), Some(7));
        assert_eq!(hello_alert_host("update_failed:12"), Some(12));
        assert_eq!(hello_alert_host("restic_missing:3"), Some(3));
        assert_eq!(hello_alert_host("backup_stale:3"), None);
        assert_eq!(hello_alert_host("fleet_update_halted:1"), None);
        assert_eq!(hello_alert_host("host_offline:x"), None);
        assert_eq!(alert_mark("host_offline:7"), Some((Mark::Alerts, 7)));
        assert_eq!(
            alert_mark("backup_failed:4:9"),
            Some((Mark::BackupAlerts, 4))
        );
        assert_eq!(
            alert_mark("backup_stale:5:1"),
            Some((Mark::BackupAlerts, 5))
        );
        assert_eq!(alert_mark("check_failed:1:2"), None);
        assert_eq!(alert_mark("backup_failed:x:1"), None);
    }
}
