//! Queuing restic jobs: which hosts a repository job runs on, the options
//! of each kind, and the row that the dispatcher later sends. Queued jobs
//! start when the concurrency rules allow (`dispatch.rs`).
use agent::wire::ResticOptions;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::scope;
use crate::{
    entities::jobs as job_rows,
    state::AppState,
    store::{
        self, StoreError,
        jobs::{ActorKind, Job, JobKind, NewResticJob},
        repositories::Repository,
    },
};

/// Who asked for a job.
#[derive(Clone, Debug)]
pub struct Requester {
    pub kind: ActorKind,
    pub id: Option<i64>,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Kinds `POST /api/repositories/{id}/jobs` takes.
pub const REPOSITORY_KINDS: &[JobKind] = &[
    JobKind::Init,
    JobKind::Check,
    JobKind::Unlock,
    JobKind::Snapshots,
    JobKind::Stats,
    JobKind::Forget,
    JobKind::Prune,
];

/// Hosts that used a repository (ran a job on it), oldest use first.
pub async fn hosts_using(state: &AppState, repository_id: i64) -> Result<Vec<i64>, StoreError> {
    hosts_using_in(&state.db, repository_id).await
}

/// [`hosts_using`] over any connection.
pub async fn hosts_using_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    repository_id: i64,
) -> Result<Vec<i64>, StoreError> {
    let rows: Vec<(i64, i64)> = job_rows::Entity::find()
        .select_only()
        .column(job_rows::Column::HostId)
        .column_as(job_rows::Column::Id.min(), "first")
        .filter(job_rows::Column::RepositoryId.eq(repository_id))
        .group_by(job_rows::Column::HostId)
        .order_by_asc(job_rows::Column::Id.min())
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|(h, _)| h).collect())
}

/// The hosts a repository job without an explicit host runs on: the
/// maintenance host (else the first host that used it) for a shared
/// repository, every host that uses it for a local one.
pub async fn default_hosts(state: &AppState, repo: &Repository) -> Result<Vec<i64>, QueueError> {
    default_hosts_in(&state.db, repo).await
}

/// [`default_hosts`] over any connection.
pub async fn default_hosts_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    repo: &Repository,
) -> Result<Vec<i64>, QueueError> {
    let using = hosts_using_in(db, repo.id).await?;
    let hosts = if repo.local {
        using
    } else {
        repo.maintenance_host_id
            .or_else(|| using.first().copied())
            .into_iter()
            .collect()
    };
    if hosts.is_empty() {
        return Err(QueueError::Invalid(
            "host_id: no host uses this repository yet; give the host to run it on".into(),
        ));
    }
    Ok(hosts)
}

/// The restic options of a repository-level job of `kind`.
pub fn repository_options(kind: JobKind, repo: &Repository, remove_all: bool) -> ResticOptions {
    let mut o = ResticOptions::default();
    match kind {
        JobKind::Check => o.read_data_subset = repo.check_read_data_subset.clone(),
        JobKind::Prune => o.max_unused = repo.max_unused.clone(),
        JobKind::Unlock => o.remove_all = remove_all,
        _ => {}
    }
    o
}

/// Queues one restic job and wakes the dispatcher.
pub async fn enqueue(
    state: &AppState,
    who: &Requester,
    repo: &Repository,
    host_id: i64,
    kind: JobKind,
    plan_id: Option<i64>,
    options: &ResticOptions,
) -> Result<Job, QueueError> {
    let new = NewResticJob {
        host_id,
        kind,
        actor_kind: who.kind,
        actor_id: who.id,
        actor_name: who.name.clone(),
        repository_id: repo.id,
        plan_id,
        options: serde_json::to_string(options).map_err(|e| QueueError::Invalid(e.to_string()))?,
        scope: scope(repo.id, repo.local, host_id),
    };
    let job = {
        // The host's next hello looks for this job (`agents::marks`).
        let _marked = state.marks.guard(crate::agents::marks::Mark::Jobs, host_id);
        store::jobs::create_restic(&state.db, &new, state.clock.now_ms()).await?
    };
    tracing::info!(job_id = job.id, host_id, kind = %kind, repository_id = repo.id, "restic job queued");
    state.restic.wake();
    Ok(job)
}

/// Checks that `host_id` names a host; the message names the field.
pub async fn check_host(state: &AppState, host_id: i64) -> Result<store::hosts::Host, QueueError> {
    match store::hosts::get(&state.db, host_id).await {
        Ok(h) => Ok(h),
        Err(StoreError::NotFound(_)) => Err(QueueError::Invalid(format!(
            "host_id: there is no host {host_id}"
        ))),
        Err(e) => Err(e.into()),
    }
}
