//! Mail throughput: the outbox → SMTP sink path against a plain lettre
//! loop sending the same sign-up mail over the same pooled transport, and
//! whether the outbox drains as fast as `SignUp` fills it at 1,000 calls/s.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow};
use rekey::{
    domain::{EmailAddress, Locale},
    grpc::pb,
    mail::{
        mailer::{Mailer, Sender},
        templates::{TemplateKind, Templates},
        transport::MailTransport,
        vars::MailVars,
        worker::SENDING_BATCHES,
    },
    store::{
        entities::mail_outbox,
        outbox::{self, MailIntent},
    },
};
use sea_orm::{Database, EntityTrait, TransactionTrait};

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
    let concurrency = bench.params.mail_send_concurrency * SENDING_BATCHES;
    let mailer = Arc::new(Mailer {
        templates: Arc::new(Templates::embedded()?),
        transport: MailTransport::smtp(
            &format!("smtp://{}", bench.sink.addr),
            None,
            None,
            Duration::from_secs(bench.params.smtp_timeout_secs),
            concurrency,
        )?,
        sender: Sender {
            from: "rekey bench <no-reply@rekey.test>".parse()?,
            reply_to: None,
        },
    });
    let connections_before = bench.sink.connections();
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
        "{concurrency} sends at once ({SENDING_BATCHES} batches' worth × {}), sign-up template, same pool settings",
        bench.params.mail_send_concurrency
    ));
    note_connections(&mut row, bench.sink.connections() - connections_before);
    bench.check("mail: plain lettre loop", &outcome, false);
    bench.report.rows.push(row);
    Ok(outcome.ok_rps())
}

/// Commits a burst of sign-up jobs to the outbox in one transaction, as
/// that many `SignUp`s would queue them, then times the worker draining
/// them alone: the server does nothing else meanwhile.
async fn outbox_drain(bench: &mut Bench, plain: f64) -> Result<()> {
    let burst = ((plain * bench.args.duration().as_secs_f64()) as u64).max(500);
    let filled = Instant::now();
    queue_sign_ups(&bench.server.database_url, burst).await?;
    let filled = filled.elapsed();
    bench.expected_mails += burst;
    let connections_before = bench.sink.connections();
    let meter = bench.meter()?;
    let drain = bench.drain().await;
    let usage = meter.finish()?;
    let connections = bench.sink.connections() - connections_before;
    let drained = drain.backlog - drain.left;
    let rate = drained as f64 / drain.seconds.max(1e-9);
    let mut row = Row {
        scenario: "mail: outbox → sink".into(),
        rps: Some(rate),
        p50_ms: None,
        p99_ms: None,
        versus: percent_of(rate, plain, "lettre loop"),
        usage,
        notes: format!(
            "{burst} sign-up jobs committed at once ({:.1} s), then the worker alone: {drain}",
            filled.as_secs_f64(),
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
    note_connections(&mut row, connections);
    bench.mail_ratio = Some(rate / plain);
    bench.report.rows.push(row);
    Ok(())
}

/// The SMTP connections the sink accepted during a row: a sender that
/// stopped reusing its pooled connections shows here.
fn note_connections(row: &mut Row, connections: u64) {
    row.note(format!("{connections} SMTP connections opened"));
    row.detail("smtp_connections", connections);
}

/// Writes `count` due sign-up jobs (the rows `SignUp` queues) in one
/// transaction.
async fn queue_sign_ups(database_url: &str, count: u64) -> Result<()> {
    let db = Database::connect(database_url).await?;
    let tx = db.begin().await?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let intent = MailIntent::SignUp {
        display_name: String::new(),
        locale: String::new(),
        reset_url: RESET_PAGE.to_owned(),
    };
    let mut left = count;
    while left > 0 {
        let chunk = left.min(512);
        let rows = (0..chunk)
            .map(|_| outbox::new_job(&clients::fresh_email("burst"), &intent, now))
            .collect::<Result<Vec<_>, _>>()?;
        mail_outbox::Entity::insert_many(rows)
            .exec_without_returning(&tx)
            .await?;
        left -= chunk;
    }
    tx.commit().await?;
    db.close().await?;
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
