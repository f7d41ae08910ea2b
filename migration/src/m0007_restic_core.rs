//! The restic core: repositories (secrets encrypted by the server, never
//! stored in clear), the snapshot index, restic facts and labels on hosts,
//! and what a restic job needs on its row (repository, options to dispatch
//! it after a restart, result, the concurrency scope). Job kinds gain
//! `snapshots`, `ls` and `stats`, statuses gain `skipped`.
use sea_orm_migration::{prelude::*, schema::*, sea_orm::ConnectionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
    Labels,
    ResticVersion,
    ResticCapable,
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
    Name,
    UrlEnc,
    UrlMasked,
    Local,
    PasswordEnc,
    EnvEnc,
    EnvKeys,
    MaintenanceHostId,
    MaintenanceSchedule,
    Prune,
    MaxUnused,
    CheckEveryDays,
    CheckReadDataSubset,
    MaxConcurrentBackups,
    LastCheckAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Status,
    RepositoryId,
    PlanId,
    Warning,
    ErrorKind,
    Result,
    Options,
    Scope,
}

#[derive(DeriveIden)]
enum Snapshots {
    Table,
    Id,
    RepositoryId,
    ScopeHostId,
    HostId,
    SnapshotId,
    ShortId,
    Time,
    Hostname,
    Paths,
    Tags,
    PlanId,
    JobId,
    FilesNew,
    FilesChanged,
    DataAdded,
    TotalBytesProcessed,
    DurationMs,
}

const KINDS_OLD: &str =
    "kind IN ('backup','init','forget','prune','check','unlock','restore','diff','update')";
