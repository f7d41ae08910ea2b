//! Jobs and their logs. State changes are conditional updates, so a job in a
//! terminal state never changes again and a job of another host can never
//! be touched, whatever the caller passes in.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};
use crate::entities::{job_logs, jobs};

mod lifecycle;
mod logs;
mod query;
mod restic;

pub use lifecycle::{Outcome, Refusal, Transition, finish, finish_with, start};
pub use logs::{JobLines, append_logs};
pub use query::{
    JobFilter, count, hosts_with_live_jobs, list, live_of_kind, next_deadline, overdue,
};
pub use restic::{
    NewResticJob, create_restic, create_restic_many, live_restic_on_host, mark_dispatched,
    mark_dispatched_many, queued_restic, requeue, running_restic, running_restic_on_host,
};

/// Default per-job log cap; past it one "log truncated" line is kept and
/// the rest dropped (`Settings::job_log_cap_bytes`).
pub const LOG_CAP_BYTES: i64 = 10 * 1024 * 1024;
pub const TRUNCATED_LINE: &str =
    "[log truncated: this job's output passed the server's log limit; later lines were dropped]";

macro_rules! string_enum {
    ($name:ident { $($var:ident => $s:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),* } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$var),)* _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(JobKind {
    Backup => "backup", Init => "init", Forget => "forget", Prune => "prune", Check => "check",
    Unlock => "unlock", Restore => "restore", Diff => "diff", Update => "update",
    Snapshots => "snapshots", Ls => "ls", Stats => "stats",
});
string_enum!(JobStatus {
    Queued => "queued", Running => "running", Succeeded => "succeeded", Failed => "failed",
    Cancelled => "cancelled", Skipped => "skipped",
});

impl JobKind {
    /// Runs restic on an agent (every kind but the agent's own update).
    pub fn is_restic(self) -> bool {
        self != JobKind::Update
    }

    /// Runs alone in its repository (per host for a local one): never
    /// beside another job there.
    pub fn is_exclusive(self) -> bool {
        matches!(
            self,
            JobKind::Forget | JobKind::Prune | JobKind::Check | JobKind::Unlock
        )
    }

    /// The wire protocol's name for this kind.
    pub fn wire(self) -> agent::wire::JobKind {
        use agent::wire::JobKind as W;
        match self {
            JobKind::Backup => W::Backup,
            JobKind::Init => W::Init,
            JobKind::Forget => W::Forget,
            JobKind::Prune => W::Prune,
            JobKind::Check => W::Check,
            JobKind::Unlock => W::Unlock,
            JobKind::Restore => W::Restore,
            JobKind::Diff => W::Diff,
            JobKind::Update => W::Update,
            JobKind::Snapshots => W::Snapshots,
            JobKind::Ls => W::Ls,
            JobKind::Stats => W::Stats,
        }
    }
}
string_enum!(ActorKind { User => "user", Schedule => "schedule", System => "system" });

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Skipped
        )
    }
    const LIVE: [&'static str; 2] = ["queued", "running"];
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub host_id: i64,
    pub kind: JobKind,
    pub status: JobStatus,
    pub actor_kind: ActorKind,
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub target_version: Option<String>,
    pub deadline_at: Option<i64>,
    pub log_lines: i64,
    pub log_truncated: bool,
    pub repository_id: Option<i64>,
    pub plan_id: Option<i64>,
    pub warning: bool,
    pub error_kind: Option<String>,
    /// What the job produced (JSON), by kind; see `wire::JobFinished`.
    pub result: Option<serde_json::Value>,
    /// The restic options it was (or will be) dispatched with. Holds no
    /// secret: the repository's are added when the command is sent.
    #[serde(skip)]
    pub options: Option<String>,
    /// Concurrency scope: `r<repository id>` for a shared repository,
    /// `r<id>h<host id>` for a local one.
    pub scope: Option<String>,
}

