//! Password hashing on a bounded pool; who may call (API keys, client
//! certificates); TLS for the gRPC port.

mod argon;
pub mod callers;
mod hash_threads;
pub mod hashing;
pub mod tls;

pub use argon::BlockMemory;
