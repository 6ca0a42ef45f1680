//! Mail: templates, transports, and the worker that drains the outbox.

pub mod templates;
pub mod transport;
pub mod worker;
