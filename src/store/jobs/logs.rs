//! Storing agents' log lines: many jobs' lines in one transaction (group
//! commit), each job's with the rules of its log (de-duplicated by `seq`,
//! the per-job cap, nothing after the job's end).
use std::collections::{HashMap, HashSet};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
    sea_query::Expr,
};

use super::{Appended, JobStatus, LogLine, NewLine, Refusal, TRUNCATED_LINE};
use crate::entities::{job_logs, jobs};
use crate::store::Result;

/// Rows per INSERT: well under SQLite's and Postgres's bound-parameter limits.
const INSERT_CHUNK: usize = 500;

/// Jobs per counters UPDATE (seven parameters each).
const COUNTER_CHUNK: usize = 200;

/// Ids per `IN (…)` list: well under both databases' parameter limits.
const IN_CHUNK: usize = 5_000;

/// One job's lines from its host's agent, in the order they arrived.
pub struct JobLines<'a> {
    pub job_id: i64,
    pub host_id: i64,
    pub lines: Vec<NewLine<'a>>,
}

/// Why a job takes no more lines, if it does not.
fn closed(job: &jobs::Model) -> Option<&'static str> {
    if JobStatus::parse(&job.status).is_none_or(JobStatus::is_terminal) {
        Some("job already finished")
    } else if job.log_truncated {
        Some("log truncated")
    } else {
        None
    }
}

async fn jobs_by_id<C: sea_orm::ConnectionTrait>(
    db: &C,
    ids: &[i64],
) -> Result<HashMap<i64, jobs::Model>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IN_CHUNK) {
        for j in jobs::Entity::find()
            .filter(jobs::Column::Id.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            out.insert(j.id, j);
        }
    }
    Ok(out)
}

