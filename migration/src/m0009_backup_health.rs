//! Fleet backup health: each stored (plan, host) schedule row also keeps the
//! outcome of that plan's last finished backup on that host, its last
//! success, and the last success's duration and data added. Updated when a
//! backup ends, so "which hosts are failing, stale, pending" is an indexed
//! question over `plan_schedules` instead of a scan of every job. Existing
//! rows are filled from the jobs already recorded.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PlanSchedules {
    Table,
    LastFinishedAt,
    LastStatus,
    LastSuccessAt,
    LastDurationMs,
    LastDataAdded,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    PlanId,
    HostId,
    Id,
}

/// The backups of the schedule row's (plan, host) that count: a success or a
/// failure (cancelled and skipped runs say nothing about the host's health).
const PAIR: &str = "j.plan_id = plan_schedules.plan_id AND j.host_id = plan_schedules.host_id \
     AND j.kind = 'backup' AND j.finished_at IS NOT NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER.
        for col in [
            ColumnDef::new(PlanSchedules::LastFinishedAt)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(PlanSchedules::LastStatus)
                .string()
                .null()
                .to_owned(),
            ColumnDef::new(PlanSchedules::LastSuccessAt)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(PlanSchedules::LastDurationMs)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(PlanSchedules::LastDataAdded)
                .big_integer()
                .null()
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(PlanSchedules::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        // A plan's runs on one host, newest first: the health refresh after
        // each backup and the scheduler's "previous run" question (a plan
        // covering 10,000 hosts has millions of jobs under jobs_plan alone).
        m.create_index(
            Index::create()
                .name("jobs_plan_host")
                .table(Jobs::Table)
                .col(Jobs::PlanId)
                .col(Jobs::HostId)
                .col(Jobs::Id)
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared(&format!(
            "UPDATE plan_schedules SET \
               last_finished_at = (SELECT MAX(j.finished_at) FROM jobs j WHERE {PAIR} \
                 AND j.status IN ('succeeded', 'failed')), \
               last_success_at = (SELECT MAX(j.finished_at) FROM jobs j WHERE {PAIR} \
                 AND j.status = 'succeeded'), \
               last_status = (SELECT j.status FROM jobs j WHERE {PAIR} \
                 AND j.status IN ('succeeded', 'failed') \
                 ORDER BY j.finished_at DESC, j.id DESC LIMIT 1)"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("jobs_plan_host")
                .table(Jobs::Table)
                .to_owned(),
        )
        .await?;
        for col in [
            PlanSchedules::LastFinishedAt,
            PlanSchedules::LastStatus,
            PlanSchedules::LastSuccessAt,
            PlanSchedules::LastDurationMs,
            PlanSchedules::LastDataAdded,
        ] {
            m.alter_table(
                Table::alter()
                    .table(PlanSchedules::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
