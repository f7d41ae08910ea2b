use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub host_id: i64,
    pub kind: String,
    pub status: String,
    pub actor_kind: String,
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub stats: Option<String>,
    pub target_version: Option<String>,
    pub deadline_at: Option<i64>,
    pub log_bytes: i64,
    pub log_lines: i64,
    pub log_truncated: bool,
    pub repository_id: Option<i64>,
    pub plan_id: Option<i64>,
    pub warning: bool,
    pub error_kind: Option<String>,
    pub result: Option<String>,
    pub options: Option<String>,
    pub scope: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
