//! Mail: templates, transports, delivering one job, and the worker that
//! drains the outbox.

pub mod backoff;
pub mod delivery;
pub mod mailer;
pub mod preview;
mod template_dir;
pub mod templates;
pub mod transport;
pub mod vars;
pub mod worker;
