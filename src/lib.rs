//! rekey: a gRPC identity service for password reset and email-verified sign-up.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod mail;
pub mod security;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
