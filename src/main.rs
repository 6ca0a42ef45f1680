//! `rekey serve` (the default), `migrate`, `check-config`; exit 2 on bad configuration.

use clap::{Parser, Subcommand};
use rekey::config::{ConfigError, MigrateSettings, Settings};
use rekey::startup;
use std::{path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML settings file; REKEY_* environment variables override it.
    #[arg(long, global = true, env = "REKEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Apply pending database migrations and exit; needs only the database URL.
    Migrate,
    /// Check the settings and exit non-zero with a message if they make no sense.
    CheckConfig {
        #[arg(long, help = "Also connect to the database and the SMTP relay")]
        connect: bool,
    },
}

async fn run(cli: Cli) -> Result<anyhow::Result<()>, ConfigError> {
    let load = || Settings::load(cli.config.as_deref());
    Ok(match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(load()?).await,
        Command::Migrate => startup::migrate(&MigrateSettings::load(cli.config.as_deref())?).await,
        Command::CheckConfig { connect } => startup::check_config(&load()?, connect).await,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let (code, error) = match run(Cli::parse()).await {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(error)) => (1, error),
        Err(e) => (2, anyhow::Error::new(e).context("invalid configuration")),
    };
    eprintln!("rekey: {error:#}");
    ExitCode::from(code)
}
