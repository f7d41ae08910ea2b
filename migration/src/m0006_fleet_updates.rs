//! Rolling fleet updates: one row per run, one per host in it. At most one
//! run is `running`, enforced by a partial unique index.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FleetUpdates {
    Table,
    Id,
    StartedAt,
    StartedByUserId,
    StartedBy,
    TargetVersion,
    Status,
    CurrentHostId,
    HaltedReason,
    CompletedAt,
}

#[derive(DeriveIden)]
enum FleetUpdateHosts {
    Table,
    FleetUpdateId,
    HostId,
    Position,
    Hostname,
    FromVersion,
    Status,
    JobId,
    FailedReason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(FleetUpdates::Table)
                .col(big_pk_auto(FleetUpdates::Id))
                .col(big_integer(FleetUpdates::StartedAt))
                .col(big_integer_null(FleetUpdates::StartedByUserId))
                .col(string(FleetUpdates::StartedBy))
                .col(string(FleetUpdates::TargetVersion))
                .col(string(FleetUpdates::Status))
                .col(big_integer_null(FleetUpdates::CurrentHostId))
                .col(text_null(FleetUpdates::HaltedReason))
                .col(big_integer_null(FleetUpdates::CompletedAt))
                .check(Expr::cust(
                    "status IN ('running','completed','halted','cancelled')",
                ))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared(
            "CREATE UNIQUE INDEX fleet_updates_one_running ON fleet_updates (status) \
             WHERE status = 'running'",
        )
        .await?;
        m.create_index(
            Index::create()
                .name("fleet_updates_started_at")
                .table(FleetUpdates::Table)
                .col(FleetUpdates::StartedAt)
                .to_owned(),
        )
        .await?;
        // host_id is deliberately not a foreign key: a host removed
        // mid-run stays in the run's history, skipped with a reason.
        m.create_table(
            Table::create()
                .table(FleetUpdateHosts::Table)
                .col(big_integer(FleetUpdateHosts::FleetUpdateId))
                .col(big_integer(FleetUpdateHosts::HostId))
                .col(integer(FleetUpdateHosts::Position))
                .col(string(FleetUpdateHosts::Hostname))
                .col(string(FleetUpdateHosts::FromVersion))
                .col(string(FleetUpdateHosts::Status))
                .col(big_integer_null(FleetUpdateHosts::JobId))
                .col(text_null(FleetUpdateHosts::FailedReason))
                .primary_key(
                    Index::create()
                        .col(FleetUpdateHosts::FleetUpdateId)
                        .col(FleetUpdateHosts::HostId),
                )
                .check(Expr::cust(
                    "status IN ('pending','running','succeeded','failed','skipped')",
                ))
                .foreign_key(
                    ForeignKey::create()
                        .from(FleetUpdateHosts::Table, FleetUpdateHosts::FleetUpdateId)
                        .to(FleetUpdates::Table, FleetUpdates::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("fleet_update_hosts_position")
                .table(FleetUpdateHosts::Table)
                .col(FleetUpdateHosts::FleetUpdateId)
                .col(FleetUpdateHosts::Position)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(FleetUpdateHosts::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(FleetUpdates::Table).to_owned())
            .await
    }
}
