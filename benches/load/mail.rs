//! Mail throughput: the outbox → SMTP sink path against a plain lettre
//! loop sending the same sign-up mail over the same pooled transport, and
//! whether the outbox drains as fast as `SignUp` fills it at 1,000 calls/s.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow};
use futures::StreamExt;
use rekey::{
    domain::{EmailAddress, Locale},
    grpc::pb,
    mail::{
        mailer::{Mailer, Sender},
        templates::{TemplateKind, Templates},
        transport::MailTransport,
        vars::MailVars,
        worker::BATCHES_IN_FLIGHT,
    },
};

use crate::{
    Bench,
    clients::{self, Connections},
    driver,
    report::{Row, percent_of},
    server::RESET_PAGE,
};

/// The paced fill rate the outbox must keep up with.
const FILL_RATE: f64 = 1000.0;

pub async fn mail(bench: &mut Bench) -> Result<()> {
    bench.drain_quietly().await;
    let plain = plain_lettre_loop(bench).await?;
    outbox_drain(bench, plain).await?;
    paced_fill(bench).await
}

/// The ceiling: rekey's own `Mailer` (templates, lettre pool with the
/// server's settings) sending sign-up mails, as many at once as the worker
/// may.
async fn plain_lettre_loop(bench: &mut Bench) -> Result<f64> {
    let concurrency = bench.params.mail_send_concurrency * BATCHES_IN_FLIGHT;
    let mailer = Arc::new(Mailer {
        templates: Arc::new(Templates::embedded()?),
        transport: MailTransport::smtp(
            &format!("smtp://{}", bench.sink.addr),
            None,
            Duration::from_secs(bench.params.smtp_timeout_secs),
            concurrency,
        )?,
        sender: Sender {
            from: "rekey bench <no-reply@rekey.test>".parse()?,
            reply_to: None,
        },
    });
    let meter = bench.meter()?;
    let outcome = driver::closed_loop(concurrency, bench.args.duration(), move |_| {
        let mailer = mailer.clone();
        async move {
            let email = clients::fresh_email("plain");
            let to = EmailAddress::parse("email", &email)
                .map_err(|_| tonic::Status::internal("bad address"))?;
            let link = format!("{RESET_PAGE}?token={}", "A".repeat(43));
            let vars = MailVars::link("", &email, link, Duration::from_secs(86_400));
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            mailer
                .send(&to, TemplateKind::SignUp, &Locale::default(), &vars, now)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))
        }
    })
    .await?;
    bench.expected_mails += outcome.ok.len();
    let mut row = Row::calls("mail: plain lettre loop", &outcome, meter.finish()?);
    row.versus = "ceiling".into();
    row.note(format!(
        "{concurrency} sends at once ({BATCHES_IN_FLIGHT} batches × {}), sign-up template, same pool settings",
        bench.params.mail_send_concurrency
    ));
    bench.check("mail: plain lettre loop", &outcome, false);
    bench.report.rows.push(row);
    Ok(outcome.ok_rps())
}

/// Fills the outbox with a burst of `SignUp`s, then times the worker
/// draining it alone.
async fn outbox_drain(bench: &mut Bench, plain: f64) -> Result<()> {
    let burst = ((plain * bench.args.duration().as_secs_f64()) as u64).max(500);
    let connections = Connections::open(bench.server.addr, crate::rpc::CALLERS).await?;
    let meter = bench.meter()?;
    let started = Instant::now();
    let delivered_before = bench.sink.delivered();
    let failures = futures::stream::iter(0..burst)
        .map(|i| {
            let mut client = connections.reset(i as usize);
            async move {
                client
                    .sign_up(pb::SignUpRequest {
                        email: clients::fresh_email("burst"),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(crate::rpc::CALLERS)
        .filter_map(|r| std::future::ready(r.err()))
        .collect::<Vec<tonic::Status>>()
        .await;
    let refused = failures
        .iter()
        .filter(|f| f.code() == tonic::Code::ResourceExhausted)
        .count();
    let tolerated = refused == failures.len() && refused as u64 * 100 <= burst;
    if let Some(first) = failures.first().filter(|_| !tolerated) {
        bench.report.fail(
            "mail: outbox",
            format!(
                "{} SignUp calls failed (first: {:?}: {})",
                failures.len(),
                first.code(),
                first.message()
            ),
        );
    }
    let failures = failures.len();
    let filled = started.elapsed();
    bench.expected_mails += burst - failures as u64;
    let delivered_at_fill = bench.sink.delivered();
    let drain = bench.drain().await;
    let drained_by_worker_alone = bench.sink.delivered() - delivered_at_fill;
    let rate = drained_by_worker_alone as f64 / drain.seconds.max(1e-9);
    let usage = meter.finish()?;
    let mut row = Row {
        scenario: "mail: outbox → sink".into(),
        rps: Some(rate),
        p50_ms: None,
        p99_ms: None,
        versus: percent_of(rate, plain, "lettre loop"),
        usage,
        notes: format!(
            "{burst} SignUps ({failures} refused) in {:.1} s ({} mailed meanwhile), then the worker alone: {drain}",
            filled.as_secs_f64(),
            delivered_at_fill - delivered_before,
        ),
        details: serde_json::json!({
            "burst": burst,
            "fill_seconds": filled.as_secs_f64(),
            "backlog": drain.backlog,
            "drain_seconds": drain.seconds,
            "drained": drain.drained,
        }),
        latencies: None,
    };
    if !drain.drained {
        row.note("rate over the part drained");
    }
    bench.mail_ratio = Some(rate / plain);
    bench.report.rows.push(row);
    Ok(())
}

/// `SignUp` paced at 1,000 calls/s: fill rate, delivery rate meanwhile,
/// backlog and drain time after.
async fn paced_fill(bench: &mut Bench) -> Result<()> {
    let duration = if bench.args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let connections = Connections::open(bench.server.addr, 256).await?;
    let delivered_before = bench.sink.delivered();
    let meter = bench.meter()?;
    let outcome = driver::paced(FILL_RATE, duration, 256, move |i| {
        let mut client = connections.reset(i);
        async move {
            client
                .sign_up(pb::SignUpRequest {
                    email: clients::fresh_email("paced"),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await?;
    let seconds = outcome.elapsed.as_secs_f64();
    let delivered = (bench.sink.delivered() - delivered_before) as f64 / seconds;
    bench.expected_mails += outcome.ok.len();
    let usage = meter.finish()?;
    let drain = bench.drain().await;
    let fill = outcome.ok_rps();
    let mut row = Row::calls("mail: SignUp paced 1,000/s", &outcome, usage);
    row.versus = format!(
        "delivery {:.0}% of fill",
        100.0 * delivered / fill.max(1e-9)
    );
    row.note(format!(
        "fill {fill:.0}/s, delivered {delivered:.0}/s meanwhile; {drain}"
    ));
    row.detail("fill_per_second", fill);
    row.detail("delivered_per_second", delivered);
    row.detail("backlog", drain.backlog);
    row.detail("drain_seconds", drain.seconds);
    row.detail("drained", drain.drained);
    bench.check("mail: SignUp paced", &outcome, false);
    bench.paced_mail = Some((fill, delivered, drain));
    bench.report.rows.push(row);
    if outcome.ok.is_empty() {
        return Err(anyhow!("no paced SignUp succeeded"));
    }
    Ok(())
}
