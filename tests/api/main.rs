//! rekey's integration tests: one binary, so the suite links once.

mod authenticate;
mod helpers;
mod mail;
mod operations;
mod reset;
mod secrets;
mod sign_up;
mod tokens;
mod validation;
