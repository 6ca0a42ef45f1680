//! Load benchmark (issue 10): the real `rekey` binary under load from real
//! gRPC clients, each scenario measured against its ceiling in the same run.
//!
//! `cargo bench --bench load -- [--db sqlite|postgres] [--quick] [--json FILE] [--scenario NAME...]`
//! (`cargo test --bench load -- --quick` runs it on the debug build). It
//! fails on any unexpected call error, never on a timing.

#[path = "load/args.rs"]
mod args;
#[path = "load/chart.rs"]
mod chart;
#[path = "load/clients.rs"]
mod clients;
#[path = "load/driver.rs"]
mod driver;
#[path = "load/goals.rs"]
mod goals;
#[path = "load/hashing.rs"]
mod hashing;
#[path = "load/mail.rs"]
mod mail;
#[path = "load/procfs.rs"]
mod procfs;
#[path = "load/report.rs"]
mod report;
#[path = "load/rpc.rs"]
mod rpc;
#[path = "load/server.rs"]
mod server;
#[path = "load/setup.rs"]
mod setup;
#[path = "load/sink.rs"]
mod sink;

use std::{fmt, time::Instant};

use anyhow::Result;
use serde_json::json;

use args::Args;
use clients::MailedToken;
use hashing::RawHashing;
use report::Report;
use server::{Params, Server};
use sink::SmtpSink;

/// The password every bench account gets (strong enough for the policy).
pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy)]
pub struct OverloadFigures {
    pub goodput: f64,
    pub rejection_p99_ms: f64,
    pub rejections: u64,
    pub max_wait_ms: f64,
}

/// The run's state: the server, the sink, what earlier scenarios left for
/// later ones (tokens, accounts, ceilings) and the report.
pub struct Bench {
    pub args: Args,
    pub params: Params,
    pub server: Server,
    pub sink: SmtpSink,
    pub report: Report,
    /// Unused sign-up tokens from mails the sink kept.
    pub tokens: Vec<MailedToken>,
    /// Addresses with an account whose password is [`PASSWORD`].
    pub accounts: Vec<String>,
    /// Mails the sink should have received once the outbox is empty.
    pub expected_mails: u64,
    pub health_rps: Option<f64>,
    pub raw: Option<RawHashing>,
    pub authenticate_peak: Option<f64>,
    pub probe_ratio: Option<f64>,
    pub overload: Option<OverloadFigures>,
    /// The drain's rate over the plain loop's, in its own process and beside the sink.
    pub mail_ratio: Option<(f64, f64)>,
    /// Fill rate, delivery rate meanwhile and the drain after, at 1,000 SignUp/s.
    pub paced_mail: Option<(f64, f64, Drain)>,
}

/// The mail backlog when a scenario stopped and how long it took to drain.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub backlog: u64,
    pub seconds: f64,
    pub drained: bool,
    pub left: u64,
}

impl fmt::Display for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.drained {
            write!(
                f,
                "backlog {} drained in {:.1} s",
                self.backlog, self.seconds
            )
        } else {
            write!(
                f,
                "backlog {}, {} still queued after {:.0} s",
                self.backlog, self.left, self.seconds
            )
        }
    }
}

impl Bench {
    pub fn meter(&self) -> Result<procfs::Meter> {
        procfs::Meter::start(self.server.pid)
    }

    /// Notes a scenario's unexpected call errors as a failure of the run:
    /// every error but RESOURCE_EXHAUSTED, and that too beyond 1% of the
    /// calls unless `allow_rejections` (overload).
    pub fn check(&mut self, scenario: &str, outcome: &driver::Outcome, allow_rejections: bool) {
        let tolerated = if allow_rejections { 1.0 } else { 0.01 };
        if let Some(problem) = outcome.failures(tolerated) {
            self.report.fail(scenario, problem);
        }
    }

    /// Waits until the sink has every mail queued so far, or the limit.
    pub async fn drain_within(&self, limit: std::time::Duration) -> Drain {
        let started = Instant::now();
        let backlog = self.expected_mails.saturating_sub(self.sink.delivered());
        loop {
            let left = self.expected_mails.saturating_sub(self.sink.delivered());
            if left == 0 || started.elapsed() >= limit {
                return Drain {
                    backlog,
                    seconds: started.elapsed().as_secs_f64(),
                    drained: left == 0,
                    left,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub async fn drain(&self) -> Drain {
        self.drain_within(self.args.drain_limit()).await
    }

    /// Lets the previous scenario's mail go out before the next one starts
    /// (in quick mode only briefly: it checks that scenarios run, not figures).
    pub async fn drain_quietly(&self) {
        let limit = if self.args.quick {
            std::time::Duration::from_secs(1)
        } else {
            self.args.drain_limit()
        };
        let _ = self.drain_within(limit).await;
    }
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cores": cores, "cpu": model })
}

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(mail::PLAIN_LOOP_CHILD) {
        return mail::plain_loop_child(&argv[2..]).await;
    }
    let args = Args::parse()?;
    let params = Params::defaults();
    let sink = SmtpSink::start().await?;
    let server = Server::start(args.db, sink.addr, &params).await?;
    let machine = machine();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "rekey load bench: {} on {}, {} build, {} mode; machine {} cores, {}",
        args.db.name(),
        env!("CARGO_BIN_EXE_rekey"),
        profile,
        if args.quick { "quick" } else { "full" },
        machine["cores"],
        machine["cpu"].as_str().unwrap_or_default(),
    );
    println!(
        "start-up to SERVING {:.0} ms, idle RSS {:.1} MiB; argon2id m={} KiB t={} p={}, {} hash permits, queue {}",
        server.startup.as_secs_f64() * 1000.0,
        server.idle_rss_mib,
        params.argon2_memory_kib,
        params.argon2_iterations,
        params.argon2_parallelism,
        params.hash_permits,
        params.hash_queue_depth,
    );
    let mut bench = Bench {
        report: Report {
            header: json!({
                "db": args.db.name(),
                "profile": profile,
                "quick": args.quick,
                "machine": machine,
                "params": params,
                "startup_ms": server.startup.as_secs_f64() * 1000.0,
                "idle_rss_mib": server.idle_rss_mib,
            }),
            ..Report::default()
        },
        args,
        params,
        server,
        sink,
        tokens: Vec::new(),
        accounts: Vec::new(),
        expected_mails: 0,
        health_rps: None,
        raw: None,
        authenticate_peak: None,
        probe_ratio: None,
        overload: None,
        mail_ratio: None,
        paced_mail: None,
    };
    setup::run_all(&mut bench).await;
    goals::evaluate(&mut bench);
    setup::order_rows(&mut bench.report);

    let table = bench.report.render();
    println!("\n{table}");
    let name = bench.args.db.name();
    let svg = std::path::PathBuf::from(format!(
        "{}/target/load/latency-{name}.svg",
        env!("CARGO_MANIFEST_DIR")
    ));
    let title = format!("rekey latency by percentile, {name}, {profile}");
    match chart::latency_svg(&bench.report, &title, &svg) {
        Ok(()) => println!("latency chart: {}", svg.display()),
        Err(error) => bench.report.fail("chart", format!("{error:#}")),
    }
    if let Some(path) = bench.args.json.clone() {
        bench.report.write_json(&path)?;
        println!("figures: {}", path.display());
    }
    let failures = bench.report.failures.clone();
    bench.server.stop().await?;
    if !failures.is_empty() {
        eprintln!("\nFAILED:");
        for failure in &failures {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
    Ok(())
}
