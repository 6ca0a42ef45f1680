//! A masked hint ("j***@" and the domain) is up to three characters longer
//! than the address it masks, so the longest valid address (254 characters)
//! did not fit the 254 of `audit_events.email_hint`. PostgreSQL refused the
//! insert; SQLite does not enforce declared lengths, so only PostgreSQL's
//! column changes. It is the only column holding masked hints.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Room for any masked address (at most 257 characters) and then some.
const HINT_LEN: u32 = 320;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        resize(manager, HINT_LEN).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Hints that no longer fit are cut, as the old column would have
        // refused them whole.
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "UPDATE audit_events SET email_hint = left(email_hint, 254) \
                     WHERE length(email_hint) > 254",
                )
                .await?;
        }
        resize(manager, 254).await
    }
}

async fn resize(manager: &SchemaManager<'_>, len: u32) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table("audit_events")
                .modify_column(ColumnDef::new("email_hint").string_len(len).null())
                .to_owned(),
        )
        .await
}
