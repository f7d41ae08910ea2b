use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "fleet_update_hosts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub fleet_update_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub host_id: i64,
    pub position: i32,
    pub hostname: String,
    pub from_version: String,
    pub status: String,
    pub job_id: Option<i64>,
    pub failed_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
