//! Mail throughput: the outbox → SMTP sink path against a plain lettre
//! loop sending the same sign-up mail over the same pooled transport, and
//! whether the outbox drains as fast as `SignUp` fills it at 1,000 calls/s.

use std::{
    net::SocketAddr,
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
    driver::{self, Outcome},
    report::{Row, percent_of},
    server::RESET_PAGE,
};

/// The paced fill rate the outbox must keep up with.
const FILL_RATE: f64 = 1000.0;

pub async fn mail(bench: &mut Bench) -> Result<()> {
    bench.drain_quietly().await;
    let (plain, beside) = plain_lettre_loop(bench).await?;
    outbox_drain(bench, plain, beside).await?;
    paced_fill(bench).await
}

/// The first argument that runs the bench binary as the plain loop's
/// process (see [`plain_loop_child`]).
pub const PLAIN_LOOP_CHILD: &str = "--plain-mail-loop";

/// The ceiling: rekey's own `Mailer` (templates, lettre pool with the
/// server's settings) sending sign-up mails, as many at once as the worker
/// may, from a process of its own, as the worker sends from the server's:
/// each SMTP reply crosses from the sink's process to the sender's. The
/// same loop run in the bench's process, beside the sink, is reported too.
async fn plain_lettre_loop(bench: &mut Bench) -> Result<(f64, f64)> {
    let concurrency = bench.params.mail_send_concurrency * SENDING_BATCHES;
    let settings = format!(
        "sign-up template, same pool settings, {concurrency} sends at once ({SENDING_BATCHES} batches' worth × {})",
        bench.params.mail_send_concurrency
    );

    let connections_before = bench.sink.connections();
    let meter = bench.meter()?;
    let beside = plain_loop(
        bench.sink.addr,
        concurrency,
        bench.args.duration(),
        bench.params.smtp_timeout_secs,
    )
    .await?;
    let usage = meter.finish()?;
    report_plain_loop(
        bench,
        "mail: plain lettre loop beside the sink",
        "reference",
        format!("in the bench's process, whose runtime also runs the sink; {settings}"),
        &beside,
        usage,
        connections_before,
    );

    let connections_before = bench.sink.connections();
    let meter = bench.meter()?;
    let alone = plain_loop_in_a_child(bench, concurrency).await?;
    let usage = meter.finish()?;
    report_plain_loop(
        bench,
        "mail: plain lettre loop",
        "ceiling",
        format!(
            "a process of its own, as the worker's; client CPU = bench (sink) + loop; {settings}"
        ),
        &alone,
        usage,
        connections_before,
    );
    Ok((alone.ok_rps(), beside.ok_rps()))
}

/// One plain loop's row: its mails are expected at the sink, and any
/// failed send fails the run.
fn report_plain_loop(
    bench: &mut Bench,
    scenario: &str,
    versus: &str,
    note: String,
    outcome: &Outcome,
    usage: crate::procfs::Usage,
    connections_before: u64,
) {
    bench.expected_mails += outcome.ok.len();
    let mut row = Row::calls(scenario, outcome, usage);
    row.versus = versus.into();
    row.note(note);
    note_connections(&mut row, bench.sink.connections() - connections_before);
    bench.check(scenario, outcome, false);
    bench.report.rows.push(row);
}

/// Runs [`plain_loop`] in a child process: this bench binary started with
/// [`PLAIN_LOOP_CHILD`].
async fn plain_loop_in_a_child(bench: &Bench, concurrency: usize) -> Result<Outcome> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg(PLAIN_LOOP_CHILD)
        .arg(bench.sink.addr.to_string())
        .arg(concurrency.to_string())
        .arg(bench.args.duration().as_millis().to_string())
        .arg(bench.params.smtp_timeout_secs.to_string())
        .kill_on_drop(true)
        .output()
        .await?;
    if !output.status.success() {
        return Err(anyhow!(
            "the plain mail loop's process failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Outcome::from_json(&json)
}

/// The plain loop's process: `SINK_ADDR CONCURRENCY MILLISECONDS
/// SMTP_TIMEOUT_SECONDS`; prints the loop's outcome as JSON.
pub async fn plain_loop_child(args: &[String]) -> Result<()> {
    let [addr, concurrency, millis, timeout] = args else {
        return Err(anyhow!(
            "usage: {PLAIN_LOOP_CHILD} SINK_ADDR CONCURRENCY MILLISECONDS SMTP_TIMEOUT_SECONDS"
        ));
    };
    let outcome = plain_loop(
        addr.parse()?,
        concurrency.parse()?,
        Duration::from_millis(millis.parse()?),
        timeout.parse()?,
    )
    .await?;
    println!("{}", outcome.to_json());
    Ok(())
}

/// Sends sign-up mails with rekey's `Mailer` to `sink`, `concurrency` at
/// once, for `duration`.
async fn plain_loop(
    sink: SocketAddr,
    concurrency: usize,
    duration: Duration,
    smtp_timeout_secs: u64,
) -> Result<Outcome> {
    let mailer = Arc::new(Mailer {
        templates: Arc::new(Templates::embedded()?),
        transport: MailTransport::smtp(
            &format!("smtp://{sink}"),
            None,
            None,
            Duration::from_secs(smtp_timeout_secs),
            concurrency,
        )?,
        sender: Sender {
            from: "rekey bench <no-reply@rekey.test>".parse()?,
            reply_to: None,
        },
    });
    driver::closed_loop(concurrency, duration, move |_| {
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
    .await
}

/// Commits a burst of sign-up jobs to the outbox in one transaction, as
/// that many `SignUp`s would queue them, then times the worker draining
/// them alone: the server does nothing else meanwhile.
async fn outbox_drain(bench: &mut Bench, plain: f64, beside: f64) -> Result<()> {
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
    row.note(percent_of(rate, beside, "the loop beside the sink"));
    bench.mail_ratio = Some((rate / plain, rate / beside));
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
