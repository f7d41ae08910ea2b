//! Plan rules: validation of what an admin submits (each message names the
//! field), which hosts a plan covers, the backup and forget options a plan
//! gives restic, running a plan now, and what a finished plan job means
//! (forget after backup, the `backup_failed` and `repository_check_failed`
//! alerts). Queuing goes through `jobs::enqueue`; timing is the
//! scheduler's.
use agent::wire::{ResticOptions, Retention};
use chrono_tz::Tz;
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value};

use super::{
    jobs::{QueueError, Requester, enqueue},
    schedule,
};
use crate::{
    alerts::{self, Severity},
    state::AppState,
    store::{
        self, StoreError,
        hosts::Host,
        jobs::{ActorKind, Job, JobKind, JobStatus},
        plans::{Plan, PlanRow},
        repositories::Repository,
    },
};

/// The tag every backup of plan `id` carries (and its forget filters by).
pub fn plan_tag(id: i64) -> String {
    format!("rm-plan:{id}")
}

/// `forget --group-by` for plan retention.
pub const GROUP_BY: &str = "host,paths";

/// Longest splay: a week.
pub const MAX_SPLAY_SECS: i64 = 7 * 86_400;

pub const BACKUP_FAILED: &str = "backup_failed";
pub const REPOSITORY_CHECK_FAILED: &str = "repository_check_failed";

pub fn backup_failed_key(host_id: i64, plan_id: i64) -> String {
    format!("{BACKUP_FAILED}:{host_id}:{plan_id}")
}
pub fn check_failed_key(repository_id: i64, host_id: i64) -> String {
    format!("{REPOSITORY_CHECK_FAILED}:{repository_id}:{host_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `invalid_input`; the message starts with the field.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueueError> for PlanError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(m) => PlanError::Invalid(m),
            QueueError::Store(s) => PlanError::Store(s),
        }
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> PlanError {
    PlanError::Invalid(format!("{field}: {why}"))
}

/// `POST /api/plans` (every required field) and `PATCH` (any subset).
/// Absent: unchanged. For list fields and `retention`, `null` clears;
/// for `timezone`, `null` or `""` means the server's.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    pub name: Option<String>,
    pub repository_id: Option<i64>,
    pub paths: Option<Vec<String>>,
    pub excludes: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub splay_secs: Option<i64>,
    pub hosts: Option<Vec<i64>>,
    pub labels: Option<Vec<String>>,
    pub retention: Option<Retention>,
    pub forget_after_backup: Option<bool>,
    pub enabled: Option<bool>,
}

const FIELDS: &[&str] = &[
    "name",
    "repository_id",
    "paths",
    "excludes",
    "tags",
    "schedule",
    "timezone",
    "splay_secs",
    "hosts",
    "labels",
    "retention",
    "forget_after_backup",
    "enabled",
];
const RETENTION_FIELDS: &[&str] = &[
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
];

fn take<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
    nullable: bool,
) -> Result<Option<T>, PlanError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(None),
        Some(Value::Null) => Err(invalid(key, "must not be null")),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| invalid(key, crate::text::one_line(&e.to_string(), 200))),
    }
}

