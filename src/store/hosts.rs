//! Hosts: identity, the agent facts reported at hello, online state and the
//! hashed agent secret. List queries are paged and indexed so the dashboard
//! stays fast at 10,000 hosts.
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{CaseStatement, Expr},
};
use serde::Serialize;

use super::{Page, Result, StoreError, is_unique_violation};
use crate::entities::hosts;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Host {
    pub id: i64,
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub enrolled: bool,
    pub labels: Vec<String>,
    /// What the agent's last hello said; `None`: restic missing (or an
    /// agent that never said).
    pub restic_version: Option<String>,
    /// The agent can run restic jobs (its hello lists `running_jobs`).
    pub restic_capable: bool,
}

impl Host {
    /// Out of date: a reported version that differs, byte for byte, from the
    /// server's. An empty (never reported) version is never out of date.
    pub fn is_behind(&self, server_version: &str) -> bool {
        !self.agent_version.is_empty() && self.agent_version != server_version
    }
}

impl From<hosts::Model> for Host {
    fn from(m: hosts::Model) -> Self {
        Host {
            id: m.id,
            name: m.name,
            hostname: m.hostname,
            os: m.os,
            arch: m.arch,
            agent_version: m.agent_version,
            online: m.online,
            last_seen_at: m.last_seen_at,
            created_at: m.created_at,
            enrolled: m.secret_hash.is_some(),
            labels: serde_json::from_str(&m.labels).unwrap_or_default(),
            restic_version: m.restic_version,
            restic_capable: m.restic_capable,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
}

#[derive(Clone, Debug, Default)]
pub struct HostFilter {
    pub status: Option<Status>,
    /// Only hosts behind this (the server's) version.
    pub behind: Option<String>,
    /// Only hosts in this backup state (`?backup=`), judged at this cutoff.
    pub backup: Option<(super::health::BackupState, super::health::Staleness)>,
}

impl HostFilter {
    fn condition(&self) -> Condition {
        let mut c = Condition::all();
        match self.status {
            Some(Status::Online) => c = c.add(hosts::Column::Online.eq(true)),
            Some(Status::Offline) => c = c.add(hosts::Column::Online.eq(false)),
            None => {}
        }
        if let Some(v) = &self.behind {
            c = c.add(behind_condition(v));
        }
        if let Some((state, s)) = self.backup {
            c = c.add(super::health::condition(state, s));
        }
        c
    }
}

fn behind_condition(server_version: &str) -> Condition {
    Condition::all()
        .add(hosts::Column::AgentVersion.ne(""))
        .add(hosts::Column::AgentVersion.ne(server_version))
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "invalid_name",
            "host names are 1–64 characters of letters, digits, '.', '-' or '_'".into(),
        ))
    }
}

