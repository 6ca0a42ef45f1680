//! Password hashing on a bounded pool; who may call (API keys, client
//! certificates); TLS for the gRPC port.

pub mod callers;
pub mod hashing;
pub mod tls;
