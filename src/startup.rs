//! One start-up path for `main` and the tests: bind, connect, migrate, wire
//! the services, health, reflection and the mail worker into a router, then
//! serve until told to stop. Settings become each component's parameters
//! here, so no lower layer reads `config`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::server::Router};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::layer::util::{Identity, Stack};

use crate::{
    config::{MailTransportSettings, Settings, TlsSettings},
    domain::{Clock, SystemClock},
    grpc::{
        self, AccountsService, AdminService, CallerLayer, PasswordResetService, SheddingLayer,
        TransportLayer, TransportLimits,
        incoming::{self, Accept},
        pb::{
            self, accounts_server::AccountsServer, admin_server::AdminServer,
            password_reset_server::PasswordResetServer,
        },
    },
    mail::{
        delivery::Delivery,
        mailer::Mailer,
        transport::{MailTransport, TransportError},
        worker::MailWorker,
    },
    security::{hashing::PasswordHasher, tls::ReloadingAcceptor},
    service::{Admission, Readiness, RetentionPolicy, ServiceContext, run_retention},
    store, telemetry,
};

/// The layers in front of every service, outermost first: transport
/// (framing, size, deadline), caller authentication, load shedding.
type Layers = Stack<SheddingLayer, Stack<CallerLayer, Stack<TransportLayer, Identity>>>;

/// How long a call that finds every database connection taken looks for
/// one to come back before it is refused with `RESOURCE_EXHAUSTED`: long
/// enough to see a busy pool move, far shorter than its acquire timeout.
const POOL_QUEUE_WAIT: Duration = Duration::from_millis(250);

/// Health services that follow database readiness: the server as a whole,
/// the Kubernetes readiness name, and each rekey service.
const READY_SERVICES: [&str; 5] = [
    "",
    "readiness",
    <PasswordResetServer<PasswordResetService> as NamedService>::NAME,
    <AccountsServer<AccountsService> as NamedService>::NAME,
    <AdminServer<AdminService> as NamedService>::NAME,
];

/// A built server, bound, migrated and wired, not yet serving.
pub struct App {
    listener: TcpListener,
    tls: Option<TlsSettings>,
    /// The plaintext port serving health alone.
    health_port: Option<TcpListener>,
    health_service: HealthServer<HealthService>,
    router: Router<Layers>,
    health: HealthReporter,
    readiness: Readiness,
    transport: TransportLimits,
    db: DatabaseConnection,
    hasher: PasswordHasher,
    worker: MailWorker,
    health_check_interval: Duration,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    retention: RetentionPolicy,
    clock: Arc<dyn Clock>,
}