pub async fn create<C: ConnectionTrait>(db: &C, name: &str, now: i64) -> Result<Host> {
    validate_name(name)?;
    let m = hosts::ActiveModel {
        name: Set(name.to_string()),
        hostname: Set(String::new()),
        os: Set(String::new()),
        arch: Set(String::new()),
        agent_version: Set(String::new()),
        online: Set(false),
        last_seen_at: Set(None),
        secret_hash: Set(None),
        created_at: Set(now),
        ..Default::default()
    };
    match m.insert(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
            "host_exists",
            format!("a host named {name:?} already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Host> {
    hosts::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("host"))
}

/// Several hosts by id, in chunks of 500 (the dispatcher reads the hosts of
/// a whole queue at once).
pub async fn get_many<C: ConnectionTrait>(
    db: &C,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Host>> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        for m in hosts::Entity::find()
            .filter(hosts::Column::Id.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            out.insert(m.id, m.into());
        }
    }
    Ok(out)
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    filter: &HostFilter,
    page: Page,
) -> Result<Vec<Host>> {
    Ok(hosts::Entity::find()
        .filter(filter.condition())
        .order_by_asc(hosts::Column::Name)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn count<C: ConnectionTrait>(db: &C, filter: &HostFilter) -> Result<u64> {
    Ok(hosts::Entity::find()
        .filter(filter.condition())
        .count(db)
        .await?)
}

/// Number of hosts whose agent is behind `server_version` (one indexed count).
pub async fn behind_count<C: ConnectionTrait>(db: &C, server_version: &str) -> Result<u64> {
    count(
        db,
        &HostFilter {
            behind: Some(server_version.to_string()),
            ..Default::default()
        },
    )
    .await
}

pub async fn find_by_secret_hash<C: ConnectionTrait>(
    db: &C,
    hash: &str,
) -> Result<Option<(Host, String)>> {
    Ok(hosts::Entity::find()
        .filter(hosts::Column::SecretHash.eq(hash))
        .one(db)
        .await?
        .and_then(|m| {
            let stored = m.secret_hash.clone()?;
            Some((m.into(), stored))
        }))
}

/// Every enrolled host's id and agent secret hash: loaded once at server
/// start (`agents::secret_cache`).
pub async fn secret_hashes<C: ConnectionTrait>(db: &C) -> Result<Vec<(i64, String)>> {
    Ok(hosts::Entity::find()
        .select_only()
        .column(hosts::Column::Id)
        .column(hosts::Column::SecretHash)
        .filter(hosts::Column::SecretHash.is_not_null())
        .into_tuple::<(i64, String)>()
        .all(db)
        .await?)
}

pub async fn set_secret_hash<C: ConnectionTrait>(db: &C, id: i64, hash: &str) -> Result<()> {
    let r = hosts::Entity::update_many()
        .col_expr(hosts::Column::SecretHash, Expr::value(hash))
        .filter(hosts::Column::Id.eq(id))
        .exec(db)
        .await?;
    if r.rows_affected == 0 {
        return Err(StoreError::NotFound("host"));
    }
    Ok(())
}

/// What an agent's hello reports.
#[derive(Clone, Debug)]
pub struct HelloFacts {
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub hostname: String,
    /// `restic version` as the agent reported it (cleaned); None when
    /// restic is missing or the agent is older than the restic core.
    pub restic_version: Option<String>,
    /// The agent runs restic jobs (its hello carries `running_jobs`).
    pub restic_capable: bool,
}

/// Hosts a presence statement updates at most: every value of a host that
/// differs from the others' is two parameters per column, so a statement
/// stays under two thousand parameters (SQLite allows 32,766, Postgres
/// 65,535). A power of two: see [`record_hellos`].
const HELLO_CHUNK: usize = 128;

/// Records hellos: each host's facts, online, last seen `now`. One `UPDATE`
/// per [`HELLO_CHUNK`] hosts, not one per host: a column whose value is the
/// same for every host of the chunk (a fleet's versions, os, arch) is set
/// once, the others through `CASE WHEN id = ..`. Each host id appears at
/// most once in `hellos` (the caller keeps a host's last hello).
///
/// A chunk is padded to a power of two by repeating its last host (the
/// same value twice changes nothing), so batches of any size make a few
/// distinct statements: each distinct text is prepared and kept in every
/// pool connection's statement cache.
pub async fn record_hellos<C: ConnectionTrait>(
    db: &C,
    hellos: &[(i64, &HelloFacts)],
    now: i64,
) -> Result<()> {
    for chunk in hellos.chunks(HELLO_CHUNK) {
        let last = chunk[chunk.len() - 1];
        let chunk: Vec<(i64, &HelloFacts)> = (chunk.iter().copied())
            .chain(std::iter::repeat(last))
            .take(chunk.len().next_power_of_two())
            .collect();
        let column = |col: hosts::Column, value: &dyn Fn(&HelloFacts) -> sea_orm::Value| {
            per_host(col, chunk.iter().map(|(id, f)| (*id, value(f))).collect())
        };
        hosts::Entity::update_many()
            .col_expr(
                hosts::Column::AgentVersion,
                column(hosts::Column::AgentVersion, &|f| {
                    f.agent_version.clone().into()
                }),
            )
            .col_expr(
                hosts::Column::Os,
                column(hosts::Column::Os, &|f| f.os.clone().into()),
            )
            .col_expr(
                hosts::Column::Arch,
                column(hosts::Column::Arch, &|f| f.arch.clone().into()),
            )
            .col_expr(
                hosts::Column::Hostname,
                column(hosts::Column::Hostname, &|f| f.hostname.clone().into()),
            )
            .col_expr(
                hosts::Column::ResticVersion,
                column(hosts::Column::ResticVersion, &|f| {
                    f.restic_version.clone().into()
                }),
            )
            .col_expr(
                hosts::Column::ResticCapable,
                column(hosts::Column::ResticCapable, &|f| f.restic_capable.into()),
            )
            .col_expr(hosts::Column::Online, Expr::value(true))
            .col_expr(hosts::Column::LastSeenAt, Expr::value(now))
            .filter(hosts::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// `col`'s new value for the hosts of `values` (none empty): the value
/// itself when all agree, else `CASE WHEN id = .. THEN .. ELSE col END`.
fn per_host(col: hosts::Column, values: Vec<(i64, sea_orm::Value)>) -> Expr {
    let first = &values[0].1;
    if values.iter().all(|(_, v)| v == first) {
        return Expr::value(first.clone());
    }
    let mut case = CaseStatement::new();
    for (id, v) in values {
        case = case.case(hosts::Column::Id.eq(id), v);
    }
    case.finally(Expr::col(col)).into()
}

/// Marks hosts offline, stamping when they were last seen.
pub async fn set_offline<C: ConnectionTrait>(db: &C, ids: &[i64], now: i64) -> Result<()> {
    for chunk in ids.chunks(500) {
        hosts::Entity::update_many()
            .col_expr(hosts::Column::Online, Expr::value(false))
            .col_expr(hosts::Column::LastSeenAt, Expr::value(now))
            .filter(hosts::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Refreshes `last_seen_at` for connected hosts in batches.
pub async fn touch<C: ConnectionTrait>(db: &C, ids: &[i64], now: i64) -> Result<()> {
    for chunk in ids.chunks(500) {
        hosts::Entity::update_many()
            .col_expr(hosts::Column::LastSeenAt, Expr::value(now))
            .filter(hosts::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// At start no agent is connected, whatever the last run left behind.
pub async fn mark_all_offline<C: ConnectionTrait>(db: &C) -> Result<()> {
    hosts::Entity::update_many()
        .col_expr(hosts::Column::Online, Expr::value(false))
        .filter(hosts::Column::Online.eq(true))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes host `id` (its jobs, logs and tokens go with it) and returns it
/// as it was. Run it in a transaction: the row is locked first (as
/// `users::lock` does), so of two removals at once exactly one finds the
/// host and the other gets `NotFound`; the delete's own row count checks it
/// again.
pub async fn delete<C: ConnectionTrait>(txn: &C, id: i64) -> Result<Host> {
    super::lock_row::<hosts::Entity, _>(txn, hosts::Column::Name, hosts::Column::Id, id).await?;
    let h = get(txn, id).await?;
    let res = hosts::Entity::delete_by_id(id).exec(txn).await?;
    if res.rows_affected != 1 {
        return Err(StoreError::NotFound("host"));
    }
    Ok(h)
}

/// Names of the given hosts, in one query.
pub async fn names<C: ConnectionTrait>(
    db: &C,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(hosts::Entity::find()
        .filter(hosts::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, m.name))
        .collect())
}

/// Every host matching `filter`, by name, unpaged (for planning a fleet
/// update; callers bound what they do with it).
pub async fn list_all<C: ConnectionTrait>(db: &C, filter: &HostFilter) -> Result<Vec<Host>> {
    Ok(hosts::Entity::find()
        .filter(filter.condition())
        .order_by_asc(hosts::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// What a hello says about restic: its version (`None`: missing) and
/// whether the agent runs restic jobs at all.
pub async fn set_restic<C: ConnectionTrait>(
    db: &C,
    id: i64,
    version: Option<&str>,
    capable: bool,
) -> Result<()> {
    hosts::Entity::update_many()
        .col_expr(
            hosts::Column::ResticVersion,
            sea_orm::sea_query::Expr::value(version.map(str::to_string)),
        )
        .col_expr(
            hosts::Column::ResticCapable,
            sea_orm::sea_query::Expr::value(capable),
        )
        .filter(hosts::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Replaces a host's labels.
pub async fn set_labels<C: ConnectionTrait>(db: &C, id: i64, labels: &[String]) -> Result<Host> {
    let res = hosts::Entity::update_many()
        .col_expr(
            hosts::Column::Labels,
            sea_orm::sea_query::Expr::value(
                serde_json::to_string(labels).unwrap_or_else(|_| "[]".into()),
            ),
        )
        .filter(hosts::Column::Id.eq(id))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound("host"));
    }
    get(db, id).await
}

/// The id of the host with this restic-manager name, if any.
pub async fn id_by_name<C: ConnectionTrait>(db: &C, name: &str) -> Result<Option<i64>> {
    Ok(hosts::Entity::find()
        .select_only()
        .column(hosts::Column::Id)
        .filter(hosts::Column::Name.eq(name))
        .into_tuple()
        .one(db)
        .await?)
}
