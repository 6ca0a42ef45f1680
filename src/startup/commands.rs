//! The CLI's commands besides the server itself: `serve`, `migrate`,
//! `check-config`, `preview-mail`, and the signal that stops a server.

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{MailTransportSettings, Settings},
    mail::transport::MailTransport,
    store, telemetry,
};

use super::{App, mail_transport};

/// `rekey serve`: logs, builds, and serves until Ctrl-C or SIGTERM, then
/// flushes the spans not yet exported.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = telemetry::init(settings.log_format)?;
    let served = match App::build(settings).await {
        Ok(app) => app.run_until_stopped(shutdown_on_signal()).await,
        Err(error) => Err(error),
    };
    telemetry.shutdown().await;
    served
}

/// `rekey migrate`: applies pending migrations and returns. It needs the
/// database URL alone, so a migration job needs no mail or link settings.
pub async fn migrate(settings: &crate::config::MigrateSettings) -> anyhow::Result<()> {
    let db = store::connect(&settings.database_url, settings.database_pool.clone())
        .await
        .context("connecting to the database")?;
    let applied = store::migrate(&db).await.context("applying migrations")?;
    println!("migrations applied: {applied}");
    Ok(())
}

/// `rekey check-config`: reports what the settings amount to, once the
/// parts that can be built without the network (the mail transport) are.
/// With `connect`, it also reaches the database (`SELECT 1`) and the mail
/// transport (the SMTP relay: greeting, TLS, login and NOOP; or a file
/// written to the mail directory), reports each as `ok` or `FAILED: reason`,
/// and fails if either does. Reasons are masked of every secret setting.
pub async fn check_config(settings: &Settings, connect: bool) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait as _;

    /// The causes of `error`, each once (lettre and sea-orm repeat their
    /// source in their own message), with no secret.
    fn reason(settings: &Settings, error: &anyhow::Error) -> String {
        let mut text = String::new();
        for cause in error.chain().map(ToString::to_string) {
            if !text.contains(&cause) {
                text.push_str(if text.is_empty() { "" } else { ": " });
                text.push_str(&cause);
            }
        }
        settings.redact(&text)
    }

    let transport = mail_transport(&settings.mail).context("setting up the mail transport")?;
    println!("configuration OK\n{}", settings.summary());
    if !connect {
        return Ok(());
    }
    let database = async {
        let reach = async {
            let db = store::connect(&settings.database_url, settings.database_pool.clone()).await?;
            db.execute_unprepared("SELECT 1").await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(15), reach)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 15s"))?
    };
    let mail = async {
        if let MailTransport::Smtp {
            transport,
            send_timeout,
        } = &transport
        {
            let answered = tokio::time::timeout(*send_timeout, transport.test_connection())
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {send_timeout:?}"))??;
            anyhow::ensure!(answered, "the relay did not answer NOOP");
        } else if let MailTransportSettings::File { dir } = &settings.mail.transport {
            let probe = dir.join(format!(".rekey-check-{}", uuid::Uuid::new_v4()));
            tokio::fs::write(&probe, "written by rekey check-config --connect\n")
                .await
                .context("cannot write a file there")?;
            tokio::fs::remove_file(&probe)
                .await
                .context("cannot remove a file written there")?;
        }
        anyhow::Ok(())
    };
    let (database, mail) = tokio::join!(database, mail);
    let mut failed = Vec::new();
    for (name, outcome) in [
        ("database".to_owned(), database),
        (settings.mail.transport.to_string(), mail),
    ] {
        match outcome {
            Ok(()) => println!("{name}: ok"),
            Err(error) => {
                println!("{name}: FAILED: {}", reason(settings, &error));
                failed.push(name);
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "connection check failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// `rekey preview-mail`: prints `kind` in `locale`, rendered with sample
/// data, from the templates the server would use.
pub fn preview_mail(
    settings: &crate::config::PreviewSettings,
    kind: crate::mail::templates::TemplateKind,
    locale: &crate::domain::Locale,
) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::mail::preview::preview(&settings.templates, kind, locale)?
    );
    Ok(())
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    shutdown
}

async fn cancel_on_signal(shutdown: CancellationToken) {
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
