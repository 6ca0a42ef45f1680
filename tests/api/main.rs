//! rekey's integration tests: one binary, so the suite links once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may fail loudly

mod admin;
mod authenticate;
mod callers;
mod config;
mod constant_work;
mod helpers;
mod hostile;
mod limits;
mod mail;
mod mail_survival;
mod migrations;
mod observability;
mod operations;
mod overload;
mod password_policy;
mod protected;
mod query_plans;
mod relay_tls;
mod reset;
mod retention;
mod secrets;
mod sign_up;
mod templates;
mod tls;
mod tokens;
mod validation;