impl PlanInput {
    /// A JSON body; errors name the field.
    pub fn from_json(body: &[u8]) -> Result<PlanInput, PlanError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            PlanError::Invalid(format!(
                "the request body is not JSON: {}",
                crate::text::one_line(&e.to_string(), 200)
            ))
        })?;
        let Value::Object(map) = v else {
            return Err(PlanError::Invalid(
                "the request body must be a JSON object".into(),
            ));
        };
        if let Some(k) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(&crate::text::one_line(k, 64), "unknown field"));
        }
        let list = |key: &str| -> Result<Option<Vec<String>>, PlanError> {
            if map.get(key).is_some_and(Value::is_null) {
                return Ok(Some(vec![]));
            }
            take(&map, key, false)
        };
        let retention = match map.get("retention") {
            None => None,
            Some(Value::Null) => Some(Retention::default()),
            Some(Value::Object(r)) => {
                if let Some(k) = r.keys().find(|k| !RETENTION_FIELDS.contains(&k.as_str())) {
                    return Err(invalid(
                        &format!("retention.{}", crate::text::one_line(k, 64)),
                        "unknown field (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)",
                    ));
                }
                let mut out = Retention::default();
                for k in &RETENTION_FIELDS[..6] {
                    let n: Option<u32> = take(r, k, true)
                        .map_err(|_| invalid(&format!("retention.{k}"), "a whole number from 0"))?;
                    let slot = match *k {
                        "keep_last" => &mut out.keep_last,
                        "keep_hourly" => &mut out.keep_hourly,
                        "keep_daily" => &mut out.keep_daily,
                        "keep_weekly" => &mut out.keep_weekly,
                        "keep_monthly" => &mut out.keep_monthly,
                        _ => &mut out.keep_yearly,
                    };
                    *slot = n.filter(|n| *n > 0);
                }
                out.keep_within = take::<String>(r, "keep_within", true)
                    .map_err(|_| invalid("retention.keep_within", "a duration such as 30d"))?
                    .filter(|s| !s.trim().is_empty());
                Some(out)
            }
            Some(_) => {
                return Err(invalid(
                    "retention",
                    "must be an object such as {\"keep_last\": 7}",
                ));
            }
        };
        let timezone = match map.get("timezone") {
            Some(Value::Null) => Some(String::new()),
            _ => take(&map, "timezone", false)?,
        };
        let hosts = if map.get("hosts").is_some_and(Value::is_null) {
            Some(vec![])
        } else {
            take(&map, "hosts", false)?
        };
        Ok(PlanInput {
            name: take(&map, "name", false)?,
            repository_id: take(&map, "repository_id", false)?,
            paths: take(&map, "paths", false)?,
            excludes: list("excludes")?,
            tags: list("tags")?,
            schedule: take(&map, "schedule", false)?,
            timezone,
            splay_secs: take(&map, "splay_secs", false)?,
            hosts,
            labels: list("labels")?,
            retention,
            forget_after_backup: take(&map, "forget_after_backup", false)?,
            enabled: take(&map, "enabled", false)?,
        })
    }
}

fn check_name(name: &str) -> Result<String, PlanError> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(invalid(
            "name",
            "1–64 characters of letters, digits, spaces, '.', '-' or '_'",
        ))
    }
}

/// Absolute on the host: `/…`, or a Windows drive path `C:\…` / `C:/…`.
pub fn is_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

fn check_paths(paths: &[String]) -> Result<Vec<String>, PlanError> {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if paths.is_empty() {
        return Err(invalid(
            "paths",
            "give at least one absolute path to back up",
        ));
    }
    if paths.len() > 1000 {
        return Err(invalid("paths", "at most 1000 paths"));
    }
    for p in &paths {
        if p.len() > 4096 || p.chars().any(char::is_control) {
            return Err(invalid(
                "paths",
                "a path is too long or holds control characters",
            ));
        }
        if !is_absolute(p) {
            return Err(invalid(
                "paths",
                format!(
                    "{:?} is not absolute (start it with /)",
                    crate::text::one_line(p, 200)
                ),
            ));
        }
    }
    Ok(paths)
}

fn check_excludes(ex: &[String]) -> Result<Vec<String>, PlanError> {
    let ex: Vec<String> = ex
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if ex.len() > 1000
        || ex
            .iter()
            .any(|e| e.len() > 4096 || e.chars().any(char::is_control))
    {
        return Err(invalid(
            "excludes",
            "at most 1000 patterns, each one line of at most 4096 bytes",
        ));
    }
    Ok(ex)
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, PlanError> {
    let tags: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    for t in &tags {
        let ok = t.len() <= 128
            && !t.contains(',')
            && !t.chars().any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(invalid(
                "tags",
                format!(
                    "{:?}: a tag is up to 128 characters without spaces or commas",
                    crate::text::one_line(t, 64)
                ),
            ));
        }
        if t.starts_with("rm-plan:") {
            return Err(invalid("tags", "rm-plan: tags are restic-manager's own"));
        }
    }
    if tags.len() > 100 {
        return Err(invalid("tags", "at most 100 tags"));
    }
    Ok(tags)
}

