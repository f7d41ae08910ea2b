//! Browsing a snapshot and restoring it: the rules of RESTIC.md "Restore"
//! and "Roles" (absolute targets; in place only with `in_place` and the
//! host's name typed; onto another host only from a shared repository and
//! only for admins), the host an `ls` runs on, and waiting for its answer.
//! It queues jobs; it never writes files or talks to restic itself.
use std::time::Duration;

use agent::wire::{self, LsResult, Message as _, ResticOptions};

use super::jobs::{QueueError, Requester, enqueue, hosts_using};
use crate::{
    jobs::LiveEvent,
    state::AppState,
    store::{
        self, StoreError,
        hosts::Host,
        jobs::{Job, JobKind, JobStatus, Outcome},
        repositories::Repository,
        snapshots::Snapshot,
        users::Role,
    },
};

/// Longest path or target accepted (bytes).
const MAX_PATH: usize = 4096;
/// Most `include` paths one restore takes.
const MAX_INCLUDES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// 400 with this code.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// 403: the role does not allow this restore.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such repository or snapshot.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// 409 `host_offline`.
    #[error("{0}")]
    HostOffline(String),
    /// 504 `agent_timeout`.
    #[error("{0}")]
    Timeout(String),
    /// 502: the `ls` job failed; the message is the job's error.
    #[error("{1}")]
    Failed(&'static str, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueueError> for RestoreError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(m) => RestoreError::Invalid("invalid_input", m),
            QueueError::Store(s) => RestoreError::Store(s),
        }
    }
}

fn lookup(e: StoreError, what: &'static str) -> RestoreError {
    match e {
        StoreError::NotFound(_) => RestoreError::NotFound(what),
        e => e.into(),
    }
}

/// The repository and the indexed snapshot (by full or short id).
pub async fn snapshot_of(
    state: &AppState,
    repository_id: i64,
    snapshot_id: &str,
) -> Result<(Repository, Snapshot), RestoreError> {
    let repo = store::repositories::get(&state.db, repository_id)
        .await
        .map_err(|e| lookup(e, "repository"))?;
    let snap = store::snapshots::find(&state.db, repo.id, snapshot_id)
        .await?
        .ok_or(RestoreError::NotFound("snapshot"))?;
    Ok((repo, snap))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Where a restore writes, checked: `Root` is `/` (files land on their
/// own paths: in place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Root,
    Dir(String),
}

/// An absolute directory without `.`/`..` components or control
/// characters. Trailing and doubled slashes are dropped.
pub fn parse_target(raw: &str) -> Result<Target, RestoreError> {
    let bad = |why: &str| RestoreError::Invalid("invalid_target", format!("target: {why}"));
    if raw.trim().is_empty() {
        return Err(bad(
            "give the directory to restore into (absolute, e.g. /var/tmp/restore)",
        ));
    }
    if raw.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if has_control(raw) {
        return Err(bad("control characters are not allowed"));
    }
    if !raw.starts_with('/') {
        return Err(bad(&format!(
            "must be an absolute path (starting with /), not {:?}",
            crate::text::one_line(raw, 80)
        )));
    }
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad(". and .. are not allowed: give the directory itself"));
    }
    if parts.is_empty() {
        Ok(Target::Root)
    } else {
        Ok(Target::Dir(format!("/{}", parts.join("/"))))
    }
}

