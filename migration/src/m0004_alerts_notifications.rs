//! Alerts (deduplicated by key while active) and webhook notifications:
//! targets and the persisted delivery queue.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Alerts {
    Table,
    Id,
    Kind,
    DedupKey,
    HostId,
    Severity,
    Message,
    Count,
    RaisedAt,
    LastSeenAt,
    ResolvedAt,
}

#[derive(DeriveIden)]
enum NotificationTargets {
    Table,
    Id,
    Name,
    Url,
    Secret,
    Enabled,
    CreatedAt,
}

#[derive(DeriveIden)]
enum NotificationDeliveries {
    Table,
    Id,
    TargetId,
    AlertId,
    Event,
    Payload,
    Status,
    Attempts,
    LastError,
    NextAttemptAt,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alerts::Table)
                .col(big_pk_auto(Alerts::Id))
                .col(string(Alerts::Kind))
                .col(string(Alerts::DedupKey))
                .col(big_integer_null(Alerts::HostId))
                .col(string(Alerts::Severity))
                .col(text(Alerts::Message))
                .col(big_integer(Alerts::Count).default(1))
                .col(big_integer(Alerts::RaisedAt))
                .col(big_integer(Alerts::LastSeenAt))
                .col(big_integer_null(Alerts::ResolvedAt))
                .check(Expr::cust("severity IN ('info','warning','critical')"))
                .foreign_key(
                    ForeignKey::create()
                        .from(Alerts::Table, Alerts::HostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // At most one active alert per dedup key: the database, not a mutex,
        // makes concurrent raises of one condition collapse into one row.
        // Partial indexes have the same syntax on SQLite and Postgres.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX alerts_active_dedup_key ON alerts (dedup_key) \
                 WHERE resolved_at IS NULL",
            )
            .await?;
        for (name, cols) in [
            ("alerts_resolved_at", vec![Alerts::ResolvedAt]),
            (
                "alerts_kind_resolved",
                vec![Alerts::Kind, Alerts::ResolvedAt],
            ),
            ("alerts_host_id", vec![Alerts::HostId]),
        ] {
            let mut idx = Index::create();
            idx.name(name).table(Alerts::Table);
            for c in cols {
                idx.col(c);
            }
            m.create_index(idx.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(NotificationTargets::Table)
                .col(big_pk_auto(NotificationTargets::Id))
                .col(string_uniq(NotificationTargets::Name))
                .col(text(NotificationTargets::Url))
                .col(text_null(NotificationTargets::Secret))
                .col(boolean(NotificationTargets::Enabled).default(true))
                .col(big_integer(NotificationTargets::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(NotificationDeliveries::Table)
                .col(big_pk_auto(NotificationDeliveries::Id))
                .col(big_integer(NotificationDeliveries::TargetId))
                .col(big_integer_null(NotificationDeliveries::AlertId))
                .col(string(NotificationDeliveries::Event))
                .col(text(NotificationDeliveries::Payload))
                .col(string(NotificationDeliveries::Status))
                .col(integer(NotificationDeliveries::Attempts).default(0))
                .col(text_null(NotificationDeliveries::LastError))
                .col(big_integer(NotificationDeliveries::NextAttemptAt))
                .col(big_integer(NotificationDeliveries::CreatedAt))
                .col(big_integer(NotificationDeliveries::UpdatedAt))
                .check(Expr::cust("event IN ('raised','resolved','test')"))
                .check(Expr::cust("status IN ('pending','delivered','failed')"))
                .foreign_key(
                    ForeignKey::create()
                        .from(
                            NotificationDeliveries::Table,
                            NotificationDeliveries::TargetId,
                        )
                        .to(NotificationTargets::Table, NotificationTargets::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(
                            NotificationDeliveries::Table,
                            NotificationDeliveries::AlertId,
                        )
                        .to(Alerts::Table, Alerts::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            (
                "notification_deliveries_status",
                NotificationDeliveries::Status,
            ),
            (
                "notification_deliveries_target_id",
                NotificationDeliveries::TargetId,
            ),
            (
                "notification_deliveries_alert_id",
                NotificationDeliveries::AlertId,
            ),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(NotificationDeliveries::Table)
                    .col(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(NotificationDeliveries::Table)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(NotificationTargets::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Alerts::Table).to_owned())
            .await
    }
}