impl From<jobs::Model> for Job {
    fn from(m: jobs::Model) -> Self {
        Job {
            id: m.id,
            host_id: m.host_id,
            kind: JobKind::parse(&m.kind).unwrap_or(JobKind::Backup),
            status: JobStatus::parse(&m.status).unwrap_or(JobStatus::Failed),
            actor_kind: ActorKind::parse(&m.actor_kind).unwrap_or(ActorKind::System),
            actor_id: m.actor_id,
            actor_name: m.actor_name,
            created_at: m.created_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            exit_code: m.exit_code,
            error: m.error,
            target_version: m.target_version,
            deadline_at: m.deadline_at,
            log_lines: m.log_lines,
            log_truncated: m.log_truncated,
            repository_id: m.repository_id,
            plan_id: m.plan_id,
            warning: m.warning,
            error_kind: m.error_kind,
            result: m.result.and_then(|r| serde_json::from_str(&r).ok()),
            options: m.options,
            scope: m.scope,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewJob {
    pub host_id: i64,
    pub kind: JobKind,
    pub actor_kind: ActorKind,
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub target_version: Option<String>,
    pub deadline_at: Option<i64>,
}

pub async fn create<C: ConnectionTrait>(db: &C, j: &NewJob, now: i64) -> Result<Job> {
    let m = jobs::ActiveModel {
        host_id: Set(j.host_id),
        kind: Set(j.kind.as_str().into()),
        status: Set(JobStatus::Queued.as_str().into()),
        actor_kind: Set(j.actor_kind.as_str().into()),
        actor_id: Set(j.actor_id),
        actor_name: Set(j.actor_name.clone()),
        created_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        exit_code: Set(None),
        error: Set(None),
        stats: Set(None),
        target_version: Set(j.target_version.clone()),
        deadline_at: Set(j.deadline_at),
        log_bytes: Set(0),
        log_lines: Set(0),
        log_truncated: Set(false),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(m.into())
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Job> {
    jobs::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("job"))
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogLine {
    /// Server-assigned position (1, 2, …): the order lines were received,
    /// and the SSE event id.
    pub pos: i64,
    /// The agent's sequence number.
    pub seq: i64,
    pub ts: i64,
    pub stream: String,
    pub data: String,
}

impl From<job_logs::Model> for LogLine {
    fn from(m: job_logs::Model) -> Self {
        LogLine {
            pos: m.pos,
            seq: m.seq,
            ts: m.ts,
            stream: m.stream,
            data: m.payload,
        }
    }
}

/// What became of a job's lines offered to [`append_logs`].
#[derive(Debug, Default, PartialEq)]
pub struct Appended {
    /// Stored, in order, with consecutive positions: broadcast them. The
    /// last may be the truncation notice, stored when a line passed the cap.
    pub stored: Vec<LogLine>,
    /// Lines not stored, by seq, and why: a seq seen before, a log already
    /// truncated, a job already over.
    pub ignored: Vec<(i64, &'static str)>,
}

pub struct NewLine<'a> {
    pub seq: i64,
    pub ts: i64,
    pub stream: &'a str,
    pub data: &'a str,
}

/// Takes the job's row for writing before anything is read in `txn`: on
/// SQLite a transaction that read first cannot take the write lock once
/// another connection has written (it fails at once, without waiting); on
/// Postgres it queues concurrent appends to one job, so positions never
/// collide. A no-op update, so an unknown job is simply not found next.
pub async fn lock_job<C: ConnectionTrait>(txn: &C, job_id: i64) -> Result<()> {
    let (col, key) = (jobs::Column::LogLines, jobs::Column::Id);
    super::lock_row::<jobs::Entity, _>(txn, col, key, job_id).await
}

/// Lines after position `after`, in order, at most `limit`.
pub async fn logs<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
    after: i64,
    limit: u64,
) -> Result<Vec<LogLine>> {
    Ok(job_logs::Entity::find()
        .filter(job_logs::Column::JobId.eq(job_id))
        .filter(job_logs::Column::Pos.gt(after))
        .order_by_asc(job_logs::Column::Pos)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Appends a line written by the server itself (e.g. update progress). Its
/// seq is the negated position, so it never collides with the agent's
/// (from 1) or the truncation notice's (0).
pub async fn append_server_line(
    db: &sea_orm::DatabaseConnection,
    job_id: i64,
    ts: i64,
    data: &str,
) -> Result<Option<LogLine>> {
    let txn = db.begin().await?;
    lock_job(&txn, job_id).await?;
    let Some(job) = jobs::Entity::find_by_id(job_id).one(&txn).await? else {
        return Err(StoreError::NotFound("job"));
    };
    if job.log_truncated || JobStatus::parse(&job.status).is_none_or(JobStatus::is_terminal) {
        return Ok(None);
    }
    let pos = job.log_lines + 1;
    let line = LogLine {
        pos,
        seq: -pos,
        ts,
        stream: "system".into(),
        data: data.into(),
    };
    job_logs::ActiveModel {
        job_id: Set(job_id),
        pos: Set(pos),
        seq: Set(line.seq),
        ts: Set(ts),
        stream: Set(line.stream.clone()),
        payload: Set(line.data.clone()),
    }
    .insert(&txn)
    .await?;
    jobs::Entity::update_many()
        .col_expr(jobs::Column::LogLines, Expr::value(pos))
        .col_expr(
            jobs::Column::LogBytes,
            Expr::value(job.log_bytes + data.len() as i64),
        )
        .filter(jobs::Column::Id.eq(job_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Some(line))
}
