//! Mail: templates, transports, delivering one job, and the worker that
//! drains the outbox.

pub mod backoff;
pub mod delivery;
pub mod mailer;
pub mod templates;
pub mod transport;
pub mod worker;
