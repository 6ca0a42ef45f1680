//! One start-up path for `main` and the tests: bind, connect, migrate, wire
//! the services, health, reflection and the mail worker into a router, then
//! serve until told to stop. Settings become each component's parameters
//! here, so no lower layer reads `config`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use sea_orm::{DatabaseConnection, DbBackend};
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
    config::{MailSettings, MailTransportSettings, Settings, TlsSettings},
    domain::{Clock, SystemClock},
    grpc::{
        self, AccountsService, AdminService, CallerLayer, ObserveLayer, PasswordResetService,
        SheddingLayer, TransportLayer, TransportLimits,
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
    store::{
        self, audit::AuditQueue, group_commit::GroupCommit, sqlite_reads::SqliteReads,
        sqlite_writes::SqliteWriter, token_reads::TokenReads,
    },
    telemetry::{
        endpoint,
        gauges::{self, GaugeSources, Gauges, OutboxGauge, ReadyGauge},
        load::CallsInFlight,
        metrics::MetricsPipeline,
    },
};

mod commands;
mod lifecycle;

pub use commands::{check_config, migrate, preview_mail, serve, shutdown_on_signal};
use lifecycle::{serve_health, set_ready, stop_serving_after_delay, watch_readiness};

/// The layers in front of every service, outermost first: telemetry,
/// transport (framing, size, deadline), caller authentication, load shedding.
type Layers =
    Stack<SheddingLayer, Stack<CallerLayer, Stack<TransportLayer, Stack<ObserveLayer, Identity>>>>;

/// How long a call that finds every database connection taken looks for
/// one to come back before it is refused with `RESOURCE_EXHAUSTED`: long
/// enough to see a busy pool move, far shorter than its acquire timeout.
const POOL_QUEUE_WAIT: Duration = Duration::from_millis(250);

/// Health services that follow database readiness: the server as a whole,
/// the Kubernetes readiness name, and each rekey service.
pub(super) const READY_SERVICES: [&str; 5] = [
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
    writes: GroupCommit,
    audit: AuditQueue,
    worker: MailWorker,
    health_check_interval: Duration,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    retention: RetentionPolicy,
    clock: Arc<dyn Clock>,
    telemetry: Telemetry,
}

/// The server's metrics: the pipeline, its gauges and what feeds them.
struct Telemetry {
    pipeline: MetricsPipeline,
    /// The Prometheus scrape port, when there is one.
    listener: Option<TcpListener>,
    ready: ReadyGauge,
    outbox: OutboxGauge,
    _gauges: Gauges,
}

