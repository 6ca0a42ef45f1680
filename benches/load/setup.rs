//! Which scenarios run, in what order, and what they need first: the
//! ceilings they are compared with, mailed tokens and accounts.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use rekey::grpc::pb;

use crate::{
    Bench, PASSWORD,
    clients::{self, Connections},
    hashing, mail,
    report::Report,
    rpc,
};

/// Accounts made before the scenarios, for `RequestReset` and `Authenticate`.
const SEED_ACCOUNTS: usize = 8;

/// The order rows are printed in.
const ROW_ORDER: [&str; 14] = [
    "health",
    "request-reset",
    "sign-up",
    "verify-token",
    "argon2id raw (in-process)",
    "authenticate",
    "reset-password",
    "probe idle (health port)",
    "probe-under-load",
    "overload",
    "mail: plain lettre loop beside the sink",
    "mail: plain lettre loop",
    "mail: outbox → sink",
    "mail: SignUp paced 1,000/s",
];

pub fn order_rows(report: &mut Report) {
    let rank = |name: &str| {
        ROW_ORDER
            .iter()
            .position(|n| *n == name)
            .unwrap_or(ROW_ORDER.len())
    };
    report.rows.sort_by_key(|row| rank(&row.scenario));
}

/// Runs the chosen scenarios and the ceilings they need; a scenario that
/// errors is recorded as a failure and the rest still run.
pub async fn run_all(bench: &mut Bench) {
    let wants = |names: &[&str]| names.iter().any(|n| bench.args.wants(n));
    let needs_health = wants(&["health", "request-reset", "sign-up", "verify-token"]);
    let needs_raw = wants(&["authenticate", "reset-password", "overload"]);
    let needs_authenticate = wants(&["authenticate", "overload"]);
    let needs_accounts = wants(&[
        "request-reset",
        "authenticate",
        "probe-under-load",
        "overload",
    ]);

    let mut steps: Vec<&str> = Vec::new();
    if needs_accounts {
        steps.push("seed");
    }
    if needs_health {
        steps.push("health");
    }
    if needs_raw {
        steps.push("argon2");
    }
    for name in ["sign-up", "verify-token", "request-reset"] {
        if bench.args.wants(name) {
            steps.push(name);
        }
    }
    if needs_authenticate {
        steps.push("authenticate");
    }
    if bench.args.wants("reset-password") {
        steps.push("reset-password");
    }
    if needs_raw {
        steps.push("argon2");
    }
    for name in ["probe-under-load", "overload", "mail"] {
        if bench.args.wants(name) {
            steps.push(name);
        }
    }
    for step in steps {
        eprintln!("… {step}");
        let ran = match step {
            "seed" => seed_accounts(bench).await,
            "health" => rpc::health(bench).await,
            "argon2" => hashing::raw_argon2(bench),
            "sign-up" => rpc::sign_up(bench).await,
            "verify-token" => rpc::verify_token(bench).await,
            "request-reset" => rpc::request_reset(bench).await,
            "authenticate" => hashing::authenticate(bench).await,
            "reset-password" => hashing::reset_password(bench).await,
            "probe-under-load" => hashing::probe_under_load(bench).await,
            "overload" => hashing::overload(bench).await,
            "mail" => mail::mail(bench).await,
            _ => Ok(()),
        };
        if let Err(error) = ran {
            bench.report.fail(step, format!("{error:#}"));
        }
        if let Err(error) = bench.server.check_alive() {
            bench.report.fail(step, format!("{error:#}"));
            break;
        }
    }
    hashing::compare_with_raw(bench);
}

impl Bench {
    /// At least `wanted` unused sign-up tokens (fewer if their mails do not
    /// arrive within a minute, 10 s in quick mode): signs up fresh addresses and reads the
    /// tokens from the mails the sink keeps.
    pub async fn ensure_tokens(&mut self, wanted: usize) -> Result<()> {
        if self.tokens.len() >= wanted {
            return Ok(());
        }
        self.drain_quietly().await;
        let missing = wanted - self.tokens.len();
        let connections = Connections::open(self.server.addr, rpc::CALLERS).await?;
        self.sink.keep_bodies(true);
        let signed_up = futures::stream::iter(0..missing)
            .map(|i| {
                let mut client = connections.reset(i);
                async move {
                    client
                        .sign_up(pb::SignUpRequest {
                            email: clients::fresh_email("token"),
                            ..Default::default()
                        })
                        .await
                }
            })
            .buffer_unordered(rpc::CALLERS)
            .filter(|r| std::future::ready(r.is_ok()))
            .count()
            .await;
        self.expected_mails += signed_up as u64;
        let wait = if self.args.quick { 10 } else { 60 };
        self.drain_within(Duration::from_secs(wait)).await;
        self.sink.keep_bodies(false);
        let kept = self.sink.take_kept();
        self.tokens.extend(clients::tokens(&kept)?);
        if self.tokens.is_empty() {
            bail!("no sign-up token arrived ({signed_up} of {missing} SignUp calls succeeded)");
        }
        Ok(())
    }
}

/// A few accounts with [`PASSWORD`], made through the sign-up flow.
async fn seed_accounts(bench: &mut Bench) -> Result<()> {
    bench.ensure_tokens(SEED_ACCOUNTS).await?;
    let connections = Connections::open(bench.server.addr, 1).await?;
    let seeds: Vec<_> = bench
        .tokens
        .drain(..SEED_ACCOUNTS.min(bench.tokens.len()))
        .collect();
    for (i, seed) in seeds.into_iter().enumerate() {
        connections
            .reset(i)
            .reset_password(pb::ResetPasswordRequest {
                token: seed.token,
                new_password: PASSWORD.into(),
            })
            .await?;
        bench.accounts.push(seed.email);
    }
    Ok(())
}