const KINDS_NEW: &str = "kind IN ('backup','init','forget','prune','check','unlock','restore','diff','update','snapshots','ls','stats')";
const STATUS_OLD: &str = "status IN ('queued','running','succeeded','failed','cancelled')";
const STATUS_NEW: &str =
    "status IN ('queued','running','succeeded','failed','cancelled','skipped')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        widen_job_checks(m).await?;

        m.create_table(
            Table::create()
                .table(Repositories::Table)
                .col(big_pk_auto(Repositories::Id))
                .col(string(Repositories::Name).unique_key())
                .col(text(Repositories::UrlEnc))
                .col(text(Repositories::UrlMasked))
                .col(boolean(Repositories::Local))
                .col(text(Repositories::PasswordEnc))
                .col(text_null(Repositories::EnvEnc))
                .col(text(Repositories::EnvKeys).default("[]"))
                .col(big_integer_null(Repositories::MaintenanceHostId))
                .col(string(Repositories::MaintenanceSchedule))
                .col(boolean(Repositories::Prune).default(true))
                .col(string_null(Repositories::MaxUnused))
                .col(integer(Repositories::CheckEveryDays).default(7))
                .col(string_null(Repositories::CheckReadDataSubset))
                .col(integer(Repositories::MaxConcurrentBackups).default(0))
                .col(big_integer_null(Repositories::LastCheckAt))
                .col(big_integer(Repositories::CreatedAt))
                .col(big_integer(Repositories::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Repositories::Table, Repositories::MaintenanceHostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;

        for col in [
            ColumnDef::new(Hosts::Labels)
                .text()
                .not_null()
                .default("[]")
                .to_owned(),
            ColumnDef::new(Hosts::ResticVersion)
                .string()
                .null()
                .to_owned(),
            ColumnDef::new(Hosts::ResticCapable)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Hosts::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }

        for col in [
            ColumnDef::new(Jobs::RepositoryId)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Jobs::PlanId).big_integer().null().to_owned(),
            ColumnDef::new(Jobs::Warning)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Jobs::ErrorKind).string().null().to_owned(),
            ColumnDef::new(Jobs::Result).text().null().to_owned(),
            ColumnDef::new(Jobs::Options).text().null().to_owned(),
            ColumnDef::new(Jobs::Scope).string().null().to_owned(),
        ] {
            m.alter_table(Table::alter().table(Jobs::Table).add_column(col).to_owned())
                .await?;
        }
        // The dispatcher's questions: what waits on this host, what runs in
        // this repository scope.
        for (name, cols) in [
            ("jobs_scope_status", vec![Jobs::Scope, Jobs::Status]),
            ("jobs_repository", vec![Jobs::RepositoryId]),
            ("jobs_plan", vec![Jobs::PlanId]),
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
                .table(Snapshots::Table)
                .col(big_pk_auto(Snapshots::Id))
                .col(big_integer(Snapshots::RepositoryId))
                // 0 for a shared repository; the host for a local one (the
                // same repository row is one repository per host then).
                .col(big_integer(Snapshots::ScopeHostId).default(0))
                .col(big_integer_null(Snapshots::HostId))
                .col(string(Snapshots::SnapshotId))
                .col(string(Snapshots::ShortId))
                .col(big_integer(Snapshots::Time))
                .col(string(Snapshots::Hostname))
                .col(text(Snapshots::Paths))
                .col(text(Snapshots::Tags))
                .col(big_integer_null(Snapshots::PlanId))
                .col(big_integer_null(Snapshots::JobId))
                .col(big_integer_null(Snapshots::FilesNew))
                .col(big_integer_null(Snapshots::FilesChanged))
                .col(big_integer_null(Snapshots::DataAdded))
                .col(big_integer_null(Snapshots::TotalBytesProcessed))
                .col(big_integer_null(Snapshots::DurationMs))
                .foreign_key(
                    ForeignKey::create()
                        .from(Snapshots::Table, Snapshots::RepositoryId)
                        .to(Repositories::Table, Repositories::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Snapshots::Table, Snapshots::HostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("snapshots_unique")
                .table(Snapshots::Table)
                .col(Snapshots::RepositoryId)
                .col(Snapshots::ScopeHostId)
                .col(Snapshots::SnapshotId)
                .unique()
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            (
                "snapshots_host_time",
                vec![Snapshots::HostId, Snapshots::Time],
            ),
            (
                "snapshots_repository_time",
                vec![Snapshots::RepositoryId, Snapshots::Time],
            ),
        ] {
            let mut idx = Index::create();
            idx.name(name).table(Snapshots::Table);
            for c in cols {
                idx.col(c);
            }
            m.create_index(idx.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Snapshots::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Repositories::Table).to_owned())
            .await
    }
}

/// The jobs table's CHECK constraints take the new kinds and status.
/// Postgres alters them in place; SQLite cannot, so the table is rebuilt
/// from its own stored definition (foreign keys off for the swap, as
/// SQLite's documentation prescribes, so job logs are not cascaded away).
async fn widen_job_checks(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = m.get_connection();
    match db.get_database_backend() {
        sea_orm_migration::sea_orm::DatabaseBackend::Postgres => {
            let rows = db
                .query_all_raw(sea_orm_migration::sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = 'jobs'::regclass AND contype = 'c'"
                        .to_string(),
                ))
                .await?;
            for row in rows {
                let name: String = row.try_get_by_index(0)?;
                let def: String = row.try_get_by_index(1)?;
                let replacement = if def.contains("'update'") && def.contains("kind") {
                    KINDS_NEW
                } else if def.contains("'cancelled'") && def.contains("status") {
                    STATUS_NEW
                } else {
                    continue;
                };
                db.execute_unprepared(&format!(
                    "ALTER TABLE jobs DROP CONSTRAINT \"{name}\"; \
                     ALTER TABLE jobs ADD CONSTRAINT \"{name}\" CHECK ({replacement})"
                ))
                .await?;
            }
            Ok(())
        }
        _ => {
            let rows = db
                .query_all_raw(sea_orm_migration::sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    "SELECT type, name, sql FROM sqlite_master \
                     WHERE tbl_name = 'jobs' AND sql IS NOT NULL"
                        .to_string(),
                ))
                .await?;
            let mut table_sql = None;
            let mut indexes = Vec::new();
            for row in rows {
                let kind: String = row.try_get_by_index(0)?;
                let sql: String = row.try_get_by_index(2)?;
                if kind == "table" {
                    table_sql = Some(sql);
                } else if kind == "index" {
                    indexes.push(sql);
                }
            }
            let table_sql =
                table_sql.ok_or_else(|| DbErr::Migration("the jobs table is missing".into()))?;
            if !table_sql.contains(KINDS_OLD) || !table_sql.contains(STATUS_OLD) {
                return Err(DbErr::Migration(
                    "the jobs table's CHECK constraints are not the expected ones".into(),
                ));
            }
            let new_sql = table_sql
                .replacen("\"jobs\"", "\"jobs_new\"", 1)
                .replace(KINDS_OLD, KINDS_NEW)
                .replace(STATUS_OLD, STATUS_NEW);
            if !new_sql.contains("\"jobs_new\"") {
                return Err(DbErr::Migration(
                    "cannot rename the jobs table's definition".into(),
                ));
            }
            // One batch on one connection: the pragma is per connection and
            // cannot change inside a transaction.
            let mut batch = String::from("PRAGMA foreign_keys = OFF;\nBEGIN;\n");
            batch.push_str(&new_sql);
            batch.push_str(";\nINSERT INTO jobs_new SELECT * FROM jobs;\nDROP TABLE jobs;\n");
            batch.push_str("ALTER TABLE jobs_new RENAME TO jobs;\n");
            for idx in &indexes {
                batch.push_str(idx);
                batch.push_str(";\n");
            }
            batch.push_str("COMMIT;\nPRAGMA foreign_keys = ON;\n");
            db.execute_unprepared(&batch).await?;
            Ok(())
        }
    }
}
