//! Fenced mail leases: each claim of an outbox job stamps it with a fresh
//! token, and every write after the claim matches that token, so a worker
//! whose lease lapsed can no longer overwrite a newer outcome.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("mail_outbox")
                    .add_column(string_len_null("lease_token", 36))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("mail_outbox")
                    .drop_column("lease_token")
                    .to_owned(),
            )
            .await
    }
}