/// A directory inside a snapshot: absolute, no control characters.
pub fn parse_snapshot_path(raw: &str) -> Result<String, RestoreError> {
    let raw = if raw.is_empty() { "/" } else { raw };
    if raw.len() > MAX_PATH || has_control(raw) || !raw.starts_with('/') {
        return Err(RestoreError::Invalid(
            "invalid_path",
            format!(
                "path: must be an absolute path inside the snapshot (starting with /), not {:?}",
                crate::text::one_line(raw, 80)
            ),
        ));
    }
    let trimmed = raw.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// A path as a restic `--include` pattern matching exactly that path
/// (glob characters escaped; Windows agents have no escape character).
fn include_pattern(path: &str, windows: bool) -> String {
    if windows {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '\\' | '*' | '?' | '[') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `POST /api/restores`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub repository_id: i64,
    pub snapshot_id: String,
    pub host_id: i64,
    pub target: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub in_place: bool,
    #[serde(default)]
    pub confirm: Option<String>,
}

/// A restore that passed every rule, ready to queue.
#[derive(Clone, Debug)]
pub struct CheckedRestore {
    pub repo: Repository,
    pub snap: Snapshot,
    pub host: Host,
    pub target: Target,
    pub include: Vec<String>,
    pub in_place: bool,
    /// Onto another host than the one that made the snapshot.
    pub cross_host: bool,
}

impl CheckedRestore {
    pub fn target_path(&self) -> &str {
        match &self.target {
            Target::Root => "/",
            Target::Dir(d) => d,
        }
    }
}

/// Every rule, in order: what is named exists; the target and paths are
/// sound; the role allows it (operators: same host, new directory); a
/// local repository's snapshot stays on its host; `/` needs `in_place`;
/// `in_place` needs the host's name as `confirm`.
pub async fn check(
    state: &AppState,
    role: Role,
    r: &RestoreRequest,
) -> Result<CheckedRestore, RestoreError> {
    let (repo, snap) = snapshot_of(state, r.repository_id, &r.snapshot_id).await?;
    let host = match store::hosts::get(&state.db, r.host_id).await {
        Ok(h) => h,
        Err(StoreError::NotFound(_)) => {
            return Err(RestoreError::Invalid(
                "invalid_input",
                format!("host_id: there is no host {}", r.host_id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let target = parse_target(&r.target)?;
    if r.include.len() > MAX_INCLUDES {
        return Err(RestoreError::Invalid(
            "invalid_input",
            format!("include: at most {MAX_INCLUDES} paths"),
        ));
    }
    for p in &r.include {
        if p.len() > MAX_PATH || has_control(p) || !p.starts_with('/') {
            return Err(RestoreError::Invalid(
                "invalid_input",
                format!(
                    "include: each path must be absolute, inside the snapshot, not {:?}",
                    crate::text::one_line(p, 80)
                ),
            ));
        }
    }
    let cross_host = snap.host_id != Some(host.id);
    let in_place = r.in_place || target == Target::Root;
    if role < Role::Admin && (cross_host || in_place) {
        return Err(RestoreError::Forbidden(if cross_host {
            "restoring onto another host than the one that made the snapshot needs an admin".into()
        } else {
            "an in-place restore (overwriting live files) needs an admin".into()
        }));
    }
    if cross_host && repo.local {
        return Err(RestoreError::Invalid(
            "invalid_input",
            "host_id: this snapshot is in a local repository, which exists only on the host that made it: restore it there, or back up to a shared repository to restore elsewhere".into(),
        ));
    }
    if target == Target::Root && !r.in_place {
        return Err(RestoreError::Invalid(
            "invalid_target",
            "target: / restores every file onto its own path, overwriting live files: set in_place and type the host's name as confirm, or pick a new directory".into(),
        ));
    }
    if r.in_place && r.confirm.as_deref() != Some(host.name.as_str()) {
        return Err(RestoreError::Invalid(
            "confirm_mismatch",
            format!(
                "confirm: an in-place restore overwrites live files: type the host's name ({}) to confirm",
                host.name
            ),
        ));
    }
    let windows = host.os.eq_ignore_ascii_case("windows");
    let include = r
        .include
        .iter()
        .map(|p| include_pattern(p, windows))
        .collect();
    Ok(CheckedRestore {
        repo,
        snap,
        host,
        target,
        include,
        in_place,
        cross_host,
    })
}

/// Queues a checked restore.
pub async fn queue(
    state: &AppState,
    who: &Requester,
    c: &CheckedRestore,
) -> Result<Job, RestoreError> {
    let options = ResticOptions {
        snapshot_id: Some(c.snap.snapshot_id.clone()),
        target: Some(c.target_path().to_string()),
        include: c.include.clone(),
        ..Default::default()
    };
    Ok(enqueue(
        state,
        who,
        &c.repo,
        c.host.id,
        JobKind::Restore,
        None,
        &options,
    )
    .await?)
}

/// The host an `ls` of `snap` runs on. `strict`: exactly this host (the
/// API's `host_id`). `prefer`: this one first if it can (the page's host).
/// A local repository is only on the host that holds it; a shared one is
/// read by the snapshot's host or any online host using the repository.
pub async fn ls_host(
    state: &AppState,
    repo: &Repository,
    snap: &Snapshot,
    strict: Option<i64>,
    prefer: Option<i64>,
) -> Result<i64, RestoreError> {
    let offline = |h: &Host| {
        RestoreError::HostOffline(format!(
            "host {} is offline: browsing runs restic on it; try again when it is back",
            h.name
        ))
    };
    if repo.local {
        let Some(holder) = snap.host_id else {
            return Err(RestoreError::Invalid(
                "invalid_input",
                "this local snapshot's host is gone: no host holds the repository".into(),
            ));
        };
        if strict.is_some_and(|h| h != holder) {
            return Err(RestoreError::Invalid(
                "invalid_input",
                "host_id: a local repository lives on the host that made the snapshot: browse it there (leave host_id out)".into(),
            ));
        }
        let h = store::hosts::get(&state.db, holder)
            .await
            .map_err(|e| lookup(e, "host"))?;
        return if state.hub.is_online(h.id) {
            Ok(h.id)
        } else {
            Err(offline(&h))
        };
    }
    if let Some(id) = strict {
        let h = match store::hosts::get(&state.db, id).await {
            Ok(h) => h,
            Err(StoreError::NotFound(_)) => {
                return Err(RestoreError::Invalid(
                    "invalid_input",
                    format!("host_id: there is no host {id}"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        return if state.hub.is_online(h.id) {
            Ok(h.id)
        } else {
            Err(offline(&h))
        };
    }
    let mut candidates: Vec<i64> = prefer.into_iter().chain(snap.host_id).collect();
    candidates.extend(hosts_using(state, repo.id).await?);
    candidates
        .into_iter()
        .find(|h| state.hub.is_online(*h))
        .ok_or_else(|| {
            RestoreError::HostOffline(
                "no host that uses this repository is online: browsing runs restic on one of them"
                    .into(),
            )
        })
}

/// Lists one directory of a snapshot through an `ls` job on `host_id`,
/// waiting for the agent up to `--browse-timeout`.
pub async fn browse(
    state: &AppState,
    who: &Requester,
    repo: &Repository,
    snap: &Snapshot,
    host_id: i64,
    path: &str,
) -> Result<LsResult, RestoreError> {
    let options = ResticOptions {
        snapshot_id: Some(snap.snapshot_id.clone()),
        path: Some(path.to_string()),
        ..Default::default()
    };
    let job = enqueue(state, who, repo, host_id, JobKind::Ls, None, &options).await?;
    let limit = state.settings.browse_timeout;
    let Some(done) = wait_end(state, job.id, limit).await? else {
        let secs = limit.as_secs_f64();
        let msg = format!(
            "the agent did not answer within {secs:.0} s: it may be busy or its connection stalled; try again"
        );
        let outcome = Outcome {
            error: Some(&msg),
            error_kind: Some("agent_timeout"),
            ..Outcome::default()
        };
        crate::jobs::finish_with(state, job.id, JobStatus::Failed, &outcome).await?;
        // If it was sent, the agent stops it; if not, it never starts.
        let cancel = wire::CommandCancel { job_id: job.id };
        let _ = state.hub.send(host_id, cancel.envelope().to_text());
        return Err(RestoreError::Timeout(msg));
    };
    if done.status != JobStatus::Succeeded {
        let kind = match done.error_kind.as_deref() {
            Some("restic_not_found") => "restic_not_found",
            Some("agent_outdated") => "agent_outdated",
            _ => "restic_failed",
        };
        return Err(RestoreError::Failed(
            kind,
            done.error
                .unwrap_or_else(|| format!("listing the snapshot {}", done.status)),
        ));
    }
    done.result
        .and_then(|v| serde_json::from_value::<LsResult>(v).ok())
        .ok_or_else(|| {
            RestoreError::Failed(
                "restic_failed",
                "the agent's listing could not be read".into(),
            )
        })
}

/// The job once it ended, or `None` after `limit`. Waits on the job's
/// live events (no polling); the database answers for an end that came
/// before the watch or a watcher that lagged.
async fn wait_end(
    state: &AppState,
    job_id: i64,
    limit: Duration,
) -> Result<Option<Job>, RestoreError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut watch = state.live.subscribe(job_id);
        let j = store::jobs::get(&state.db, job_id).await?;
        if j.status.is_terminal() {
            return Ok(Some(j));
        }
        loop {
            match tokio::time::timeout_at(deadline, watch.recv()).await {
                Err(_) => return Ok(None),
                Ok(Ok(LiveEvent::Status(j))) if j.status.is_terminal() => return Ok(Some(*j)),
                Ok(Ok(_)) => {}
                // Lagged or closed: read the database again.
                Ok(Err(_)) => break,
            }
        }
    }
}
