//! The `rekey` binary: `serve` (the default), `migrate` and `check-config`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use rekey::{
    config::{MailTransportSettings, Settings},
    mail::transport::MailTransport,
    startup::App,
    store, telemetry,
};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "gRPC service for password reset and email-verified sign-up"
)]
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
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check the settings and exit non-zero with a message if they make no sense.
    CheckConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("rekey: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::CheckConfig => check_config(&settings),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rekey: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(settings.log_format)?;
    let app = App::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = store::connect(&settings.database_url).await?;
    store::migrate(&db).await?;
    println!("migrations applied");
    Ok(())
}

fn check_config(settings: &Settings) -> anyhow::Result<()> {
    MailTransport::from_settings(&settings.mail_transport).map_err(anyhow::Error::msg)?;
    let database = settings
        .database_url
        .expose_secret()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mail = match &settings.mail_transport {
        MailTransportSettings::Smtp { .. } => "smtp".to_owned(),
        MailTransportSettings::File { dir } => format!("file ({})", dir.display()),
    };
    println!("configuration OK");
    println!("  listen:   {}", settings.listen);
    println!("  database: {database}");
    println!("  mail:     {mail}, from {}", settings.mail_from);
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    shutdown.cancel();
}
