use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agent_binaries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub file_name: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
