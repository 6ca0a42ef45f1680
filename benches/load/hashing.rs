//! The scenarios bounded by argon2id: the raw ceiling measured in-process,
//! `Authenticate`, `ResetPassword`, a health probe while hashing saturates,
//! and overload at ten times what the hashing pool admits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use argon2::{Algorithm, Argon2, Params, Version};
use rekey::{grpc::pb, security::BlockMemory};
use tonic_health::pb::HealthCheckRequest;

use crate::{
    Bench, PASSWORD,
    clients::Connections,
    driver::{self, Outcome},
    report::{Row, percent_of},
};

/// Raw argon2id: hashes per second over all threads, and one hash's time.
#[derive(Debug, Clone, Copy)]
pub struct RawHashing {
    pub hashes_per_second: f64,
    pub one_hash_ms: f64,
}

/// `threads` threads hashing with the server's parameters for `duration`,
/// each reusing one block buffer. Run twice (before `authenticate` and
/// after `reset-password`); the faster measurement is the ceiling, so a
/// noisy moment on the shared machine cannot flatter the ratios.
pub fn raw_argon2(bench: &mut Bench) -> Result<()> {
    let p = bench.params;
    let params = Params::new(
        p.argon2_memory_kib,
        p.argon2_iterations,
        p.argon2_parallelism,
        Some(Params::DEFAULT_OUTPUT_LEN),
    )
    .map_err(|e| anyhow!("argon2 parameters: {e}"))?;
    let threads = p.hash_permits;
    let duration = bench.args.duration();
    let meter = bench.meter()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let params = params.clone();
            std::thread::spawn(move || -> Result<u64> {
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                // The server's own block memory (huge pages where the
                // kernel gives them), so only its overhead is compared.
                let mut memory = BlockMemory::for_params(&params);
                let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
                let salt = [i as u8; 16];
                let mut hashes = 0;
                while started.elapsed() < duration {
                    memory
                        .with_blocks(|blocks| {
                            argon.hash_password_into_with_memory(
                                PASSWORD.as_bytes(),
                                &salt,
                                &mut out,
                                blocks,
                            )
                        })
                        .map_err(|e| anyhow!("argon2: {e}"))?;
                    hashes += 1;
                }
                Ok(hashes)
            })
        })
        .collect();
    let mut hashes = 0;
    for worker in workers {
        hashes += worker
            .join()
            .map_err(|_| anyhow!("a hashing thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let raw = RawHashing {
        hashes_per_second: hashes as f64 / elapsed,
        one_hash_ms: 1000.0 * elapsed * threads as f64 / hashes.max(1) as f64,
    };
    let usage = meter.finish()?;
    let measured = format!("{:.1}/s", raw.hashes_per_second);
    let name = "argon2id raw (in-process)";
    if let Some(row) = bench.report.rows.iter_mut().find(|r| r.scenario == name) {
        row.note(format!("again later: {measured}"));
        let better = bench
            .raw
            .is_none_or(|old| raw.hashes_per_second > old.hashes_per_second);
        if better {
            row.rps = Some(raw.hashes_per_second);
            row.p50_ms = Some(raw.one_hash_ms);
            row.usage = usage;
            row.detail("one_hash_ms", raw.one_hash_ms);
            bench.raw = Some(raw);
        }
        row.note("the faster one is the ceiling");
        return Ok(());
    }
    bench.raw = Some(raw);
    let mut row = Row {
        scenario: name.into(),
        rps: Some(raw.hashes_per_second),
        p50_ms: Some(raw.one_hash_ms),
        p99_ms: None,
        versus: "ceiling".into(),
        usage,
        notes: format!(
            "{threads} threads, m={} KiB t={} p={}, memory reused; first: {measured}",
            p.argon2_memory_kib, p.argon2_iterations, p.argon2_parallelism
        ),
        details: serde_json::json!({ "hashes": hashes, "threads": threads }),
        latencies: None,
    };
    row.detail("one_hash_ms", raw.one_hash_ms);
    bench.report.rows.push(row);
    Ok(())
}

/// Compares the hashing rows with the final (faster) raw ceiling.
pub fn compare_with_raw(bench: &mut Bench) {
    let Some(raw) = bench.raw else { return };
    for row in &mut bench.report.rows {
        if ["authenticate", "reset-password"].contains(&row.scenario.as_str())
            && let Some(rps) = row.rps
        {
            row.versus = percent_of(rps, raw.hashes_per_second, "argon2id raw");
        }
    }
}

/// Callers that keep the hashing pool saturated without overflowing its queue.
fn saturating_callers(bench: &Bench) -> usize {
    (bench.params.hash_permits * 4).min(bench.params.hash_permits + bench.params.hash_queue_depth)
}

async fn authenticate_loop(
    bench: &Bench,
    callers: usize,
    duration: Duration,
    pushback: driver::Pushback,
) -> Result<Outcome> {
    let connections = Connections::open(bench.server.addr, callers).await?;
    let accounts = Arc::new(bench.accounts.clone());
    if accounts.is_empty() {
        return Err(anyhow!("no account to authenticate"));
    }
    driver::closed_loop_with(callers, duration, pushback, move |caller| {
        let mut client = connections.accounts(caller);
        let email = accounts[caller % accounts.len()].clone();
        async move {
            client
                .authenticate(pb::AuthenticateRequest {
                    email,
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await
}

pub async fn authenticate(bench: &mut Bench) -> Result<()> {
    let callers = saturating_callers(bench);
    let meter = bench.meter()?;
    let outcome = authenticate_loop(
        bench,
        callers,
        bench.args.duration(),
        driver::Pushback::Ignore,
    )
    .await?;
    let mut row = Row::calls("authenticate", &outcome, meter.finish()?);
    row.note(format!("{callers} callers"));
    bench.authenticate_peak = Some(outcome.ok_rps());
    bench.check("authenticate", &outcome, false);
    bench.report.rows.push(row);
    Ok(())
}

/// `ResetPassword` on mailed sign-up tokens, each used once: each call
/// checks the password's strength, hashes it and creates the account.
pub async fn reset_password(bench: &mut Bench) -> Result<()> {
    let duration = bench.args.duration();
    let guess = bench.raw.map_or(200.0, |r| r.hashes_per_second);
    let needed = (guess * duration.as_secs_f64() * 1.5) as usize + 64;
    bench.ensure_tokens(needed).await?;
    let tokens = Arc::new(std::mem::take(&mut bench.tokens));
    let next = Arc::new(AtomicUsize::new(0));
    let callers = saturating_callers(bench);
    let connections = Connections::open(bench.server.addr, callers).await?;
    let meter = bench.meter()?;
    let (pool, taken) = (tokens.clone(), next.clone());
    let outcome = driver::closed_loop(callers, duration, move |caller| {
        let mut client = connections.reset(caller);
        let token = pool.get(taken.fetch_add(1, Ordering::Relaxed)).cloned();
        async move {
            let token =
                token.ok_or_else(|| tonic::Status::internal("the bench ran out of tokens"))?;
            client
                .reset_password(pb::ResetPasswordRequest {
                    token: token.token,
                    new_password: PASSWORD.into(),
                })
                .await
                .map(drop)
        }
    })
    .await?;
    let mut row = Row::calls("reset-password", &outcome, meter.finish()?);
    row.note(format!("{callers} callers; creates the account"));
    bench.check("reset-password", &outcome, false);
    bench.report.rows.push(row);
    // Those tokens are spent; their addresses are accounts now.
    let used = next.load(Ordering::Relaxed).min(tokens.len());
    bench
        .accounts
        .extend(tokens[..used].iter().take(64).map(|t| t.email.clone()));
    bench.tokens = tokens[used..].to_vec();
    Ok(())
}

/// One health probe every 10 ms on the health port, on its own connection.
async fn probe(bench: &Bench, duration: Duration) -> Result<Outcome> {
    let connections = Connections::open(bench.server.health_addr, 1).await?;
    driver::paced(100.0, duration, 1, move |_| {
        let mut health = connections.health(0);
        async move {
            health
                .check(HealthCheckRequest {
                    service: "readiness".into(),
                })
                .await
                .map(drop)
        }
    })
    .await
}

pub async fn probe_under_load(bench: &mut Bench) -> Result<()> {
    let duration = bench.args.duration();
    let meter = bench.meter()?;
    let idle = probe(bench, duration).await?;
    let mut idle_row = Row::calls("probe idle (health port)", &idle, meter.finish()?);
    idle_row.versus = "ceiling".into();
    idle_row.note("1 probe / 10 ms");
    bench.check("probe idle", &idle, false);

    let meter = bench.meter()?;
    let callers = saturating_callers(bench);
    let (loaded, hashing) = tokio::join!(
        probe(bench, duration),
        authenticate_loop(bench, callers, duration, driver::Pushback::Ignore)
    );
    let (loaded, hashing) = (loaded?, hashing?);
    let mut row = Row::calls("probe-under-load", &loaded, meter.finish()?);
    let ratio = loaded.ok_ms(0.99) / idle.ok_ms(0.99).max(1e-3);
    row.versus = format!("p99 {ratio:.1}× idle");
    row.note(format!(
        "while {callers} callers authenticate at {:.0}/s",
        hashing.ok_rps()
    ));
    row.detail("p99_ratio_to_idle", ratio);
    row.detail("authenticate_rps", hashing.ok_rps());
    bench.check("probe-under-load", &loaded, false);
    bench.check("probe-under-load (authenticate)", &hashing, false);
    bench.report.rows.push(idle_row);
    bench.report.rows.push(row);
    bench.probe_ratio = Some(ratio);
    Ok(())
}

/// 10 × (permits + queue) callers authenticating back to back.
pub async fn overload(bench: &mut Bench) -> Result<()> {
    let callers = 10 * (bench.params.hash_permits + bench.params.hash_queue_depth);
    let meter = bench.meter()?;
    // Refused callers wait the RetryInfo delay, as gRPC clients honouring
    // server pushback do; a client that ignores it is flooding, not overload.
    let outcome = authenticate_loop(
        bench,
        callers,
        bench.args.duration(),
        driver::Pushback::Honour,
    )
    .await?;
    let usage = meter.finish()?;
    let mut row = Row::calls("overload", &outcome, usage);
    let peak = bench.authenticate_peak.unwrap_or(f64::NAN);
    let goodput = outcome.ok_rps() / peak;
    row.versus = format!("goodput {:.0}% of authenticate", 100.0 * goodput);
    let one_hash = bench.raw.map_or(f64::NAN, |r| r.one_hash_ms);
    let max_wait_ms = outcome.ok.max() as f64 / 1000.0;
    row.note(format!(
        "{callers} callers honouring RetryInfo; {:.0} rejected/s, rejection p50 {:.1} / p99 {:.1} ms ({:.0}% of one hash); without the callers' first calls (one burst at the start) p50 {:.1} / p99 {:.1} ms; max wait {:.0} ms",
        outcome.rejected_rps(),
        outcome.rejected_ms(0.5),
        outcome.rejected_ms(0.99),
        100.0 * outcome.rejected_ms(0.99) / one_hash,
        outcome.rejected_after_start_ms(0.5),
        outcome.rejected_after_start_ms(0.99),
        max_wait_ms,
    ));
    row.detail("callers", callers);
    row.detail("goodput_ratio", goodput);
    row.detail("rejected_rps", outcome.rejected_rps());
    row.detail("rejection_p50_ms", outcome.rejected_ms(0.5));
    row.detail("rejection_p99_ms", outcome.rejected_ms(0.99));
    row.detail(
        "rejection_after_start_p99_ms",
        outcome.rejected_after_start_ms(0.99),
    );
    row.detail("one_hash_ms", one_hash);
    bench.check("overload", &outcome, true);
    if !outcome.rejected.is_empty() {
        bench
            .report
            .extra_series
            .push(("overload: rejections".into(), outcome.rejected.clone()));
    }
    bench.overload = Some(crate::OverloadFigures {
        goodput,
        rejection_p99_ms: outcome.rejected_ms(0.99),
        rejections: outcome.rejected.len(),
        max_wait_ms,
    });
    bench.report.rows.push(row);
    Ok(())
}
