//! The database-bound RPCs against the RPC ceiling: `Health/Check`,
//! `SignUp`, `RequestReset` and `VerifyToken`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::{Result, bail};
use rekey::grpc::pb;
use tonic_health::pb::HealthCheckRequest;

use crate::{
    Bench,
    clients::{self, Connections},
    driver,
    report::{Row, percent_of},
};

/// Callers for the cheap RPCs: enough to keep both cores busy.
pub const CALLERS: usize = 64;

pub async fn health(bench: &mut Bench) -> Result<()> {
    let connections = Connections::open(bench.server.addr, CALLERS).await?;
    let meter = bench.meter()?;
    let outcome = driver::closed_loop(CALLERS, bench.args.duration(), move |caller| {
        let mut health = connections.health(caller);
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
        }
    })
    .await?;
    let mut row = Row::calls("health", &outcome, meter.finish()?);
    row.versus = "ceiling".into();
    row.note(format!("{CALLERS} callers, main port"));
    bench.health_rps = Some(outcome.ok_rps());
    bench.check("health", &outcome, false);
    bench.report.rows.push(row);
    Ok(())
}

fn versus_health(bench: &Bench, rps: f64) -> String {
    bench
        .health_rps
        .map_or_else(String::new, |health| percent_of(rps, health, "health"))
}

/// `SignUp` with a fresh address per call; the sink keeps the mails, whose
/// tokens later scenarios use.
pub async fn sign_up(bench: &mut Bench) -> Result<()> {
    bench.drain_quietly().await;
    bench.sink.keep_bodies(true);
    let delivered_before = bench.sink.delivered();
    let connections = Connections::open(bench.server.addr, CALLERS).await?;
    let meter = bench.meter()?;
    let outcome = driver::closed_loop(CALLERS, bench.args.duration(), move |caller| {
        let mut client = connections.reset(caller);
        async move {
            client
                .sign_up(pb::SignUpRequest {
                    email: clients::fresh_email("signup"),
                    display_name: "Load Test".into(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await?;
    let usage = meter.finish()?;
    let mailed = bench.sink.delivered() - delivered_before;
    bench.expected_mails += outcome.ok.len();
    let drain = bench.drain().await;
    bench.sink.keep_bodies(false);
    let mut row = Row::calls("sign-up", &outcome, usage);
    row.versus = versus_health(bench, outcome.ok_rps());
    let mail_rate = mailed as f64 / outcome.elapsed.as_secs_f64();
    row.note(format!(
        "{CALLERS} callers; mail {mail_rate:.0}/s during; {drain}"
    ));
    row.detail("mail_per_second_during", mail_rate);
    row.detail("backlog", drain.backlog);
    row.detail("drain_seconds", drain.seconds);
    row.detail("drained", drain.drained);
    bench.check("sign-up", &outcome, false);
    bench.report.rows.push(row);
    let kept = bench.sink.take_kept();
    bench.tokens.extend(clients::tokens(&kept)?);
    Ok(())
}

/// `RequestReset` for registered accounts, so every call queues a mail.
pub async fn request_reset(bench: &mut Bench) -> Result<()> {
    bench.drain_quietly().await;
    let accounts = Arc::new(bench.accounts.clone());
    if accounts.is_empty() {
        bail!("no account to reset");
    }
    let delivered_before = bench.sink.delivered();
    let connections = Connections::open(bench.server.addr, CALLERS).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let meter = bench.meter()?;
    let outcome = driver::closed_loop(CALLERS, bench.args.duration(), move |caller| {
        let mut client = connections.reset(caller);
        let email = accounts[next.fetch_add(1, Ordering::Relaxed) % accounts.len()].clone();
        async move {
            client
                .request_reset(pb::RequestResetRequest {
                    email,
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await?;
    let usage = meter.finish()?;
    let mailed = bench.sink.delivered() - delivered_before;
    bench.expected_mails += outcome.ok.len();
    let drain = bench.drain().await;
    let mut row = Row::calls("request-reset", &outcome, usage);
    row.versus = versus_health(bench, outcome.ok_rps());
    let mail_rate = mailed as f64 / outcome.elapsed.as_secs_f64();
    row.note(format!(
        "{CALLERS} callers, {} accounts; mail {mail_rate:.0}/s during; {drain}",
        bench.accounts.len()
    ));
    row.detail("mail_per_second_during", mail_rate);
    row.detail("backlog", drain.backlog);
    row.detail("drain_seconds", drain.seconds);
    row.detail("drained", drain.drained);
    bench.check("request-reset", &outcome, false);
    bench.report.rows.push(row);
    Ok(())
}

/// `VerifyToken` on mailed sign-up tokens, spread over all of them.
pub async fn verify_token(bench: &mut Bench) -> Result<()> {
    bench.ensure_tokens(500).await?;
    let tokens: Arc<Vec<String>> = Arc::new(bench.tokens.iter().map(|t| t.token.clone()).collect());
    let connections = Connections::open(bench.server.addr, CALLERS).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let count = tokens.len();
    let meter = bench.meter()?;
    let outcome = driver::closed_loop(CALLERS, bench.args.duration(), move |caller| {
        let mut client = connections.reset(caller);
        let token = tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()].clone();
        async move {
            client
                .verify_token(pb::VerifyTokenRequest { token })
                .await
                .map(drop)
        }
    })
    .await?;
    let mut row = Row::calls("verify-token", &outcome, meter.finish()?);
    row.versus = versus_health(bench, outcome.ok_rps());
    row.note(format!("{CALLERS} callers over {count} tokens"));
    bench.check("verify-token", &outcome, false);
    bench.report.rows.push(row);
    Ok(())
}
