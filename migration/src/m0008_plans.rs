//! Backup plans and the scheduler's stored state: the next run of every
//! (plan, host) the plan covers, and the next maintenance of every
//! repository. Storing them is what lets a restart run each overdue run
//! once instead of forgetting it or running it N times.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
    Name,
    RepositoryId,
    Paths,
    Excludes,
    Tags,
    Schedule,
    Timezone,
    SplaySecs,
    Hosts,
    Labels,
    Retention,
    ForgetAfterBackup,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PlanSchedules {
    Table,
    Id,
    PlanId,
    HostId,
    NextRunAt,
    Basis,
    CoveredSince,
}

#[derive(DeriveIden)]
enum RepositoryMaintenance {
    Table,
    RepositoryId,
    NextRunAt,
    Basis,
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Plans::Table)
                .col(big_pk_auto(Plans::Id))
                .col(string(Plans::Name).unique_key())
                .col(big_integer(Plans::RepositoryId))
                .col(text(Plans::Paths))
                .col(text(Plans::Excludes).default("[]"))
                .col(text(Plans::Tags).default("[]"))
                .col(string(Plans::Schedule))
                .col(string(Plans::Timezone))
                .col(integer(Plans::SplaySecs).default(0))
                .col(text(Plans::Hosts).default("[]"))
                .col(text(Plans::Labels).default("[]"))
                .col(text(Plans::Retention).default("{}"))
                .col(boolean(Plans::ForgetAfterBackup).default(false))
                .col(boolean(Plans::Enabled).default(true))
                .col(big_integer(Plans::CreatedAt))
                .col(big_integer(Plans::UpdatedAt))
                // The service refuses to delete a repository a plan uses
                // (409 in_use); the key makes sure nothing else can.
                .foreign_key(
                    ForeignKey::create()
                        .from(Plans::Table, Plans::RepositoryId)
                        .to(Repositories::Table, Repositories::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("plans_repository")
                .table(Plans::Table)
                .col(Plans::RepositoryId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PlanSchedules::Table)
                .col(big_pk_auto(PlanSchedules::Id))
                .col(big_integer(PlanSchedules::PlanId))
                .col(big_integer(PlanSchedules::HostId))
                .col(big_integer(PlanSchedules::NextRunAt))
                // schedule|timezone|splay the next run was computed from: a
                // change of any recomputes it.
                .col(string(PlanSchedules::Basis))
                // When the plan began to cover the host (backup health).
                .col(big_integer(PlanSchedules::CoveredSince))
                .foreign_key(
                    ForeignKey::create()
                        .from(PlanSchedules::Table, PlanSchedules::PlanId)
                        .to(Plans::Table, Plans::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(PlanSchedules::Table, PlanSchedules::HostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("plan_schedules_unique")
                .table(PlanSchedules::Table)
                .col(PlanSchedules::PlanId)
                .col(PlanSchedules::HostId)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("plan_schedules_next")
                .table(PlanSchedules::Table)
                .col(PlanSchedules::NextRunAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("plan_schedules_host")
                .table(PlanSchedules::Table)
                .col(PlanSchedules::HostId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RepositoryMaintenance::Table)
                .col(big_integer(RepositoryMaintenance::RepositoryId).primary_key())
                .col(big_integer(RepositoryMaintenance::NextRunAt))
                .col(string(RepositoryMaintenance::Basis))
                .foreign_key(
                    ForeignKey::create()
                        .from(
                            RepositoryMaintenance::Table,
                            RepositoryMaintenance::RepositoryId,
                        )
                        .to(Repositories::Table, Repositories::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RepositoryMaintenance::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(PlanSchedules::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Plans::Table).to_owned())
            .await
    }
}
