//! `cargo bench --bench load -- [--db sqlite|postgres] [--quick]
//! [--json FILE] [--scenario NAME...]`. `cargo bench` adds `--bench`,
//! which is accepted and ignored.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

/// Every scenario, in the order they are printed.
pub const SCENARIOS: [&str; 9] = [
    "health",
    "request-reset",
    "sign-up",
    "verify-token",
    "authenticate",
    "reset-password",
    "probe-under-load",
    "overload",
    "mail",
];

#[derive(Debug, Clone)]
pub struct Args {
    pub db: Db,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub scenarios: Vec<String>,
}

impl Args {
    pub fn parse() -> Result<Self> {
        let mut args = Args {
            db: Db::Sqlite,
            quick: false,
            json: None,
            scenarios: Vec::new(),
        };
        let mut words = std::env::args().skip(1).peekable();
        while let Some(word) = words.next() {
            match word.as_str() {
                "--bench" => {}
                "--quick" => args.quick = true,
                "--db" => match words.next().as_deref() {
                    Some("sqlite") => args.db = Db::Sqlite,
                    Some("postgres") => args.db = Db::Postgres,
                    other => bail!("--db sqlite|postgres, not {other:?}"),
                },
                "--json" => match words.next() {
                    Some(file) => args.json = Some(file.into()),
                    None => bail!("--json needs a file"),
                },
                "--scenario" => {
                    while let Some(name) = words.next_if(|w| !w.starts_with("--")) {
                        if !SCENARIOS.contains(&name.as_str()) {
                            bail!("unknown scenario {name}; known: {}", SCENARIOS.join(", "));
                        }
                        args.scenarios.push(name);
                    }
                }
                other => bail!(
                    "unknown argument {other}; usage: [--db sqlite|postgres] [--quick] \
                     [--json FILE] [--scenario NAME...]"
                ),
            }
        }
        if args.scenarios.is_empty() {
            args.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
        }
        Ok(args)
    }

    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }

    /// How long each scenario drives load.
    pub fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        }
    }

    /// How long to wait for a mail backlog to drain before giving up.
    pub fn drain_limit(&self) -> Duration {
        if self.quick {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(180)
        }
    }
}
