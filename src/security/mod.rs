//! Password hashing on a bounded pool.

pub mod hashing;
