use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "repositories")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    pub url_enc: String,
    pub url_masked: String,
    pub local: bool,
    pub password_enc: String,
    pub env_enc: Option<String>,
    pub env_keys: String,
    pub maintenance_host_id: Option<i64>,
    pub maintenance_schedule: String,
    pub prune: bool,
    pub max_unused: Option<String>,
    pub check_every_days: i32,
    pub check_read_data_subset: Option<String>,
    pub max_concurrent_backups: i32,
    pub last_check_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
