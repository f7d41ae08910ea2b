//! Jobs (restic runs and agent updates) and their logs.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    HostId,
    Kind,
    Status,
    ActorKind,
    ActorId,
    ActorName,
    CreatedAt,
    StartedAt,
    FinishedAt,
    ExitCode,
    Error,
    Stats,
    TargetVersion,
    DeadlineAt,
    LogBytes,
    LogLines,
    LogTruncated,
}

#[derive(DeriveIden)]
enum JobLogs {
    Table,
    JobId,
    Pos,
    Seq,
    Ts,
    Stream,
    Payload,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Jobs::Table)
                .col(big_pk_auto(Jobs::Id))
                .col(big_integer(Jobs::HostId))
                .col(string(Jobs::Kind))
                .col(string(Jobs::Status))
                .col(string(Jobs::ActorKind))
                .col(big_integer_null(Jobs::ActorId))
                .col(string(Jobs::ActorName).default(""))
                .col(big_integer(Jobs::CreatedAt))
                .col(big_integer_null(Jobs::StartedAt))
                .col(big_integer_null(Jobs::FinishedAt))
                .col(integer_null(Jobs::ExitCode))
                .col(text_null(Jobs::Error))
                .col(text_null(Jobs::Stats))
                .col(string_null(Jobs::TargetVersion))
                .col(big_integer_null(Jobs::DeadlineAt))
                .col(big_integer(Jobs::LogBytes).default(0))
                .col(big_integer(Jobs::LogLines).default(0))
                .col(boolean(Jobs::LogTruncated).default(false))
                .check(Expr::cust(
                    "kind IN ('backup','init','forget','prune','check','unlock','restore','diff','update')",
                ))
                .check(Expr::cust(
                    "status IN ('queued','running','succeeded','failed','cancelled')",
                ))
                .check(Expr::cust("actor_kind IN ('user','schedule','system')"))
                .foreign_key(
                    ForeignKey::create()
                        .from(Jobs::Table, Jobs::HostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            ("jobs_host_created", vec![Jobs::HostId, Jobs::CreatedAt]),
            ("jobs_status", vec![Jobs::Status]),
            ("jobs_kind_status", vec![Jobs::Kind, Jobs::Status]),
            ("jobs_created_at", vec![Jobs::CreatedAt]),
        ] {
            let mut idx = Index::create();
            idx.name(name).table(Jobs::Table);
            for c in cols {
                idx.col(c);
            }
            m.create_index(idx.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(JobLogs::Table)
                .col(big_integer(JobLogs::JobId))
                .col(big_integer(JobLogs::Pos))
                .col(big_integer(JobLogs::Seq))
                .col(big_integer(JobLogs::Ts))
                .col(string(JobLogs::Stream))
                .col(text(JobLogs::Payload))
                .primary_key(Index::create().col(JobLogs::JobId).col(JobLogs::Pos))
                .foreign_key(
                    ForeignKey::create()
                        .from(JobLogs::Table, JobLogs::JobId)
                        .to(Jobs::Table, Jobs::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The agent's seq identifies a line for de-duplication.
        m.create_index(
            Index::create()
                .name("job_logs_job_seq")
                .table(JobLogs::Table)
                .col(JobLogs::JobId)
                .col(JobLogs::Seq)
                .unique()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(JobLogs::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
