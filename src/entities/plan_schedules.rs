use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plan_schedules")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub plan_id: i64,
    pub host_id: i64,
    pub next_run_at: i64,
    pub basis: String,
    pub covered_since: i64,
    pub last_finished_at: Option<i64>,
    pub last_status: Option<String>,
    pub last_success_at: Option<i64>,
    pub last_duration_ms: Option<i64>,
    pub last_data_added: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
