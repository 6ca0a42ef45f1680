//! `audit_events.caller` held at most 64 characters, but neither an API
//! key's name nor a client certificate's CN is bounded: on PostgreSQL a
//! longer name failed the insert, and with it every write batched with
//! the call. SQLite does not enforce declared lengths, so only
//! PostgreSQL's column changes.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const OLD_LEN: u32 = 64;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table("audit_events")
                    .modify_column(ColumnDef::new("caller").text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        // Names that no longer fit are cut, as the old column would have
        // refused them whole.
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "UPDATE audit_events SET caller = left(caller, {OLD_LEN}) \
                 WHERE length(caller) > {OLD_LEN}"
            ))
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("audit_events")
                    .modify_column(ColumnDef::new("caller").string_len(OLD_LEN).null())
                    .to_owned(),
            )
            .await
    }
}
