use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plans")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    pub repository_id: i64,
    pub paths: String,
    pub excludes: String,
    pub tags: String,
    pub schedule: String,
    pub timezone: String,
    pub splay_secs: i32,
    pub hosts: String,
    pub labels: String,
    pub retention: String,
    pub forget_after_backup: bool,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
