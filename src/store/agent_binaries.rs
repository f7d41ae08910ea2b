//! Rows describing staged agent binaries (one per os/arch).
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};
use serde::Serialize;

use super::Result;
use crate::entities::agent_binaries;

#[derive(Clone, Debug, Serialize)]
pub struct AgentBinary {
    pub os: String,
    pub arch: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub file_name: String,
    pub created_at: i64,
}

impl From<agent_binaries::Model> for AgentBinary {
    fn from(m: agent_binaries::Model) -> Self {
        AgentBinary {
            os: m.os,
            arch: m.arch,
            version: m.version,
            sha256: m.sha256,
            size: m.size,
            file_name: m.file_name,
            created_at: m.created_at,
        }
    }
}

pub async fn upsert<C: ConnectionTrait>(db: &C, b: &AgentBinary) -> Result<()> {
    let m = agent_binaries::ActiveModel {
        os: Set(b.os.clone()),
        arch: Set(b.arch.clone()),
        version: Set(b.version.clone()),
        sha256: Set(b.sha256.clone()),
        size: Set(b.size),
        file_name: Set(b.file_name.clone()),
        created_at: Set(b.created_at),
        ..Default::default()
    };
    agent_binaries::Entity::insert(m)
        .on_conflict(
            OnConflict::columns([agent_binaries::Column::Os, agent_binaries::Column::Arch])
                .update_columns([
                    agent_binaries::Column::Version,
                    agent_binaries::Column::Sha256,
                    agent_binaries::Column::Size,
                    agent_binaries::Column::FileName,
                    agent_binaries::Column::CreatedAt,
                ])
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(())
}

pub async fn get<C: ConnectionTrait>(db: &C, os: &str, arch: &str) -> Result<Option<AgentBinary>> {
    Ok(agent_binaries::Entity::find()
        .filter(agent_binaries::Column::Os.eq(os))
        .filter(agent_binaries::Column::Arch.eq(arch))
        .one(db)
        .await?
        .map(Into::into))
}

pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<AgentBinary>> {
    Ok(agent_binaries::Entity::find()
        .order_by_asc(agent_binaries::Column::Os)
        .order_by_asc(agent_binaries::Column::Arch)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}
