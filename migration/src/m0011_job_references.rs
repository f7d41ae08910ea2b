//! The columns that name a job without a foreign key get an index each:
//! `snapshots.job_id` and `fleet_update_hosts.job_id`. The retention purge
//! clears them for every batch of jobs it deletes (`UPDATE … SET job_id =
//! NULL WHERE job_id IN (…)`); without an index each batch read the whole
//! snapshot table (80 ms a batch at 300,000 snapshots on SQLite, so most of
//! the purge's time). See BENCHMARKS.md, history at scale.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Snapshots {
    Table,
    JobId,
}

#[derive(DeriveIden)]
enum FleetUpdateHosts {
    Table,
    JobId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("snapshots_job")
                .table(Snapshots::Table)
                .col(Snapshots::JobId)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("fleet_update_hosts_job")
                .table(FleetUpdateHosts::Table)
                .col(FleetUpdateHosts::JobId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("fleet_update_hosts_job")
                .table(FleetUpdateHosts::Table)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("snapshots_job")
                .table(Snapshots::Table)
                .to_owned(),
        )
        .await
    }
}