/// Host labels (and a plan's): 1–64 characters of letters, digits, '.',
/// '-', '_' or ':'; duplicates dropped, order kept.
pub fn check_labels(field: &str, labels: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for l in labels {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let ok = l.len() <= 64
            && l.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !ok {
            return Err(format!(
                "{field}: {:?} is not a label (1–64 letters, digits, '.', '-', '_' or ':')",
                crate::text::one_line(l, 64)
            ));
        }
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    if out.len() > 100 {
        return Err(format!("{field}: at most 100 labels"));
    }
    Ok(out)
}

/// restic's `--keep-within` duration: `1y2m3d4h`-style.
fn check_within(v: &str) -> bool {
    let mut digits = false;
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if matches!(c, 'y' | 'm' | 'd' | 'h') && digits {
            digits = false;
        } else {
            return false;
        }
    }
    !v.is_empty() && !digits
}

async fn check_repository<C: ConnectionTrait>(db: &C, id: i64) -> Result<(), PlanError> {
    match store::repositories::get(db, id).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => Err(invalid(
            "repository_id",
            format!("there is no repository {id}"),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn check_hosts<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<Vec<i64>, PlanError> {
    let mut out: Vec<i64> = Vec::new();
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    let names = store::hosts::names(db, &out).await?;
    if let Some(missing) = out.iter().find(|id| !names.contains_key(id)) {
        return Err(invalid("hosts", format!("there is no host {missing}")));
    }
    Ok(out)
}

/// Applies `input` to `row`, checking every given field.
async fn apply<C: ConnectionTrait>(
    db: &C,
    row: &mut PlanRow,
    input: PlanInput,
    server_tz: Tz,
) -> Result<(), PlanError> {
    if let Some(n) = &input.name {
        row.name = check_name(n)?;
    }
    if let Some(r) = input.repository_id {
        check_repository(db, r).await?;
        row.repository_id = r;
    }
    if let Some(p) = &input.paths {
        row.paths = check_paths(p)?;
    }
    if let Some(e) = &input.excludes {
        row.excludes = check_excludes(e)?;
    }
    if let Some(t) = &input.tags {
        row.tags = check_tags(t)?;
    }
    if let Some(s) = &input.schedule {
        schedule::parse(s).map_err(|e| invalid("schedule", e))?;
        row.schedule = s.trim().to_string();
    }
    if let Some(tz) = &input.timezone {
        row.timezone = if tz.trim().is_empty() {
            server_tz.name().to_string()
        } else {
            schedule::parse_tz(tz)
                .map_err(|e| invalid("timezone", e))?
                .name()
                .to_string()
        };
    }
    if let Some(s) = input.splay_secs {
        if !(0..=MAX_SPLAY_SECS).contains(&s) {
            return Err(invalid(
                "splay_secs",
                format!("0 to {MAX_SPLAY_SECS} seconds"),
            ));
        }
        row.splay_secs = s as i32;
    }
    if let Some(h) = &input.hosts {
        row.hosts = check_hosts(db, h).await?;
    }
    if let Some(l) = &input.labels {
        row.labels = check_labels("labels", l).map_err(PlanError::Invalid)?;
    }
    if let Some(r) = input.retention {
        if let Some(w) = &r.keep_within
            && !check_within(w)
        {
            return Err(invalid(
                "retention.keep_within",
                "a restic duration such as 30d, 12h or 1y6m",
            ));
        }
        row.retention = r;
    }
    if let Some(f) = input.forget_after_backup {
        row.forget_after_backup = f;
    }
    if let Some(e) = input.enabled {
        row.enabled = e;
    }
    Ok(())
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    input: PlanInput,
    server_tz: Tz,
    now: i64,
) -> Result<Plan, PlanError> {
    for (field, given) in [
        ("name", input.name.is_some()),
        ("repository_id", input.repository_id.is_some()),
        ("paths", input.paths.is_some()),
        ("schedule", input.schedule.is_some()),
    ] {
        if !given {
            return Err(invalid(field, "is required"));
        }
    }
    let mut row = PlanRow {
        timezone: server_tz.name().to_string(),
        enabled: true,
        ..PlanRow::default()
    };
    apply(db, &mut row, input, server_tz).await?;
    Ok(store::plans::create(db, &row, now).await?)
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    id: i64,
    input: PlanInput,
    server_tz: Tz,
    now: i64,
) -> Result<Plan, PlanError> {
    let plan = store::plans::get(db, id).await?;
    let mut row = PlanRow::from(&plan);
    apply(db, &mut row, input, server_tz).await?;
    Ok(store::plans::update(db, id, &row, now).await?)
}

/// Hosts a plan covers, by name (whether or not the plan is enabled).
pub async fn covered_hosts<C: ConnectionTrait>(
    db: &C,
    plan: &Plan,
) -> Result<Vec<Host>, StoreError> {
    Ok(store::hosts::list_all(db, &Default::default())
        .await?
        .into_iter()
        .filter(|h| plan.covers(h.id, &h.labels))
        .collect())
}

/// The restic options of a plan's backup on a host.
pub fn backup_options(plan: &Plan, host_name: &str) -> ResticOptions {
    let mut tags = vec![plan_tag(plan.id)];
    tags.extend(plan.tags.iter().cloned());
    ResticOptions {
        paths: plan.paths.clone(),
        excludes: plan.excludes.clone(),
        tags,
        host: Some(host_name.to_string()),
        ..Default::default()
    }
}

/// The restic options of a plan's forget: its snapshots only (the tag),
/// grouped by host and paths, its retention; `host` narrows it to one
/// host's snapshots.
pub fn forget_options(plan: &Plan, host_name: Option<&str>) -> ResticOptions {
    ResticOptions {
        tags: vec![plan_tag(plan.id)],
        host: host_name.map(str::to_string),
        retention: Some(plan.retention.clone()),
        group_by: Some(GROUP_BY.into()),
        ..Default::default()
    }
}

/// Plans using a repository that have a retention to apply.
pub async fn retention_plans<C: ConnectionTrait>(
    db: &C,
    repository_id: i64,
) -> Result<Vec<Plan>, StoreError> {
    Ok(store::plans::using_repository(db, repository_id)
        .await?
        .into_iter()
        .filter(|p| !p.retention.is_empty())
        .collect())
}

/// `POST /api/plans/{id}/run`: one backup per covered host, or on the one
/// given (which the plan must cover).
pub async fn run_now(
    state: &AppState,
    who: &Requester,
    plan: &Plan,
    host_id: Option<i64>,
) -> Result<Vec<Job>, RunError> {
    let covered = covered_hosts(&state.db, plan).await?;
    let hosts: Vec<&Host> = match host_id {
        Some(h) => match covered.iter().find(|c| c.id == h) {
            Some(c) => vec![c],
            None => return Err(RunError::NotCovered(h)),
        },
        None => covered.iter().collect(),
    };
    if hosts.is_empty() {
        return Err(RunError::NotCovered(0));
    }
    let repo = store::repositories::get(&state.db, plan.repository_id).await?;
    let mut jobs = Vec::with_capacity(hosts.len());
    for h in hosts {
        let options = backup_options(plan, &h.name);
        jobs.push(
            enqueue(
                state,
                who,
                &repo,
                h.id,
                JobKind::Backup,
                Some(plan.id),
                &options,
            )
            .await?,
        );
    }
    Ok(jobs)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// 0: the plan covers no host at all.
    #[error("not covered")]
    NotCovered(i64),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restic job's end means beyond the job itself: alerts, and the
/// forget a plan runs after each backup. Never fails the caller.
pub async fn on_job_end(state: &AppState, job: &Job) {
    if let Err(e) = job_end(state, job).await {
        tracing::error!(error = %e, job_id = job.id, "acting on a restic job's end failed");
    }
}

async fn job_end(state: &AppState, job: &Job) -> Result<(), PlanError> {
    if let (JobKind::Backup, Some(plan_id)) = (job.kind, job.plan_id) {
        // Fleet health: the (plan, host) row's last run and last success.
        store::health::refresh(&state.db, plan_id, job.host_id).await?;
    }
    match (job.kind, job.status, job.plan_id) {
        (JobKind::Backup, JobStatus::Succeeded, Some(plan_id)) => {
            alerts::resolve(state, &backup_failed_key(job.host_id, plan_id)).await?;
            alerts::resolve(
                state,
                &alerts::health::backup_stale_key(job.host_id, plan_id),
            )
            .await?;
            let Ok(plan) = store::plans::get(&state.db, plan_id).await else {
                return Ok(());
            };
            if plan.forget_after_backup && !plan.retention.is_empty() {
                let repo = store::repositories::get(&state.db, plan.repository_id).await?;
                let host = store::hosts::get(&state.db, job.host_id).await?;
                let who = Requester {
                    kind: ActorKind::System,
                    id: None,
                    name: format!("forget after backup (job {})", job.id),
                };
                enqueue(
                    state,
                    &who,
                    &repo,
                    host.id,
                    JobKind::Forget,
                    Some(plan.id),
                    &forget_options(&plan, Some(&host.name)),
                )
                .await?;
            }
        }
        (JobKind::Backup, JobStatus::Failed, Some(plan_id)) => {
            let plan = store::plans::get(&state.db, plan_id)
                .await
                .map(|p| p.name)
                .unwrap_or_else(|_| format!("#{plan_id}"));
            let host = store::hosts::get(&state.db, job.host_id)
                .await
                .map(|h| h.name)
                .unwrap_or_else(|_| format!("#{}", job.host_id));
            let kind = job.error_kind.as_deref().unwrap_or("restic_failed");
            let message = format!(
                "backup of plan {plan} on {host} failed (job {}, {kind}): {}",
                job.id,
                job.error.as_deref().unwrap_or("no reason given")
            );
            alerts::raise(
                state,
                BACKUP_FAILED,
                &backup_failed_key(job.host_id, plan_id),
                Some(job.host_id),
                Severity::Warning,
                &message,
            )
            .await?;
        }
        (JobKind::Check, status, _) if job.repository_id.is_some() => {
            let repository_id = job.repository_id.unwrap_or_default();
            let key = check_failed_key(repository_id, job.host_id);
            match status {
                JobStatus::Succeeded => {
                    alerts::resolve(state, &key).await?;
                }
                JobStatus::Failed => {
                    let name = store::repositories::get(&state.db, repository_id)
                        .await
                        .map(|r| r.name)
                        .unwrap_or_else(|_| format!("#{repository_id}"));
                    let message = format!(
                        "check of repository {name} failed (job {}): {}",
                        job.id,
                        job.error.as_deref().unwrap_or("no reason given")
                    );
                    alerts::raise(
                        state,
                        REPOSITORY_CHECK_FAILED,
                        &key,
                        Some(job.host_id),
                        Severity::Critical,
                        &message,
                    )
                    .await?;
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether a repository's check is due at `now`.
pub fn check_due(repo: &Repository, now: i64) -> bool {
    if repo.check_every_days <= 0 {
        return false;
    }
    // An hour's slack: a check made just after 03:00 is due again at 03:00.
    let every = i64::from(repo.check_every_days) * 86_400_000 - 3_600_000;
    repo.last_check_at.is_none_or(|t| now - t >= every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_input_names_the_field() {
        let e = PlanInput::from_json(br#"{"splay_secs":"x"}"#).unwrap_err();
        assert!(e.to_string().starts_with("splay_secs:"), "{e}");
        let e = PlanInput::from_json(br#"{"retention":{"keep_last":-1}}"#).unwrap_err();
        assert!(e.to_string().starts_with("retention.keep_last:"), "{e}");
        let e = PlanInput::from_json(br#"{"retention":{"keep_all":1}}"#).unwrap_err();
        assert!(e.to_string().starts_with("retention.keep_all:"), "{e}");
        let e = PlanInput::from_json(br#"{"colour":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("colour:"), "{e}");
        let i =
            PlanInput::from_json(br#"{"tags":null,"timezone":null,"retention":{"keep_last":2}}"#)
                .unwrap();
        assert_eq!(i.tags, Some(vec![]));
        assert_eq!(i.timezone, Some(String::new()));
        assert_eq!(i.retention.unwrap().keep_last, Some(2));
    }

    #[test]
    fn paths_tags_labels_and_durations_are_checked() {
        assert!(check_paths(&["/srv".into(), "C:\\data".into()]).is_ok());
        assert!(
            check_paths(&["srv".into()])
                .unwrap_err()
                .to_string()
                .contains("not absolute")
        );
        assert!(check_paths(&[]).is_err());
        assert!(check_tags(&["a,b".into()]).is_err());
        assert!(check_tags(&["rm-plan:3".into()]).is_err());
        assert_eq!(
            check_labels("labels", &["db".into(), "db".into(), " eu ".into()]).unwrap(),
            vec!["db", "eu"]
        );
        assert!(check_labels("labels", &["a b".into()]).is_err());
        for ok in ["30d", "1y6m", "12h"] {
            assert!(check_within(ok), "{ok}");
        }
        for bad in ["", "d", "30", "3x"] {
            assert!(!check_within(bad), "{bad}");
        }
    }
}
