//! rekey's integration tests: one binary, so the suite links once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may fail loudly

mod authenticate;
mod callers;
mod config;
mod helpers;
mod hostile;
mod limits;
mod mail;
mod operations;
mod overload;
mod protected;
mod reset;
mod secrets;
mod sign_up;
mod tls;
mod tokens;
mod validation;
