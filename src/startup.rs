//! One start-up path for `main` and the tests: bind, connect, migrate, wire
//! the services, health, reflection and the mail worker, then serve until
//! told to stop.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use tokio::{net::TcpListener, sync::Notify};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::Settings,
    grpc::{
        AccountsService, PasswordResetService,
        pb::{self, accounts_server::AccountsServer, password_reset_server::PasswordResetServer},
    },
    mail::{templates::Templates, transport::MailTransport, worker::MailWorker},
    security::hashing::PasswordHasher,
    service::ServiceContext,
    store,
};

/// Health services that follow database readiness.
const READY_SERVICES: [&str; 4] = [
    "",
    "readiness",
    "rekey.v1.PasswordReset",
    "rekey.v1.Accounts",
];

/// A built server, bound and migrated, not yet serving.
pub struct App {
    listener: TcpListener,
    db: DatabaseConnection,
    ctx: ServiceContext,
    worker: MailWorker,
    settings: Settings,
}

impl App {
    /// Binds `settings.listen` (port 0 picks a free port), connects to the
    /// database and applies pending migrations.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let transport =
            MailTransport::from_settings(&settings.mail_transport).map_err(anyhow::Error::msg)?;
        if let MailTransport::File(_) = transport {
            tracing::warn!(
                "mail, links included, is written to files: a development transport; \
                 set REKEY_SMTP_URL in production"
            );
        }
        let templates = Templates::embedded().context("loading mail templates")?;
        let hasher = PasswordHasher::new(&settings.hashing).context("configuring argon2")?;

        let db = store::connect(&settings.database_url)
            .await
            .context("connecting to the database")?;
        store::migrate(&db).await.context("applying migrations")?;

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;

        let mail_wake = Arc::new(Notify::new());
        let ctx = ServiceContext {
            db: db.clone(),
            hasher,
            password_policy: settings.password_policy,
            default_reset_url: settings.default_reset_url.clone(),
            allowed_reset_urls: settings.allowed_reset_urls.clone(),
            mail_wake: mail_wake.clone(),
        };
        let worker = MailWorker {
            db: db.clone(),
            transport,
            templates: Arc::new(templates),
            from: settings.mail_from.clone(),
            reply_to: settings.mail_reply_to.clone(),
            settings: settings.mail_worker,
            reset_token_ttl: settings.reset_token_ttl,
            signup_token_ttl: settings.signup_token_ttl,
            wake: mail_wake,
        };
        Ok(Self {
            listener,
            db,
            ctx,
            worker,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Serves until `shutdown` is cancelled, then stops accepting calls,
    /// finishes the ones in flight and the mail being sent, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("liveness", ServingStatus::Serving)
            .await;
        set_ready(&reporter, store::is_ready(&self.db).await).await;
        let readiness = tokio::spawn(watch_readiness(
            reporter.clone(),
            self.db.clone(),
            self.settings.health_check_interval,
            shutdown.clone(),
        ));

        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection v1alpha")?;

        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "rekey listening");

        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(PasswordResetServer::new(PasswordResetService::new(
                self.ctx.clone(),
            )))
            .add_service(AccountsServer::new(AccountsService::new(self.ctx)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async {
                shutdown.cancelled().await;
                tracing::info!("shutting down: no new calls, finishing those in flight");
            });
        let grace = self.settings.shutdown_grace;
        // Long-lived streams (health Watch) would hold the drain open forever.
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = server => served.context("serving gRPC"),
            () = drain_deadline => {
                tracing::warn!(?grace, "calls still open after the shutdown grace; closing them");
                Ok(())
            }
        };
        // Whatever ended the server, stop the worker after its current batch.
        shutdown.cancel();
        match tokio::time::timeout(grace, worker).await {
            Ok(finished) => finished.context("mail worker")?,
            Err(_) => tracing::warn!(
                ?grace,
                "mail batch still sending after the shutdown grace; its jobs will be retried"
            ),
        }
        let _ = readiness.await;
        served?;
        tracing::info!("rekey stopped");
        Ok(())
    }
}

/// Reflection describes everything served, so `grpcurl list` shows it all.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

async fn set_ready(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in READY_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps readiness in step with the database until shutdown, then reports
/// not serving so load balancers drain this replica.
async fn watch_readiness(
    reporter: HealthReporter,
    db: DatabaseConnection,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut was_ready = None;
    loop {
        let ready = store::is_ready(&db).await;
        if was_ready != Some(ready) {
            if ready {
                tracing::info!("database reachable; ready");
            } else {
                tracing::warn!("database unreachable or migrations pending; not ready");
            }
            set_ready(&reporter, ready).await;
            was_ready = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    set_ready(&reporter, false).await;
    reporter
        .set_service_status("liveness", ServingStatus::NotServing)
        .await;
}