/// Appends the lines of several jobs (one entry per job; the same job twice
/// is refused as a caller error would be: callers merge first) in one
/// transaction, each job's de-duplicated by `seq` (against its stored log
/// and within the batch) and within the per-job cap: the line that would
/// pass it is replaced by a notice and everything after it is dropped.
///
/// One transaction for many jobs is what lets a thousand agents' output
/// keep up: SQLite has one writer, and a transaction per agent message
/// spends its time handing the write lock around (BENCHMARKS.md, many
/// backups). The jobs are read first without a write lock: lines for an
/// unknown job, another host's job or one that takes no more lines (a flood
/// an agent may send) cost no write transaction. What is read there only
/// ever changes towards refusing, and it is read again under the lock.
///
/// Returns one outcome per entry, in order. Safe to repeat after an error:
/// nothing is committed then, and a repeat de-duplicates by seq.
pub async fn append_logs(
    db: &sea_orm::DatabaseConnection,
    batch: &[JobLines<'_>],
    cap_bytes: i64,
) -> Result<Vec<std::result::Result<Appended, Refusal>>> {
    let mut out: Vec<std::result::Result<Appended, Refusal>> =
        batch.iter().map(|_| Ok(Appended::default())).collect();
    let ids: Vec<i64> = batch.iter().map(|b| b.job_id).collect();
    let before = jobs_by_id(db, &ids).await?;
    let mut open = Vec::new();
    let mut seen_ids = HashSet::new();
    for (i, entry) in batch.iter().enumerate() {
        if entry.lines.is_empty() {
            continue;
        }
        if !seen_ids.insert(entry.job_id) {
            out[i] = Err(Refusal::UnknownJob);
            continue;
        }
        match verdict(before.get(&entry.job_id), entry) {
            Verdict::Refused(r) => out[i] = Err(r),
            Verdict::Closed(why) => out[i] = Ok(ignored_all(entry, why)),
            Verdict::Open => open.push(i),
        }
    }
    if open.is_empty() {
        return Ok(out);
    }
    let mut open_ids: Vec<i64> = open.iter().map(|&i| batch[i].job_id).collect();
    // One order for every locker of several job rows.
    open_ids.sort_unstable();
    let txn = db.begin().await?;
    // Take the rows for writing before reading them (see `super::lock_job`).
    for chunk in open_ids.chunks(IN_CHUNK) {
        jobs::Entity::update_many()
            .col_expr(jobs::Column::LogLines, Expr::col(jobs::Column::LogLines))
            .filter(jobs::Column::Id.is_in(chunk.iter().copied()))
            .exec(&txn)
            .await?;
    }
    let now = jobs_by_id(&txn, &open_ids).await?;
    let mut seen = stored_seqs(&txn, batch, &open, &open_ids).await?;
    let mut rows: Vec<(i64, LogLine)> = Vec::new();
    let mut counters: Vec<(i64, i64, i64, bool)> = Vec::new();
    for &i in &open {
        let entry = &batch[i];
        let job = match verdict(now.get(&entry.job_id), entry) {
            Verdict::Refused(r) => {
                out[i] = Err(r);
                continue;
            }
            Verdict::Closed(why) => {
                out[i] = Ok(ignored_all(entry, why));
                continue;
            }
            Verdict::Open => &now[&entry.job_id],
        };
        let seen = seen.entry(entry.job_id).or_default();
        let appended = lay_out(job, entry, seen, cap_bytes);
        if let Some(last) = appended.stored.last() {
            let bytes = job.log_bytes
                + appended
                    .stored
                    .iter()
                    .filter(|l| l.seq != 0)
                    .map(|l| l.data.len() as i64)
                    .sum::<i64>();
            let truncated = appended.stored.iter().any(|l| l.seq == 0);
            counters.push((entry.job_id, last.pos, bytes, truncated));
            rows.extend(appended.stored.iter().map(|l| (entry.job_id, l.clone())));
        }
        out[i] = Ok(appended);
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        job_logs::Entity::insert_many(chunk.iter().map(|(job_id, l)| job_logs::ActiveModel {
            job_id: Set(*job_id),
            pos: Set(l.pos),
            seq: Set(l.seq),
            ts: Set(l.ts),
            stream: Set(l.stream.clone()),
            payload: Set(l.data.clone()),
        }))
        .exec_without_returning(&txn)
        .await?;
    }
    // The jobs' counters, a few hundred rows a statement (one UPDATE per job
    // was most of a group's statements).
    for chunk in counters.chunks(COUNTER_CHUNK) {
        let (mut lines, mut bytes, mut truncated) = (
            Expr::case(jobs::Column::Id.eq(chunk[0].0), chunk[0].1),
            Expr::case(jobs::Column::Id.eq(chunk[0].0), chunk[0].2),
            Expr::case(jobs::Column::Id.eq(chunk[0].0), chunk[0].3),
        );
        for &(id, l, b, t) in &chunk[1..] {
            lines = lines.case(jobs::Column::Id.eq(id), l);
            bytes = bytes.case(jobs::Column::Id.eq(id), b);
            truncated = truncated.case(jobs::Column::Id.eq(id), t);
        }
        jobs::Entity::update_many()
            .col_expr(
                jobs::Column::LogLines,
                lines.finally(Expr::col(jobs::Column::LogLines)).into(),
            )
            .col_expr(
                jobs::Column::LogBytes,
                bytes.finally(Expr::col(jobs::Column::LogBytes)).into(),
            )
            .col_expr(
                jobs::Column::LogTruncated,
                truncated
                    .finally(Expr::col(jobs::Column::LogTruncated))
                    .into(),
            )
            .filter(jobs::Column::Id.is_in(chunk.iter().map(|c| c.0)))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(out)
}

enum Verdict {
    Refused(Refusal),
    Closed(&'static str),
    Open,
}

fn verdict(job: Option<&jobs::Model>, entry: &JobLines<'_>) -> Verdict {
    match job {
        None => Verdict::Refused(Refusal::UnknownJob),
        Some(j) if j.host_id != entry.host_id => Verdict::Refused(Refusal::OtherHost),
        Some(j) => closed(j).map_or(Verdict::Open, Verdict::Closed),
    }
}

fn ignored_all(entry: &JobLines<'_>, why: &'static str) -> Appended {
    Appended {
        stored: Vec::new(),
        ignored: entry.lines.iter().map(|l| (l.seq, why)).collect(),
    }
}

/// The seqs already stored among those offered, per job: one query over
/// the offered jobs and seqs (a superset of the pairs, filtered here).
async fn stored_seqs<C: sea_orm::ConnectionTrait>(
    db: &C,
    batch: &[JobLines<'_>],
    open: &[usize],
    open_ids: &[i64],
) -> Result<HashMap<i64, HashSet<i64>>> {
    let offered: HashSet<(i64, i64)> = open
        .iter()
        .flat_map(|&i| batch[i].lines.iter().map(move |l| (batch[i].job_id, l.seq)))
        .collect();
    let mut seqs: Vec<i64> = offered.iter().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out: HashMap<i64, HashSet<i64>> = HashMap::new();
    for ids in open_ids.chunks(IN_CHUNK) {
        for s in seqs.chunks(IN_CHUNK) {
            let found: Vec<(i64, i64)> = job_logs::Entity::find()
                .select_only()
                .column(job_logs::Column::JobId)
                .column(job_logs::Column::Seq)
                .filter(job_logs::Column::JobId.is_in(ids.iter().copied()))
                .filter(job_logs::Column::Seq.is_in(s.iter().copied()))
                .into_tuple()
                .all(db)
                .await?;
            for pair in found.into_iter().filter(|p| offered.contains(p)) {
                out.entry(pair.0).or_default().insert(pair.1);
            }
        }
    }
    Ok(out)
}

/// Positions one job's offered lines after its stored log: duplicates and
/// lines past the cap are ignored, the line that passes the cap becomes the
/// notice.
fn lay_out(
    job: &jobs::Model,
    entry: &JobLines<'_>,
    seen: &mut HashSet<i64>,
    cap_bytes: i64,
) -> Appended {
    let mut out = Appended::default();
    let (mut pos, mut bytes, mut truncated) = (job.log_lines, job.log_bytes, false);
    for line in &entry.lines {
        if truncated {
            out.ignored.push((line.seq, "log truncated"));
            continue;
        }
        if !seen.insert(line.seq) {
            out.ignored.push((line.seq, "duplicate seq"));
            continue;
        }
        let len = line.data.len() as i64;
        pos += 1;
        truncated = bytes + len > cap_bytes;
        out.stored.push(if truncated {
            // seq 0 is never sent by agents (they count from 1): the notice's own.
            LogLine {
                pos,
                seq: 0,
                ts: line.ts,
                stream: "system".into(),
                data: TRUNCATED_LINE.into(),
            }
        } else {
            bytes += len;
            LogLine {
                pos,
                seq: line.seq,
                ts: line.ts,
                stream: line.stream.into(),
                data: line.data.into(),
            }
        });
    }
    out
}
