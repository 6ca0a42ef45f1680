//! Table mappings. The schema itself is defined by the migrations crate.
//! Status, purpose and kind columns are typed enums stored as short strings.

use sea_orm::entity::prelude::*;

/// Whether an account may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum AccountStatus {
    #[sea_orm(string_value = "active")]
    Active,
}

/// Where a mail job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum MailStatus {
    /// Waiting for its first or next attempt.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Accepted by the relay (or written to a file).
    #[sea_orm(string_value = "sent")]
    Sent,
    /// Finished without mail, e.g. a reset for an unknown address.
    #[sea_orm(string_value = "skipped")]
    Skipped,
    /// Failed permanently or too often; waits for an operator.
    #[sea_orm(string_value = "dead")]
    Dead,
}

/// What a mail job was queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum MailKind {
    #[sea_orm(string_value = "reset")]
    Reset,
    #[sea_orm(string_value = "sign_up")]
    SignUp,
    /// A sign-up for an address that already has an account: the mail
    /// offers a reset instead. Known only once the worker has looked.
    #[sea_orm(string_value = "already_registered")]
    AlreadyRegistered,
    #[sea_orm(string_value = "password_changed")]
    PasswordChanged,
}

impl MailKind {
    /// The stored name, for metrics.
    pub fn name(self) -> &'static str {
        match self {
            MailKind::Reset => "reset",
            MailKind::SignUp => "sign_up",
            MailKind::AlreadyRegistered => "already_registered",
            MailKind::PasswordChanged => "password_changed",
        }
    }
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum AuditKind {
    #[sea_orm(string_value = "reset_requested")]
    ResetRequested,
    #[sea_orm(string_value = "sign_up_requested")]
    SignUpRequested,
    #[sea_orm(string_value = "mailed")]
    Mailed,
    #[sea_orm(string_value = "verified")]
    Verified,
    #[sea_orm(string_value = "password_reset")]
    PasswordReset,
    #[sea_orm(string_value = "signed_up")]
    SignedUp,
    #[sea_orm(string_value = "revoked")]
    Revoked,
    #[sea_orm(string_value = "authentication_failed")]
    AuthenticationFailed,
    /// A call refused by a rate limit; `detail` names the limit.
    #[sea_orm(string_value = "rate_limited")]
    RateLimited,
    /// An operator put a dead letter back in the queue.
    #[sea_orm(string_value = "mail_retried")]
    MailRetried,
}

pub mod account {
    use sea_orm::entity::prelude::*;

    use super::AccountStatus;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub email: String,
        pub display_name: String,
        pub password_hash: String,
        pub status: AccountStatus,
        pub locale: String,
        pub created_at: i64,
        pub password_changed_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod request {
    use sea_orm::entity::prelude::*;

    use crate::domain::{Purpose, RequestState};

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "requests")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub purpose: Purpose,
        pub email: String,
        pub account_id: Option<String>,
        pub display_name: String,
        pub locale: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub consumed_at: Option<i64>,
        pub revoked_at: Option<i64>,
    }

    impl Model {
        pub fn state(&self, now: i64) -> RequestState {
            RequestState::at(self.consumed_at, self.revoked_at, self.expires_at, now)
        }
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod request_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "request_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub digest: String,
        pub request_id: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod mail_outbox {
    use sea_orm::entity::prelude::*;

    use super::{MailKind, MailStatus};

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "mail_outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub kind: MailKind,
        pub recipient: String,
        pub payload: String,
        pub request_id: Option<String>,
        pub status: MailStatus,
        pub attempts: i32,
        pub next_attempt_at: i64,
        pub locked_until: Option<i64>,
        /// Stamped by each claim; every later write must match it.
        pub lease_token: Option<String>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub sent_at: Option<i64>,
        /// The `traceparent` of the request that queued the job, if traced.
        pub trace_context: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_event {
    use sea_orm::entity::prelude::*;

    use super::AuditKind;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub at: i64,
        pub kind: AuditKind,
        pub account_id: Option<String>,
        pub request_id: Option<String>,
        pub email_hint: Option<String>,
        pub ip: Option<String>,
        pub detail: Option<String>,
        /// The calling service: API key name or client certificate CN.
        pub caller: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
