//! `rekey serve` (the default), `migrate`, `check-config`, `preview-mail`;
//! exit 2 on bad configuration.

use clap::{Parser, Subcommand};
use rekey::config::{ConfigError, MigrateSettings, PreviewSettings, Settings};
use rekey::{domain::Locale, mail::templates::TemplateKind, startup};
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
    /// Print a mail's subject, text and HTML, rendered with sample data from
    /// the templates the server would use (REKEY_TEMPLATE_DIR included).
    PreviewMail {
        /// reset, sign_up, already_registered, password_changed or unknown_account.
        #[arg(long)]
        kind: TemplateKind,
        /// A BCP 47 tag; falls back like the server, e.g. de-CH to de to en.
        #[arg(long, default_value = "en")]
        locale: Locale,
    },
}

async fn run(cli: Cli) -> Result<anyhow::Result<()>, ConfigError> {
    let load = || Settings::load(cli.config.as_deref());
    Ok(match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(load()?).await,
        Command::Migrate => startup::migrate(&MigrateSettings::load(cli.config.as_deref())?).await,
        Command::CheckConfig { connect } => startup::check_config(&load()?, connect).await,
        Command::PreviewMail { kind, locale } => {
            let settings = PreviewSettings::load(cli.config.as_deref())?;
            startup::preview_mail(&settings, kind, &locale)
        }
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
