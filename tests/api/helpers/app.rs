//! The real server in-process on 127.0.0.1:0 with a fresh database
//! (SQLite in a temp dir, or a new PostgreSQL database), mail sent over real
//! SMTP to a sink, and tonic clients on a real port.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use figment::Figment;
use rekey::{
    config::Settings,
    domain::AdjustableClock,
    grpc::pb::{
        self, accounts_client::AccountsClient, admin_client::AdminClient,
        password_reset_client::PasswordResetClient,
    },
    security::hashing::PasswordHasher,
    startup::{App, StatementObserver},
    store::{MailStatus, entities::mail_outbox},
};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{
    Backend, PASSWORD, RESET_PAGE, TestDatabase, eventually, fresh_postgres_database,
    logs::init_logs, smtp::SmtpSink,
};

/// Everything a test talks to.
pub struct TestApp {
    pub reset: PasswordResetClient<Channel>,
    pub accounts: AccountsClient<Channel>,
    pub admin: AdminClient<Channel>,
    /// A connected channel, for other clients (health, reflection).
    pub channel: Channel,
    /// The gRPC port, for raw connections.
    pub addr: std::net::SocketAddr,
    /// The Prometheus scrape port, when `metrics_listen` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub mailbox: SmtpSink,
    pub db: DatabaseConnection,
    pub database_url: String,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The server's clock: the system's, moved forward by `advance`.
    pub clock: Arc<AdjustableClock>,
    /// The server's hashing pool, to count hashes.
    pub hasher: PasswordHasher,
    /// The SQL text of every statement run inside an RPC, in order.
    pub rpc_statements: Arc<Mutex<Vec<String>>>,
    /// Keeps the SQLite directory alive for the test's duration.
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database this app created, dropped with it (after the
    /// fields above, so the server has been told to stop).
    database: Option<TestDatabase>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |figment| figment).await
}

/// As [`spawn_app`], with extra settings layered on the test defaults.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(Figment) -> Figment,
) -> TestApp {
    spawn_app_with_mailbox(backend, SmtpSink::start(), configure).await
}

/// As [`spawn_app_with`], its mail going to `mailbox`; `configure` points
/// `smtp_url` at it when the default (`smtp://ADDR`) will not do.
pub async fn spawn_app_with_mailbox(
    backend: Backend,
    mailbox: SmtpSink,
    configure: impl FnOnce(Figment) -> Figment,
) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (database_url, database) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display()),
            None,
        ),
        Backend::Postgres => {
            let database = fresh_postgres_database().await;
            (database.url.clone(), Some(database))
        }
    };
    let mut app = start_app(database_url, mailbox, dir, configure).await;
    app.database = database;
    app
}

impl TestApp {
    /// Another server on the same database and SMTP sink: a second replica.
    pub async fn spawn_replica(&self) -> TestApp {
        self.spawn_replica_with(|f| f).await
    }

    /// A second replica with other settings, e.g. after a configuration change.
    pub async fn spawn_replica_with(&self, configure: impl FnOnce(Figment) -> Figment) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        start_app(
            self.database_url.clone(),
            self.mailbox.clone(),
            dir,
            configure,
        )
        .await
    }
}

