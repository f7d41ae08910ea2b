//! Fleet backup health (RESTIC.md "Fleet health"), answered from the stored
//! (plan, host) schedule rows of enabled plans: each row keeps when the plan
//! began to cover the host and the outcome of its last finished backup and
//! last success there ([`refresh`] after every backup end). So the state of
//! one host is an indexed query (`plan_schedules_host`), and the hosts in
//! one state and the count per state are one grouped pass over
//! `plan_schedules` (never a probe per host, never a scan of the jobs table).
//!
//! A host's `backup_state`: `failing` (a covering plan's last finished run
//! failed) > `stale` (a covering plan has no success since the cutoff, and
//! covered it before the cutoff) > `pending` (a covering plan has no
//! finished run yet) > `ok`; `unprotected` when no enabled plan covers it.
//! Only succeeded and failed runs count as finished: a cancelled or skipped
//! run says nothing about the host.
use std::collections::HashMap;

use sea_orm::{ColumnTrait, QuerySelect};
use sea_orm::{
    ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Statement, TransactionSession,
    TransactionTrait,
    sea_query::{Expr, SimpleExpr},
};
use serde::Serialize;

use super::{
    Result,
    jobs::{Job, JobKind, JobStatus},
};
use crate::entities::{jobs, plan_schedules};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Failing,
    Stale,
    Pending,
    Ok,
    Unprotected,
}

impl BackupState {
    pub const ALL: [BackupState; 5] = [
        BackupState::Failing,
        BackupState::Stale,
        BackupState::Pending,
        BackupState::Ok,
        BackupState::Unprotected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Failing => "failing",
            BackupState::Stale => "stale",
            BackupState::Pending => "pending",
            BackupState::Ok => "ok",
            BackupState::Unprotected => "unprotected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl std::fmt::Display for BackupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a covering plan counts as stale: no success at or after `cutoff`
/// (now minus `--backup-stale-after`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    pub cutoff: i64,
}

impl Staleness {
    pub fn new(now: i64, stale_after_ms: i64) -> Self {
        Staleness {
            cutoff: now.saturating_sub(stale_after_ms),
        }
    }
}

/// One stored (plan, host) row of an enabled plan, with its health columns.
#[derive(Clone, Debug, PartialEq)]
pub struct PairHealth {
    pub plan_id: i64,
    pub host_id: i64,
    pub next_run_at: i64,
    pub covered_since: i64,
    pub last_finished_at: Option<i64>,
    pub last_status: Option<String>,
    pub last_success_at: Option<i64>,
    pub last_duration_ms: Option<i64>,
    pub last_data_added: Option<i64>,
}

impl PairHealth {
    pub fn is_failing(&self) -> bool {
        self.last_status.as_deref() == Some(JobStatus::Failed.as_str())
    }
    /// The same test as [`STALE`] in SQL.
    pub fn is_stale(&self, s: Staleness) -> bool {
        self.covered_since < s.cutoff && self.last_success_at.is_none_or(|t| t < s.cutoff)
    }
    pub fn is_pending(&self) -> bool {
        self.last_finished_at.is_none()
    }
}

/// What host objects add (`backup_state`, `last_backup_at`,
/// `last_backup_status`, `next_backup_at`).
#[derive(Clone, Debug, PartialEq)]
pub struct HostHealth {
    pub backup_state: BackupState,
    /// The latest finished (succeeded or failed) backup of any covering plan.
    pub last_backup_at: Option<i64>,
    pub last_backup_status: Option<String>,
    /// The earliest stored next run of any covering plan.
    pub next_backup_at: Option<i64>,
}

impl HostHealth {
    pub const UNPROTECTED: HostHealth = HostHealth {
        backup_state: BackupState::Unprotected,
        last_backup_at: None,
        last_backup_status: None,
        next_backup_at: None,
    };

