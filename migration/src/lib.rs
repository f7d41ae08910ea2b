//! Schema migrations, applied in order at server start. A migration is never
//! edited after it lands; a change of schema is a new file.
pub use sea_orm_migration::prelude::*;

mod m0001_foundation;
mod m0002_audit_log;
mod m0003_jobs;
mod m0004_alerts_notifications;
mod m0005_one_live_update_per_host;
mod m0006_fleet_updates;
mod m0007_restic_core;
mod m0008_plans;
mod m0009_backup_health;
mod m0010_jobs_host_id;
mod m0011_job_references;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_foundation::Migration),
            Box::new(m0002_audit_log::Migration),
            Box::new(m0003_jobs::Migration),
            Box::new(m0004_alerts_notifications::Migration),
            Box::new(m0005_one_live_update_per_host::Migration),
            Box::new(m0006_fleet_updates::Migration),
            Box::new(m0007_restic_core::Migration),
            Box::new(m0008_plans::Migration),
            Box::new(m0009_backup_health::Migration),
            Box::new(m0010_jobs_host_id::Migration),
            Box::new(m0011_job_references::Migration),
        ]
    }
}
