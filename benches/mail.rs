//! Load generator for the mail path: mails per second from the outbox to a
//! local SMTP sink, against a plain lettre loop sending the same kind of
//! messages over the same pooled transport in the same run, and whether
//! the outbox drains as fast as `SignUp` fills it.
//!
//! `cargo bench --bench mail` (SQLite, or PostgreSQL when one answers);
//! REKEY_BENCH_ROUNDS sets the number of mails (default 2000).
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

#[path = "../tests/api/helpers/mod.rs"]
mod helpers;

use std::time::{Duration, Instant};

use futures::StreamExt;
use helpers::{Backend, SmtpSink, postgres_url, spawn_app_with};
use lettre::{
    Message,
    message::{MultiPart, header::ContentType},
};
use rekey::{grpc::pb, mail::transport::MailTransport};

/// Sends at once, as the worker's default `REKEY_MAIL_SEND_CONCURRENCY`.
const CONCURRENCY: usize = 8;
/// `SignUp` calls in flight while filling the outbox.
const CALLERS: usize = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mails: usize = std::env::var("REKEY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2000);
    let backend = if postgres_url().await.is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    println!("backend: {backend:?}, {mails} mails, {CONCURRENCY} sends at once");

    let plain = plain_lettre_loop(mails).await;
    println!(
        "{:<44} {:>10.0} mails/s",
        "plain lettre loop (ceiling)", plain
    );

    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("rate_limit_per_email", "off"))
            .merge(("rate_limit_per_ip", "off"))
            .merge(("mail_send_concurrency", CONCURRENCY))
            .merge(("mail_batch_size", 64))
    })
    .await;
    let started = Instant::now();
    let calls = futures::stream::iter(0..mails)
        .map(|i| {
            let mut reset = app.reset.clone();
            async move {
                reset
                    .sign_up(pb::SignUpRequest {
                        email: format!("user{i}@example.com"),
                        display_name: "User".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CALLERS)
        .collect::<Vec<()>>();
    calls.await;
    let filled = started.elapsed();
    let backlog_at_fill_end = mails.saturating_sub(app.mailbox.all().len());
    while app.mailbox.all().len() < mails {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = started.elapsed();
    let fill_rate = mails as f64 / filled.as_secs_f64();
    let drain_rate = mails as f64 / drained.as_secs_f64();
    println!(
        "{:<44} {:>10.0} calls/s",
        "SignUp filling the outbox", fill_rate
    );
    println!(
        "{:<44} {:>10.0} mails/s ({:.0}% of the plain loop)",
        "rekey outbox -> sink, while filling and after",
        drain_rate,
        100.0 * drain_rate / plain
    );
    println!(
        "{:<44} {:>10} mails, drained {:.2} s after the last call",
        "backlog when the last SignUp returned",
        backlog_at_fill_end,
        (drained - filled).as_secs_f64()
    );
    app.stop().await.unwrap();
}

/// The ceiling: the same pooled transport rekey builds, sending
/// multipart messages of the same shape, `CONCURRENCY` at a time.
async fn plain_lettre_loop(mails: usize) -> f64 {
    let sink = SmtpSink::start();
    let transport = MailTransport::smtp(
        &format!("smtp://{}", sink.addr),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let started = Instant::now();
    futures::stream::iter(0..mails)
        .map(|i| {
            let transport = &transport;
            async move {
                let message = Message::builder()
                    .from("rekey <no-reply@rekey.test>".parse().unwrap())
                    .to(format!("user{i}@example.com").parse().unwrap())
                    .subject("Confirm your email address")
                    .multipart(MultiPart::alternative_plain_html(
                        format!("Hello,\n\nopen https://app.example.com/reset?token={i:043}\n"),
                        format!(
                            "<p>Hello,</p><p><a href=\"https://app.example.com/reset?token={i:043}\">Confirm</a></p>"
                        ),
                    ))
                    .unwrap();
                transport.send(message).await.unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    mails as f64 / started.elapsed().as_secs_f64()
}
