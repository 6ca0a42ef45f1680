//! An index for the worker's look for pending jobs out of attempts, which
//! otherwise reads every pending row before each batch: with a backlog of
//! 100,000 mails that scan, not the sending, bounded delivery.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "mail_outbox_status_attempts";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table("mail_outbox")
                    .col("status")
                    .col("attempts")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table("mail_outbox").to_owned())
            .await
    }
}
