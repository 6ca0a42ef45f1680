//! rekey's integration tests: one binary, so the suite links once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may fail loudly

mod authenticate;
mod helpers;
mod mail;
mod operations;
mod reset;
mod secrets;
mod sign_up;
mod tokens;
mod validation;