pub use crate::store::StatementObserver;

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
        let transport = mail_transport(&settings.mail).context("setting up the mail transport")?;
        if let MailTransport::File(_) = transport {
            tracing::warn!(
                "mail, links included, is written to files: a development transport; \
                 set REKEY_SMTP_URL in production"
            );
        }
        let pipeline = MetricsPipeline::new(settings.metrics_listen.is_some())
            .context("setting up metrics")?;
        let metrics = pipeline.metrics();
        let passwords = &settings.passwords;
        let hasher = PasswordHasher::new(
            passwords.argon2.clone(),
            passwords.hash_concurrency,
            passwords.hash_queue_depth,
        )
        .context("setting up the hashing pool")?
        .with_metrics(metrics.clone());

        let mut db = store::connect(&settings.database_url, settings.database_pool.clone())
            .await
            .context("connecting to the database")?;
        if let Some(observer) = on_statement.clone() {
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
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics port {addr}"))?,
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
        let calls = CallsInFlight::default();
        let links = settings.links;
        let allowed_pages = links.allowed_reset_urls.clone();
        let writes = start_writes(&db, settings.database_url.expose_secret(), &on_statement)?;
        let mail_writes = mail_writes(&db, &writes);
        let audit = AuditQueue::start(writes.clone());
        let sqlite_reads = match SqliteReads::open(
            settings.database_url.expose_secret(),
            on_statement.clone(),
        ) {
            Ok(reads) => reads.map(Arc::new),
            Err(error) => {
                tracing::warn!(error = %error, "SQLite reads go through the pool: the file does not open read-only");
                None
            }
        };
        let ctx = ServiceContext {
            token_reads: TokenReads::start(&db, sqlite_reads),
            writes: writes.refusing_when_full(),
            audit: audit.clone(),
            db: db.clone(),
            hasher: hasher.clone(),
            password_policy: passwords.policy,
            default_reset_url: links.default_reset_url,
            allowed_reset_urls: links.allowed_reset_urls,
            mail_wake: mail_wake.clone(),
            clock: clock.clone(),
            limits: settings.limits,
            metrics: metrics.clone(),
        };
        let mailer = Mailer {
            templates: settings.mail.templates,
            transport,
            sender: settings.mail.sender,
        };
        let delivery = Delivery::new(
            db.clone(),
            mail_writes.clone(),
            mailer,
            links.lifetimes,
            allowed_pages,
            settings.mail.notify_unknown_recipients,
            clock.clone(),
        );
        let worker = MailWorker::new(
            db.clone(),
            mail_writes,
            delivery,
            settings.mail.worker,
            mail_wake,
            clock.clone(),
        )
        .with_metrics(metrics.clone())
        .with_calls(calls.clone());

        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        let readiness = Readiness::new();
        let admission = Admission::new(
            db.clone(),
            readiness.clone(),
            settings.database_pool.activity.clone(),
            POOL_QUEUE_WAIT.min(settings.database_pool.acquire_timeout),
            metrics.clone(),
        );
        let ready = ReadyGauge::default();
        let outbox = OutboxGauge::default();
        let gauges = gauges::register(
            &pipeline,
            GaugeSources {
                hasher: hasher.clone(),
                db: db.clone(),
                ready: ready.clone(),
                outbox: outbox.clone(),
                clock: clock.clone(),
            },
        );
        let telemetry = Telemetry {
            pipeline,
            listener: metrics_listener,
            ready,
            outbox,
            _gauges: gauges,
        };
        let router = grpc::server(&settings.transport, ObserveLayer::new(metrics))
            .layer(CallerLayer::new(settings.callers))
            .layer(SheddingLayer::new(admission, calls))
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
            writes,
            audit,
            worker,
            health_check_interval: settings.health_check_interval,
            shutdown_grace: settings.shutdown_grace,
            shutdown_delay: settings.shutdown_delay,
            retention: settings.retention,
            clock,
            telemetry,
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

    /// The Prometheus scrape port's address, when metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.telemetry.listener.as_ref()?.local_addr().ok()
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
            writes,
            audit,
            worker,
            health_check_interval,
            shutdown_grace: grace,
            shutdown_delay,
            retention,
            clock,
            telemetry,
            ..
        } = self;
        let observe = ObserveLayer::new(telemetry.pipeline.metrics());
        // Metrics are served until the very end, drain included.
        let stop_metrics = CancellationToken::new();
        if telemetry.pipeline.is_enabled() {
            tokio::spawn(
                telemetry
                    .outbox
                    .clone()
                    .refresh(db.clone(), stop_metrics.clone()),
            );
        }
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
        set_ready(&health, &telemetry.ready, ready).await;
        // Scrapes are answered once readiness is published.
        if let (Some(listener), Some(registry)) =
            (telemetry.listener, telemetry.pipeline.prometheus_registry())
        {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
            tokio::spawn(endpoint::serve(listener, registry, stop_metrics.clone()));
        }
        tokio::spawn(run_retention(
            db.clone(),
            retention,
            clock,
            shutdown.clone(),
        ));
        let readiness = tokio::spawn(watch_readiness(
            health,
            telemetry.ready.clone(),
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
                observe,
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
        // Queued audit records of answered calls are written before exit.
        let flushed = async {
            audit.flush().await;
            writes.flush().await;
        };
        if tokio::time::timeout(grace, flushed).await.is_err() {
            tracing::warn!(
                ?grace,
                "queued writes not flushed within the shutdown grace"
            );
        }
        let _ = readiness.await;
        stop_metrics.cancel();
        telemetry.pipeline.shutdown().await;
        served?;
        tracing::info!("rekey stopped");
        Ok(())
    }
}

/// The transport of `mail`; SMTP keeps one pooled connection per send the
/// worker may make at once.
pub(super) fn mail_transport(mail: &MailSettings) -> Result<MailTransport, TransportError> {
    match &mail.transport {
        MailTransportSettings::Smtp {
            url,
            password,
            timeout,
            trust,
        } => MailTransport::smtp(
            url.expose_secret(),
            password.as_ref().map(ExposeSecret::expose_secret),
            trust.as_ref().map(|trust| trust.pem.as_slice()),
            *timeout,
            mail.worker.sends_at_once(),
        ),
        MailTransportSettings::File { dir } => MailTransport::file(dir.clone()),
    }
}

/// The group commit: on a SQLite file, one lane writing through its own
/// connection outside sqlx; otherwise lanes over the pool.
fn start_writes(
    db: &DatabaseConnection,
    url: &str,
    on_statement: &Option<StatementObserver>,
) -> anyhow::Result<GroupCommit> {
    let writer = SqliteWriter::open_url(url, on_statement.clone())
        .context("opening the SQLite file for writing")?;
    Ok(match writer {
        Some(writer) => {
            GroupCommit::start_on_sqlite(writer).context("starting the SQLite writer")?
        }
        None => GroupCommit::start(db, GroupCommit::lanes_for(db)),
    })
}

/// The mail worker's writes. On PostgreSQL a lane of their own: two of its
/// batches opening requests for one address wait on each other's lock
/// (see `requests::hold_openings`), and in a lane shared with calls that
/// wait held up every call's write batched with it. In one lane the
/// worker's writes never wait on each other: they commit one after
/// another, or in one transaction. SQLite has one writer, shared.
fn mail_writes(db: &DatabaseConnection, writes: &GroupCommit) -> GroupCommit {
    match db.get_database_backend() {
        DbBackend::Sqlite => writes.clone(),
        _ => GroupCommit::start(db, 1),
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
