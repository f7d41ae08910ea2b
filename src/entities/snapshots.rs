use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "snapshots")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub repository_id: i64,
    pub scope_host_id: i64,
    pub host_id: Option<i64>,
    pub snapshot_id: String,
    pub short_id: String,
    pub time: i64,
    pub hostname: String,
    pub paths: String,
    pub tags: String,
    pub plan_id: Option<i64>,
    pub job_id: Option<i64>,
    pub files_new: Option<i64>,
    pub files_changed: Option<i64>,
    pub data_added: Option<i64>,
    pub total_bytes_processed: Option<i64>,
    pub duration_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
