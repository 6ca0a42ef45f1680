//! Load generator for invariant 5 (no account enumeration by timing): the
//! latency a caller sees from `RequestReset`, `SignUp` and `Authenticate`
//! for a registered and an unregistered email, interleaved, on the real
//! server with production argon2 parameters. Prints percentiles per case.
//!
//! `cargo bench --bench enumeration` (SQLite); set REKEY_TEST_POSTGRES_URL
//! for PostgreSQL, REKEY_BENCH_ROUNDS for more or fewer calls.
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

use helpers::{Backend, TestApp, postgres_url, spawn_app_with};
use rekey::grpc::pb;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("REKEY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(400);
    let backend = if postgres_url().await.is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("argon2_memory_kib", 19_456))
            .merge(("argon2_iterations", 2))
            // Limits would refuse the repeated calls; timing is under test here.
            .merge(("rate_limit_per_email", "off"))
            .merge(("rate_limit_per_ip", "off"))
            .merge(("auth_failure_limit", "off"))
    })
    .await;
    app.create_account("known@example.com", "Known").await;
    println!("backend: {backend:?}, {rounds} calls per case, interleaved");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "case", "p50 ms", "p90 ms", "p99 ms", "mean ms"
    );

    let (known, unknown) = interleaved(rounds, &mut app, |app, email| {
        Box::pin(async move {
            app.reset
                .request_reset(pb::RequestResetRequest {
                    email: email.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        })
    })
    .await;
    report("RequestReset registered", &known);
    report("RequestReset unregistered", &unknown);
    gap(&known, &unknown);

    let (known, unknown) = interleaved(rounds, &mut app, |app, email| {
        Box::pin(async move {
            app.reset
                .sign_up(pb::SignUpRequest {
                    email: email.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        })
    })
    .await;
    report("SignUp registered", &known);
    report("SignUp unregistered", &unknown);
    gap(&known, &unknown);

    let (known, unknown) = interleaved(rounds / 4, &mut app, |app, email| {
        Box::pin(async move {
            app.authenticate(email, "not the password at all")
                .await
                .unwrap_err();
        })
    })
    .await;
    report("Authenticate wrong password", &known);
    report("Authenticate unregistered", &unknown);
    gap(&known, &unknown);
}

type Call = for<'a> fn(
    &'a mut TestApp,
    &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Alternates registered and unregistered calls so drift hits both alike.
async fn interleaved(
    rounds: usize,
    app: &mut TestApp,
    call: Call,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..rounds * 2 {
        let unregistered = format!("nobody{i}@example.com");
        let (email, sink) = if i % 2 == 0 {
            ("known@example.com", &mut known)
        } else {
            (unregistered.as_str(), &mut unknown)
        };
        let started = Instant::now();
        call(app, email).await;
        sink.push(started.elapsed());
    }
    (known, unknown)
}

fn quantile(samples: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() - 1) as f64 * q).round() as usize]
}

/// Registered minus unregistered, at p50 and p90.
fn gap(known: &[Duration], unknown: &[Duration]) {
    println!(
        "{:<34} {:>+8.2} {:>+8.2}",
        "  gap (registered - unregistered)",
        quantile(known, 0.5) - quantile(unknown, 0.5),
        quantile(known, 0.9) - quantile(unknown, 0.9)
    );
}

fn report(case: &str, samples: &[Duration]) {
    let at = |q: f64| quantile(samples, q);
    let mean = samples
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .sum::<f64>()
        / samples.len() as f64;
    println!(
        "{case:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        at(0.5),
        at(0.9),
        at(0.99),
        mean
    );
}