    /// A host's health from its covering (plan, host) rows.
    pub fn of(pairs: &[&PairHealth], s: Staleness) -> HostHealth {
        if pairs.is_empty() {
            return HostHealth::UNPROTECTED;
        }
        let backup_state = if pairs.iter().any(|p| p.is_failing()) {
            BackupState::Failing
        } else if pairs.iter().any(|p| p.is_stale(s)) {
            BackupState::Stale
        } else if pairs.iter().any(|p| p.is_pending()) {
            BackupState::Pending
        } else {
            BackupState::Ok
        };
        let last = pairs
            .iter()
            .filter_map(|p| p.last_finished_at.map(|t| (t, p.last_status.clone())))
            .max_by_key(|(t, _)| *t);
        HostHealth {
            backup_state,
            last_backup_at: last.as_ref().map(|(t, _)| *t),
            last_backup_status: last.and_then(|(_, s)| s),
            next_backup_at: pairs.iter().map(|p| p.next_run_at).min(),
        }
    }
}

// SQL over `plan_schedules ps JOIN plans p`. Only integers we computed are
// ever formatted in.
const COVERING: &str = "SELECT 1 FROM plan_schedules ps JOIN plans p ON p.id = ps.plan_id \
     WHERE ps.host_id = hosts.id AND p.enabled = TRUE";
/// The hosts an enabled plan covers (uncorrelated: evaluated once).
const COVERED_HOSTS: &str = "SELECT ps.host_id FROM plan_schedules ps \
     JOIN plans p ON p.id = ps.plan_id WHERE p.enabled = TRUE";
const FAILING: &str = "ps.last_status = 'failed'";
/// `{cutoff}` is filled in; the same test as [`PairHealth::is_stale`].
const STALE: &str =
    "ps.covered_since < {cutoff} AND (ps.last_success_at IS NULL OR ps.last_success_at < {cutoff})";
const PENDING: &str = "ps.last_finished_at IS NULL";

/// One grouped pass over the covering rows: per covered host, whether any of
/// its rows is failing, stale, pending (columns `host_id`, `failing`,
/// `stale`, `pending`, each 0 or 1). Uncorrelated, so the database runs it
/// once per query, not once per host.
fn grouped(s: Staleness) -> String {
    let stale = STALE.replace("{cutoff}", &s.cutoff.to_string());
    format!(
        "SELECT ps.host_id, \
         MAX(CASE WHEN {FAILING} THEN 1 ELSE 0 END) AS failing, \
         MAX(CASE WHEN {stale} THEN 1 ELSE 0 END) AS stale, \
         MAX(CASE WHEN {PENDING} THEN 1 ELSE 0 END) AS pending \
         FROM plan_schedules ps JOIN plans p ON p.id = ps.plan_id \
         WHERE p.enabled = TRUE GROUP BY ps.host_id"
    )
}

/// The test on a row `g` of [`grouped`] that its host is in `state`
/// (`None` for unprotected: such a host has no row).
fn group_test(state: BackupState) -> Option<&'static str> {
    match state {
        BackupState::Unprotected => None,
        BackupState::Failing => Some("g.failing = 1"),
        BackupState::Stale => Some("g.failing = 0 AND g.stale = 1"),
        BackupState::Pending => Some("g.failing = 0 AND g.stale = 0 AND g.pending = 1"),
        BackupState::Ok => Some("g.failing = 0 AND g.stale = 0 AND g.pending = 0"),
    }
}

/// The SQL test that a row of `hosts` is in `state`: membership in a set
/// computed once from [`grouped`].
fn state_sql(state: BackupState, s: Staleness) -> String {
    match group_test(state) {
        None => format!("hosts.id NOT IN ({COVERED_HOSTS})"),
        Some(t) => format!(
            "hosts.id IN (SELECT g.host_id FROM ({}) g WHERE {t})",
            grouped(s)
        ),
    }
}

/// A condition on `hosts` for the `?backup=` filter.
pub fn condition(state: BackupState, s: Staleness) -> SimpleExpr {
    Expr::cust(format!("({})", state_sql(state, s)))
}