async fn start_app(
    database_url: String,
    mailbox: SmtpSink,
    dir: tempfile::TempDir,
    configure: impl FnOnce(Figment) -> Figment,
) -> TestApp {
    let figment = Figment::new()
        .merge(("listen", "127.0.0.1:0"))
        .merge(("database_url", database_url.clone()))
        .merge(("smtp_url", format!("smtp://{}", mailbox.addr)))
        .merge(("smtp_timeout", "5s"))
        .merge(("mail_from", "rekey tests <no-reply@rekey.test>"))
        .merge(("reset_url", RESET_PAGE))
        .merge((
            "allowed_reset_urls",
            "https://other.example.com/welcome/{token}",
        ))
        // Cheap hashes keep the suite fast; the cost parameters are not under test.
        .merge(("argon2_memory_kib", 1024))
        .merge(("argon2_iterations", 1))
        .merge(("mail_poll_interval", "200ms"))
        .merge(("health_check_interval", "200ms"))
        // Stops at once; the delay has its own test.
        .merge(("shutdown_delay", "0s"));
    let settings = Settings::from_figment(configure(figment)).unwrap();
    let clock = Arc::new(AdjustableClock::new());
    let rpc_statements = Arc::new(Mutex::new(Vec::new()));
    let recorded = rpc_statements.clone();
    let observer: StatementObserver = Arc::new(move |info| {
        // Only what runs inside an RPC's span; the mail worker has its own.
        let in_rpc = tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.name() == "rpc");
        if in_rpc {
            recorded.lock().unwrap().push(info.statement.sql.clone());
        }
    });
    let app = App::build_observed(settings, clock.clone(), Some(observer))
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let metrics_addr = app.metrics_addr();
    let db = app.db().clone();
    let hasher = app.hasher().clone();

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestApp {
        reset: PasswordResetClient::new(channel.clone()),
        accounts: AccountsClient::new(channel.clone()),
        admin: AdminClient::new(channel.clone()),
        channel,
        addr,
        metrics_addr,
        mailbox,
        db,
        database_url,
        shutdown,
        server: Some(server),
        clock,
        hasher,
        rpc_statements,
        dir,
        database: None,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub async fn sign_up(&mut self, email: &str, display_name: &str) -> Result<(), tonic::Status> {
        self.reset
            .sign_up(pb::SignUpRequest {
                email: email.into(),
                display_name: display_name.into(),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    /// Signs `email` up and returns the mailed sign-up token, unused.
    pub async fn sign_up_token(&mut self, email: &str, display_name: &str) -> String {
        self.sign_up(email, display_name).await.unwrap();
        self.mailbox.wait_for(email, 1).await.remove(0).token()
    }

    /// Signs up every `(email, display name)` at once, each call on its own
    /// clone of the client; every call must succeed.
    pub async fn sign_up_at_once(&self, sign_ups: impl IntoIterator<Item = (String, String)>) {
        let calls = sign_ups.into_iter().map(|(email, display_name)| {
            let mut reset = self.reset.clone();
            async move {
                reset
                    .sign_up(pb::SignUpRequest {
                        email,
                        display_name,
                        ..Default::default()
                    })
                    .await
            }
        });
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
    }

    pub async fn request_reset(&mut self, email: &str) -> Result<(), tonic::Status> {
        self.reset
            .request_reset(pb::RequestResetRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    pub async fn verify(&mut self, token: &str) -> Result<pb::VerifyTokenResponse, tonic::Status> {
        self.reset
            .verify_token(pb::VerifyTokenRequest {
                token: token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn reset_password(
        &mut self,
        token: &str,
        password: &str,
    ) -> Result<String, tonic::Status> {
        self.reset
            .reset_password(pb::ResetPasswordRequest {
                token: token.into(),
                new_password: password.into(),
            })
            .await
            .map(|r| r.into_inner().account_id)
    }

    pub async fn authenticate(
        &mut self,
        email: &str,
        password: &str,
    ) -> Result<pb::AuthenticateResponse, tonic::Status> {
        self.accounts
            .authenticate(pb::AuthenticateRequest {
                email: email.into(),
                password: password.into(),
                client: None,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Signs up, follows the mailed link and sets `PASSWORD`. Returns the account id.
    pub async fn create_account(&mut self, email: &str, display_name: &str) -> String {
        self.sign_up(email, display_name).await.unwrap();
        let mail = self.mailbox.wait_for(email, 1).await.remove(0);
        self.reset_password(&mail.token(), PASSWORD).await.unwrap()
    }

    /// Waits until every queued mail job has been handled (sent, skipped or dead).
    pub async fn wait_for_outbox_drained(&self) {
        eventually("the mail outbox to drain", || async {
            let jobs = mail_outbox::Entity::find().all(&self.db).await.unwrap();
            jobs.iter()
                .all(|job| job.status != MailStatus::Pending)
                .then_some(())
        })
        .await;
    }

    /// Stops the server gracefully and returns what `run_until_stopped` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not stop within 10s")
            .unwrap()
    }
}
