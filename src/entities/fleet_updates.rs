use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "fleet_updates")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub started_at: i64,
    pub started_by_user_id: Option<i64>,
    pub started_by: String,
    pub target_version: String,
    pub status: String,
    pub current_host_id: Option<i64>,
    pub halted_reason: Option<String>,
    pub completed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