/// The query behind [`counts`]: every host joined to its row of [`grouped`]
/// (one pass over `plan_schedules`), counted per state.
fn counts_sql(s: Staleness) -> String {
    format!(
        "SELECT t.backup_state, COUNT(*) AS n FROM \
         (SELECT CASE WHEN g.host_id IS NULL THEN 'unprotected' \
         WHEN g.failing = 1 THEN 'failing' WHEN g.stale = 1 THEN 'stale' \
         WHEN g.pending = 1 THEN 'pending' ELSE 'ok' END AS backup_state \
         FROM hosts LEFT JOIN ({}) g ON g.host_id = hosts.id) t \
         GROUP BY t.backup_state",
        grouped(s)
    )
}

/// How many hosts are in each state, in one query: one grouped pass over
/// `plan_schedules` joined to `hosts`.
pub async fn counts<C: ConnectionTrait>(db: &C, s: Staleness) -> Result<HashMap<BackupState, u64>> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            counts_sql(s),
        ))
        .await?;
    let mut out: HashMap<BackupState, u64> = BackupState::ALL.iter().map(|b| (*b, 0)).collect();
    for row in rows {
        let state: String = row.try_get_by_index(0)?;
        let n: i64 = row.try_get_by_index(1)?;
        if let Some(b) = BackupState::parse(&state) {
            out.insert(b, n.max(0) as u64);
        }
    }
    Ok(out)
}

const PAIR_COLUMNS: &str = "ps.plan_id, ps.host_id, ps.next_run_at, ps.covered_since, \
     ps.last_finished_at, ps.last_status, ps.last_success_at, ps.last_duration_ms, \
     ps.last_data_added";

fn pair_of(row: &sea_orm::QueryResult) -> Result<PairHealth> {
    Ok(PairHealth {
        plan_id: row.try_get_by_index(0)?,
        host_id: row.try_get_by_index(1)?,
        next_run_at: row.try_get_by_index(2)?,
        covered_since: row.try_get_by_index(3)?,
        last_finished_at: row.try_get_by_index(4)?,
        last_status: row.try_get_by_index(5)?,
        last_success_at: row.try_get_by_index(6)?,
        last_duration_ms: row.try_get_by_index(7)?,
        last_data_added: row.try_get_by_index(8)?,
    })
}

/// The covering (plan, host) rows of enabled plans for some hosts.
pub async fn pairs_of_hosts<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<Vec<PairHealth>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let list = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT {PAIR_COLUMNS} FROM plan_schedules ps JOIN plans p ON p.id = ps.plan_id \
             WHERE p.enabled = TRUE AND ps.host_id IN ({list}) ORDER BY ps.host_id, ps.plan_id"
        );
        for row in db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await?
        {
            out.push(pair_of(&row)?);
        }
    }
    Ok(out)
}

/// The health of each of these hosts (a page of the host list).
pub async fn of_hosts<C: ConnectionTrait>(
    db: &C,
    ids: &[i64],
    s: Staleness,
) -> Result<HashMap<i64, HostHealth>> {
    let pairs = pairs_of_hosts(db, ids).await?;
    let mut by_host: HashMap<i64, Vec<&PairHealth>> = HashMap::new();
    for p in &pairs {
        by_host.entry(p.host_id).or_default().push(p);
    }
    Ok(ids
        .iter()
        .map(|id| {
            let h = by_host
                .get(id)
                .map(|ps| HostHealth::of(ps, s))
                .unwrap_or(HostHealth::UNPROTECTED);
            (*id, h)
        })
        .collect())
}

/// A covering (plan, host) row with the names metrics and alerts show.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedPair {
    pub pair: PairHealth,
    pub host_name: String,
    pub plan_name: String,
}