/// Sees each SQL statement (text, values, duration) as it runs.
pub type StatementObserver = Arc<dyn Fn(&sea_orm::metric::Info<'_>) + Send + Sync>;

impl App {
    /// Builds on the system clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Binds `settings.listen` (port 0 picks a free port), connects to the
    /// database, applies pending migrations and wires every service.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        Self::build_observed(settings, clock, None).await
    }

    /// As [`App::build_with_clock`], with `on_statement` told of every SQL
    /// statement the server runs, in the task that runs it.
    pub async fn build_observed(
        settings: Settings,
        clock: Arc<dyn Clock>,
        on_statement: Option<StatementObserver>,
    ) -> anyhow::Result<Self> {
        let transport =
            mail_transport(&settings.mail.transport).context("setting up the mail transport")?;
        if let MailTransport::File(_) = transport {
            tracing::warn!(
                "mail, links included, is written to files: a development transport; \
                 set REKEY_SMTP_URL in production"
            );
        }
        let passwords = &settings.passwords;
        let hasher = PasswordHasher::new(
            passwords.argon2.clone(),
            passwords.hash_concurrency,
            passwords.hash_queue_depth,
        )
        .context("setting up the hashing pool")?;

        let mut db = store::connect(&settings.database_url, settings.database_pool.clone())
            .await
            .context("connecting to the database")?;
        if let Some(observer) = on_statement {
            db.set_metric_callback(move |info| observer(info));
        }
        let migrations_applied = if settings.migrate_on_start {
            store::migrate(&db).await.context("applying migrations")?
        } else {
            // Not ready until `rekey migrate` has applied what is pending.
            0
        };
        log_start(&settings, migrations_applied);

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let health_port = match settings.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the health port {addr}"))?,
            ),
            None => None,
        };
        for problem in &settings.insecure {
            tracing::warn!(
                problem = problem.as_str(),
                "protected mode overridden by REKEY_ALLOW_INSECURE"
            );
        }

        let mail_wake = Arc::new(Notify::new());
        let links = settings.links;
        let allowed_pages = links.allowed_reset_urls.clone();
        let ctx = ServiceContext {
            db: db.clone(),
            hasher: hasher.clone(),
            password_policy: passwords.policy,
            default_reset_url: links.default_reset_url,
            allowed_reset_urls: links.allowed_reset_urls,
            mail_wake: mail_wake.clone(),
            clock: clock.clone(),
            limits: settings.limits,
        };
        let mailer = Mailer {
            templates: settings.mail.templates,
            transport,
            sender: settings.mail.sender,
        };
        let delivery = Delivery::new(
            db.clone(),
            mailer,
            links.lifetimes,
            allowed_pages,
            settings.mail.notify_unknown_recipients,
            clock.clone(),
        );
        let worker = MailWorker::new(
            db.clone(),
            delivery,
            settings.mail.worker,
            mail_wake,
            clock.clone(),
        );

        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        let readiness = Readiness::new();
        let admission = Admission::new(
            db.clone(),
            readiness.clone(),
            settings.database_pool.activity.clone(),
            POOL_QUEUE_WAIT.min(settings.database_pool.acquire_timeout),
        );
        let router = grpc::server(&settings.transport)
            .layer(CallerLayer::new(settings.callers))
            .layer(SheddingLayer::new(admission))
            .add_service(health_service.clone())
            .add_service(reflection().build_v1().context("building reflection v1")?)
            .add_service(
                reflection()
                    .build_v1alpha()
                    .context("building reflection v1alpha")?,
            )
            .add_service(PasswordResetServer::new(PasswordResetService::new(
                ctx.clone(),
            )))
            .add_service(AccountsServer::new(AccountsService::new(ctx.clone())))
            .add_service(AdminServer::new(AdminService::new(ctx)));
        Ok(Self {
            listener,
            tls: settings.tls,
            health_port,
            health_service,
            router,
            health,
            readiness,
            transport: settings.transport,
            db,
            hasher,
            worker,
            health_check_interval: settings.health_check_interval,
            shutdown_grace: settings.shutdown_grace,
            shutdown_delay: settings.shutdown_delay,
            retention: settings.retention,
            clock,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The plaintext health port's address, when there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_port.as_ref()?.local_addr().ok()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The hashing pool, to observe how busy it is.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Serves until `shutdown` is cancelled, then stops accepting calls,
    /// finishes the ones in flight and the mail being sent, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            health_port,
            health_service,
            router,
            health,
            readiness,
            transport,
            db,
            worker,
            health_check_interval,
            shutdown_grace: grace,
            shutdown_delay,
            retention,
            clock,
            ..
        } = self;
        // Readiness follows `shutdown` at once; serving stops `shutdown_delay`
        // later, once load balancers have stopped sending calls here.
        let stop_serving = CancellationToken::new();
        tokio::spawn(stop_serving_after_delay(
            shutdown.clone(),
            stop_serving.clone(),
            shutdown_delay,
        ));
        health
            .set_service_status("liveness", ServingStatus::Serving)
            .await;
        let ready = store::is_ready(&db).await;
        readiness.set(ready);
        set_ready(&health, ready).await;
        tokio::spawn(run_retention(
            db.clone(),
            retention,
            clock,
            shutdown.clone(),
        ));
        let readiness = tokio::spawn(watch_readiness(
            health,
            readiness,
            db,
            health_check_interval,
            shutdown.clone(),
        ));
        let worker = tokio::spawn(worker.run(stop_serving.clone()));
        if let Some(health_port) = health_port {
            tokio::spawn(serve_health(
                health_port,
                health_service,
                transport,
                stop_serving.clone(),
            ));
        }
        let addr = listener.local_addr()?;
        let (acceptor, handshake_timeout) = match tls {
            Some(tls) => {
                let acceptor =
                    ReloadingAcceptor::watch(tls.files, tls.reload_interval, stop_serving.clone())
                        .context("loading the TLS certificate")?;
                (Some(acceptor), tls.handshake_timeout)
            }
            None => (None, Duration::ZERO),
        };
        tracing::info!(%addr, tls = acceptor.is_some(), "rekey listening");
        let accept = Accept {
            tls: acceptor,
            handshake_timeout,
            idle_timeout: transport.connection_idle_timeout,
        };
        let incoming = incoming::accept(listener, accept, stop_serving.clone());

        let server = router.serve_with_incoming_shutdown(incoming, async {
            stop_serving.cancelled().await;
            tracing::info!("shutting down: no new calls, finishing those in flight");
        });
        // Long-lived streams (health Watch) would hold the drain open forever.
        let drain_deadline = async {
            stop_serving.cancelled().await;
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
        stop_serving.cancel();
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

/// `rekey serve`: logs, builds, and serves until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(settings.log_format)?;
    let app = App::build(settings).await?;
    app.run_until_stopped(shutdown_on_signal()).await
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

    let transport =
        mail_transport(&settings.mail.transport).context("setting up the mail transport")?;
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

fn mail_transport(settings: &MailTransportSettings) -> Result<MailTransport, TransportError> {
    match settings {
        MailTransportSettings::Smtp {
            url,
            password,
            timeout,
        } => MailTransport::smtp(
            url.expose_secret(),
            password.as_ref().map(ExposeSecret::expose_secret),
            *timeout,
        ),
        MailTransportSettings::File { dir } => MailTransport::file(dir.clone()),
    }
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

/// Serves `grpc.health.v1` alone, in plaintext: Kubernetes' `grpc:` probes
/// cannot speak TLS. The same transport limits apply.
async fn serve_health(
    listener: TcpListener,
    health: HealthServer<HealthService>,
    transport: TransportLimits,
    shutdown: CancellationToken,
) {
    let accept = Accept {
        tls: None,
        handshake_timeout: Duration::ZERO,
        idle_timeout: transport.connection_idle_timeout,
    };
    let incoming = incoming::accept(listener, accept, shutdown.clone());
    let served = grpc::server(&transport)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the health port stopped");
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

/// One line saying what this process is: version, database (no
/// credentials), migrations applied, mail transport, TLS, callers, limits.
fn log_start(settings: &Settings, migrations_applied: usize) {
    let tls = match &settings.tls {
        Some(tls) if tls.files.client_ca.is_some() => "mtls",
        Some(_) => "tls",
        None => "off",
    };
    let keys = settings.callers.key_names();
    let callers = match (keys.is_empty(), settings.callers.required()) {
        (_, false) => "open (no authentication)".to_owned(),
        (true, true) => "client certificates".to_owned(),
        (false, true) => format!("api keys ({})", keys.join(", ")),
    };
    let limit = |l: Option<crate::domain::RateLimit>| l.map_or("off".to_owned(), |l| l.to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = settings.database_location(),
        migrations_applied,
        migrate_on_start = settings.migrate_on_start,
        mail = %settings.mail.transport,
        tls,
        callers,
        limit_per_email = limit(settings.limits.per_email),
        limit_per_ip = limit(settings.limits.per_ip),
        limit_auth_failures = limit(settings.limits.auth_failures),
        "rekey starting"
    );
}

/// Cancels `stop_serving` `delay` after `shutdown`: in between, readiness
/// says not serving while calls are still answered.
async fn stop_serving_after_delay(
    shutdown: CancellationToken,
    stop_serving: CancellationToken,
    delay: Duration,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop_serving.cancelled() => return,
    }
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "shutting down: not ready; still serving while endpoints are removed"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop_serving.cancelled() => {}
        }
    }
    stop_serving.cancel();
}

/// Keeps readiness in step with the database until shutdown, then reports
/// not serving so load balancers drain this replica. A pool whose every
/// connection is in use is busy, not down: the check, which would wait out
/// the pool, is skipped then.
async fn watch_readiness(
    reporter: HealthReporter,
    readiness: Readiness,
    db: DatabaseConnection,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut was_ready = None;
    loop {
        let ready = match was_ready {
            Some(ready) if store::pool_exhausted(&db) => ready,
            _ => store::is_ready(&db).await,
        };
        readiness.set(ready);
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
