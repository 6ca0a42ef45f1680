//! Rate limits shared by every replica: one row per limited key (a digest,
//! never the address or IP itself) holding its GCRA state.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("rate_limits")
                    .col(string_len("key", 64).primary_key())
                    // Theoretical arrival time of the next call (Unix ms).
                    .col(big_integer("tat"))
                    // Period / count, and period minus that: GCRA's spacing
                    // and burst tolerance for this key's limit.
                    .col(big_integer("emission_ms"))
                    .col(big_integer("tolerance_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rate_limits_tat")
                    .table("rate_limits")
                    .col("tat")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("rate_limits").to_owned())
            .await
    }
}
