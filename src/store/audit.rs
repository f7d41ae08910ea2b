//! Audit rows: append-only, listed newest first with filters.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;

use super::{Page, Result};
use crate::entities::audit_log;

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub actor_id: Option<i64>,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub details: serde_json::Value,
    pub client_addr: String,
}

impl From<audit_log::Model> for AuditEntry {
    fn from(m: audit_log::Model) -> Self {
        AuditEntry {
            id: m.id,
            at: m.at,
            actor: m.actor,
            actor_id: m.actor_id,
            action: m.action,
            target_kind: m.target_kind,
            target_id: m.target_id,
            details: serde_json::from_str(&m.details).unwrap_or(serde_json::Value::Null),
            client_addr: m.client_addr,
        }
    }
}

pub struct NewEntry<'a> {
    pub at: i64,
    pub actor: &'a str,
    pub actor_id: Option<i64>,
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: String,
    pub details: serde_json::Value,
    pub client_addr: String,
}

pub async fn record<C: ConnectionTrait>(db: &C, e: NewEntry<'_>) -> Result<()> {
    audit_log::ActiveModel {
        at: Set(e.at),
        actor: Set(e.actor.to_string()),
        actor_id: Set(e.actor_id),
        action: Set(e.action.to_string()),
        target_kind: Set(e.target_kind.to_string()),
        target_id: Set(e.target_id),
        details: Set(e.details.to_string()),
        client_addr: Set(e.client_addr),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
}

impl AuditFilter {
    fn condition(&self) -> Condition {
        let mut c = Condition::all();
        if let Some(a) = self.action.as_deref().filter(|a| !a.is_empty()) {
            c = c.add(audit_log::Column::Action.eq(a));
        }
        if let Some(a) = self.actor.as_deref().filter(|a| !a.is_empty()) {
            c = c.add(audit_log::Column::Actor.eq(a));
        }
        c
    }
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    f: &AuditFilter,
    page: Page,
) -> Result<Vec<AuditEntry>> {
    Ok(audit_log::Entity::find()
        .filter(f.condition())
        .order_by_desc(audit_log::Column::Id)
        .limit(page.limit)
        .offset(page.offset)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn count<C: ConnectionTrait>(db: &C, f: &AuditFilter) -> Result<u64> {
    Ok(audit_log::Entity::find()
        .filter(f.condition())
        .count(db)
        .await?)
}
