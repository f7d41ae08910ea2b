//! The audit log: who did what to which object, from where, when.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    At,
    Actor,
    ActorId,
    Action,
    TargetKind,
    TargetId,
    Details,
    ClientAddr,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .col(big_pk_auto(AuditLog::Id))
                .col(big_integer(AuditLog::At))
                .col(string(AuditLog::Actor))
                .col(big_integer_null(AuditLog::ActorId))
                .col(string(AuditLog::Action))
                .col(string(AuditLog::TargetKind).default(""))
                .col(string(AuditLog::TargetId).default(""))
                .col(text(AuditLog::Details).default("{}"))
                .col(string(AuditLog::ClientAddr).default(""))
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("audit_log_at", AuditLog::At),
            ("audit_log_action", AuditLog::Action),
            ("audit_log_actor", AuditLog::Actor),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(AuditLog::Table)
                    .col(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await
    }
}
