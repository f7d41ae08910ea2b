//! At most one live (queued or running) update job per host, enforced by
//! the database so two admins clicking at once cannot both dispatch.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Partial unique indexes: same syntax on SQLite and Postgres.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX jobs_one_live_update_per_host ON jobs (host_id) \
                 WHERE kind = 'update' AND status IN ('queued', 'running')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX jobs_one_live_update_per_host")
            .await?;
        Ok(())
    }
}
