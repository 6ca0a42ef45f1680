//! The schema of rekey, as sea-orm migrations. `rekey` runs them at start;
//! tests run these same migrations, never a schema derived from entities.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_initial_schema;
mod m20261123_000002_audit_caller;
mod m20261123_000003_rate_limits;
mod m20261130_000001_widen_email_hint;
mod m20261130_000002_mail_lease_token;
mod m20261201_000001_mail_trace_context;
mod m20261201_000002_mail_outbox_exhausted_index;
mod m20261206_000001_pending_mail_indexes;
mod m20261207_000001_admin_read_indexes;
mod m20261208_000001_widen_audit_caller;

/// Applies rekey's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_initial_schema::Migration),
            Box::new(m20261123_000002_audit_caller::Migration),
            Box::new(m20261123_000003_rate_limits::Migration),
            Box::new(m20261130_000001_widen_email_hint::Migration),
            Box::new(m20261130_000002_mail_lease_token::Migration),
            Box::new(m20261201_000001_mail_trace_context::Migration),
            Box::new(m20261201_000002_mail_outbox_exhausted_index::Migration),
            Box::new(m20261206_000001_pending_mail_indexes::Migration),
            Box::new(m20261207_000001_admin_read_indexes::Migration),
            Box::new(m20261208_000001_widen_audit_caller::Migration),
        ]
    }
}