/// Every covering (plan, host) row of enabled plans that has had a
/// success, or (with `stale`) that is stale: one row per pair, bounded by
/// the number of stored schedules.
pub async fn named_pairs<C: ConnectionTrait>(
    db: &C,
    stale: Option<Staleness>,
) -> Result<Vec<NamedPair>> {
    let filter = match stale {
        Some(s) => STALE.replace("{cutoff}", &s.cutoff.to_string()),
        None => "ps.last_success_at IS NOT NULL".to_string(),
    };
    let sql = format!(
        "SELECT {PAIR_COLUMNS}, h.name, p.name FROM plan_schedules ps \
         JOIN plans p ON p.id = ps.plan_id JOIN hosts h ON h.id = ps.host_id \
         WHERE p.enabled = TRUE AND {filter} ORDER BY ps.host_id, ps.plan_id"
    );
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(NamedPair {
            pair: pair_of(&row)?,
            host_name: row.try_get_by_index(9)?,
            plan_name: row.try_get_by_index(10)?,
        });
    }
    Ok(out)
}

/// Hosts an enabled plan covers whose restic-capable agent said in its
/// last hello that it has no restic: (id, name). `only`: just that host.
pub async fn restic_missing<C: ConnectionTrait>(
    db: &C,
    only: Option<i64>,
) -> Result<Vec<(i64, String)>> {
    let one = only
        .map(|id| format!(" AND hosts.id = {id}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT hosts.id, hosts.name FROM hosts WHERE hosts.restic_capable = TRUE \
         AND hosts.restic_version IS NULL{one} AND EXISTS ({COVERING}) ORDER BY hosts.id"
    );
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get_by_index(0)?, row.try_get_by_index(1)?));
    }
    Ok(out)
}

/// How many jobs of each kind are in each status: (kind, status, count),
/// one grouped query over the `jobs_kind_status` index.
pub async fn jobs_by_kind_status<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, String, i64)>> {
    let sql = "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status ORDER BY kind, status";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((
            row.try_get_by_index(0)?,
            row.try_get_by_index(1)?,
            row.try_get_by_index(2)?,
        ));
    }
    Ok(out)
}

fn finished_backups(plan_id: i64, host_id: i64) -> sea_orm::Select<jobs::Entity> {
    jobs::Entity::find()
        .filter(jobs::Column::PlanId.eq(plan_id))
        .filter(jobs::Column::HostId.eq(host_id))
        .filter(jobs::Column::Kind.eq(JobKind::Backup.as_str()))
        .order_by_desc(jobs::Column::Id)
}

/// Recomputes a (plan, host) row's health columns from its jobs (two
/// lookups through `jobs_plan_host`). Called when a backup of the plan on
/// the host ends and when the row is created, so it is right whatever order
/// those happen in; a row that does not exist is left alone. The row is
/// taken for writing before the jobs are read, in a transaction (or a
/// savepoint) of its own: a refresh waiting behind another's open write
/// (an end still being committed) then reads that end, never writes over
/// it with what it read before.
pub async fn refresh<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    plan_id: i64,
    host_id: i64,
) -> Result<()> {
    let txn = db.begin().await?;
    plan_schedules::Entity::update_many()
        .col_expr(
            plan_schedules::Column::LastStatus,
            Expr::col(plan_schedules::Column::LastStatus),
        )
        .filter(plan_schedules::Column::PlanId.eq(plan_id))
        .filter(plan_schedules::Column::HostId.eq(host_id))
        .exec(&txn)
        .await?;
    recompute(&txn, plan_id, host_id).await?;
    txn.commit().await?;
    Ok(())
}

