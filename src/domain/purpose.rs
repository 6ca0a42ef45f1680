use sea_orm::entity::prelude::*;

/// What a request and its tokens are for. Stored as its string value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Purpose {
    #[sea_orm(string_value = "reset")]
    Reset,
    #[sea_orm(string_value = "sign_up")]
    SignUp,
}
