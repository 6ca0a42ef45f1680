//! Accounts, requests with their token digests, the mail outbox and audit
//! events. Timestamps are Unix milliseconds (BIGINT) so that comparisons are
//! exact and identical on SQLite and PostgreSQL.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("accounts")
                    .col(string_len("id", 36).primary_key())
                    .col(string_len_uniq("email", 254))
                    .col(string_len("display_name", 128))
                    .col(text("password_hash"))
                    .col(string_len("status", 16))
                    .col(string_len("locale", 35))
                    .col(big_integer("created_at"))
                    .col(big_integer("password_changed_at"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("requests")
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("purpose", 16))
                    .col(string_len("email", 254))
                    .col(string_len_null("account_id", 36))
                    .col(string_len("display_name", 128))
                    .col(string_len("locale", 35))
                    .col(big_integer("created_at"))
                    .col(big_integer("expires_at"))
                    .col(big_integer_null("consumed_at"))
                    .col(big_integer_null("revoked_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("requests", "account_id")
                            .to("accounts", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Invariant: at most one open request per email and purpose, even
        // with several replicas racing.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX requests_one_open_per_email_purpose \
                 ON requests (email, purpose) \
                 WHERE consumed_at IS NULL AND revoked_at IS NULL",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("request_tokens")
                    .col(string_len("digest", 64).primary_key())
                    .col(string_len("request_id", 36))
                    .col(big_integer("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("request_tokens", "request_id")
                            .to("requests", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("request_tokens_request_id")
                    .table("request_tokens")
                    .col("request_id")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("mail_outbox")
                    .col(big_pk_auto("id"))
                    .col(string_len("kind", 32))
                    .col(string_len("recipient", 254))
                    .col(text("payload"))
                    .col(string_len_null("request_id", 36))
                    .col(string_len("status", 16))
                    .col(integer("attempts"))
                    .col(big_integer("next_attempt_at"))
                    .col(big_integer_null("locked_until"))
                    .col(text_null("last_error"))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("sent_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("mail_outbox_due")
                    .table("mail_outbox")
                    .col("status")
                    .col("next_attempt_at")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("audit_events")
                    .col(big_pk_auto("id"))
                    .col(big_integer("at"))
                    .col(string_len("kind", 32))
                    .col(string_len_null("account_id", 36))
                    .col(string_len_null("request_id", 36))
                    .col(string_len_null("email_hint", 254))
                    .col(string_len_null("ip", 45))
                    .col(text_null("detail"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_at")
                    .table("audit_events")
                    .col("at")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "audit_events",
            "mail_outbox",
            "request_tokens",
            "requests",
            "accounts",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