async fn recompute<C: ConnectionTrait>(db: &C, plan_id: i64, host_id: i64) -> Result<()> {
    let last: Option<Job> = finished_backups(plan_id, host_id)
        .filter(
            jobs::Column::Status.is_in([JobStatus::Succeeded.as_str(), JobStatus::Failed.as_str()]),
        )
        .limit(1)
        .one(db)
        .await?
        .map(Into::into);
    let success: Option<Job> = match &last {
        Some(j) if j.status == JobStatus::Succeeded => Some(j.clone()),
        _ => finished_backups(plan_id, host_id)
            .filter(jobs::Column::Status.eq(JobStatus::Succeeded.as_str()))
            .limit(1)
            .one(db)
            .await?
            .map(Into::into),
    };
    let result = success
        .as_ref()
        .and_then(|j| j.result.clone())
        .and_then(|v| serde_json::from_value::<agent::wire::BackupResult>(v).ok());
    let duration_ms = match (&result, &success) {
        (Some(r), _) if r.duration_secs > 0.0 => Some((r.duration_secs * 1000.0) as i64),
        (_, Some(j)) => j.started_at.zip(j.finished_at).map(|(a, b)| b - a),
        _ => None,
    };
    let data_added = result.map(|r| i64::try_from(r.data_added).unwrap_or(i64::MAX));
    plan_schedules::Entity::update_many()
        .col_expr(
            plan_schedules::Column::LastFinishedAt,
            Expr::value(last.as_ref().and_then(|j| j.finished_at)),
        )
        .col_expr(
            plan_schedules::Column::LastStatus,
            Expr::value(last.as_ref().map(|j| j.status.as_str().to_string())),
        )
        .col_expr(
            plan_schedules::Column::LastSuccessAt,
            Expr::value(success.as_ref().and_then(|j| j.finished_at)),
        )
        .col_expr(
            plan_schedules::Column::LastDurationMs,
            Expr::value(duration_ms),
        )
        .col_expr(
            plan_schedules::Column::LastDataAdded,
            Expr::value(data_added),
        )
        .filter(plan_schedules::Column::PlanId.eq(plan_id))
        .filter(plan_schedules::Column::HostId.eq(host_id))
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(covered_since: i64, finished: Option<(i64, &str)>, success: Option<i64>) -> PairHealth {
        PairHealth {
            plan_id: 1,
            host_id: 1,
            next_run_at: 5_000,
            covered_since,
            last_finished_at: finished.map(|f| f.0),
            last_status: finished.map(|f| f.1.to_string()),
            last_success_at: success,
            last_duration_ms: None,
            last_data_added: None,
        }
    }

    #[test]
    fn a_host_takes_the_worst_state_of_its_plans() {
        let s = Staleness::new(100_000, 10_000); // cutoff 90_000
        let ok = pair(0, Some((95_000, "succeeded")), Some(95_000));
        let failed = pair(0, Some((96_000, "failed")), Some(95_000));
        let stale = pair(0, Some((80_000, "succeeded")), Some(80_000));
        let pending = pair(99_000, None, None);
        let never_covered_long = pair(0, None, None);
        assert_eq!(
            HostHealth::of(&[], s).backup_state,
            BackupState::Unprotected
        );
        assert_eq!(HostHealth::of(&[&ok], s).backup_state, BackupState::Ok);
        assert_eq!(
            HostHealth::of(&[&ok, &pending], s).backup_state,
            BackupState::Pending
        );
        assert_eq!(
            HostHealth::of(&[&pending, &stale], s).backup_state,
            BackupState::Stale
        );
        assert_eq!(
            HostHealth::of(&[&never_covered_long], s).backup_state,
            BackupState::Stale
        );
        assert_eq!(
            HostHealth::of(&[&stale, &failed, &pending], s).backup_state,
            BackupState::Failing
        );
        let h = HostHealth::of(&[&ok, &failed, &pending], s);
        assert_eq!(h.last_backup_at, Some(96_000));
        assert_eq!(h.last_backup_status.as_deref(), Some("failed"));
        assert_eq!(h.next_backup_at, Some(5_000));
    }

    #[test]
    fn backup_states_round_trip() {
        for b in BackupState::ALL {
            assert_eq!(BackupState::parse(b.as_str()), Some(b));
        }
        assert_eq!(BackupState::parse("fine"), None);
    }
}
