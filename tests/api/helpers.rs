//! Test harness: the real server in-process on 127.0.0.1:0 with a fresh
//! database (SQLite in a temp dir, or a new PostgreSQL database), mail sent
//! over real SMTP to a sink server, and tonic clients on a real port.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use figment::Figment;
use mailin_embedded::{Handler, Response, Server, response};
use rekey::{
    config::Settings,
    grpc::pb::{self, accounts_client::AccountsClient, password_reset_client::PasswordResetClient},
    startup::App,
    store::entities::mail_outbox,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const RESET_PAGE: &str = "https://app.example.com/reset";
pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a flow test once on SQLite and once on PostgreSQL. The PostgreSQL
/// run needs `REKEY_TEST_POSTGRES_URL` (`.ci/run` sets it); without it, it
/// says so and returns, except under CI, where it fails.
#[macro_export]
macro_rules! flow_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if $crate::helpers::postgres_url().is_none() {
                    // CI must never pass by skipping these.
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "CI must set REKEY_TEST_POSTGRES_URL"
                    );
                    eprintln!("REKEY_TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                }
                super::$name($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}

pub fn postgres_url() -> Option<String> {
    std::env::var("REKEY_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Everything a test talks to.
pub struct TestApp {
    pub reset: PasswordResetClient<Channel>,
    pub accounts: AccountsClient<Channel>,
    /// A connected channel, for other clients (health, reflection).
    pub channel: Channel,
    pub mailbox: SmtpSink,
    pub db: DatabaseConnection,
    pub database_url: String,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Keeps the SQLite directory alive for the test's duration.
    pub dir: tempfile::TempDir,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |figment| figment).await
}

/// As [`spawn_app`], with extra settings layered on the test defaults.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(Figment) -> Figment,
) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    start_app(database_url, SmtpSink::start(), dir, configure).await
}

impl TestApp {
    /// Another server on the same database and SMTP sink: a second replica.
    pub async fn spawn_replica(&self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        start_app(self.database_url.clone(), self.mailbox.clone(), dir, |f| f).await
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
        .merge(("health_check_interval", "200ms"));
    let settings = Settings::from_figment(configure(figment)).unwrap();
    let app = App::build(settings).await.unwrap();
    let addr = app.local_addr().unwrap();
    let db = app.db().clone();
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
        channel,
        mailbox,
        db,
        database_url,
        shutdown,
        server: Some(server),
        dir,
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
        for _ in 0..200 {
            let jobs = mail_outbox::Entity::find().all(&self.db).await.unwrap();
            if jobs.iter().all(|job| job.status != "pending") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mail outbox did not drain");
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

/// Asserts a status code and, when given, the `ErrorInfo` reason.
pub fn assert_error(status: &tonic::Status, code: tonic::Code, reason: Option<&str>) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), code, "{status:?}");
    if let Some(reason) = reason {
        let details = status.get_error_details();
        let info = details
            .error_info()
            .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
        assert_eq!(info.reason, reason);
        assert_eq!(info.domain, "rekey.dev");
    }
}

/// The fields named in a status's `BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

// ---- SMTP sink -------------------------------------------------------------

/// A message as the SMTP sink received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub raw: Vec<u8>,
}

impl ReceivedMail {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .unwrap()
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        self.parsed().body_text(0).unwrap().into_owned()
    }

    pub fn html(&self) -> String {
        self.parsed().body_html(0).unwrap().into_owned()
    }

    pub fn header_from(&self) -> String {
        let parsed = self.parsed();
        let from = parsed.from().unwrap().first().unwrap();
        format!(
            "{} <{}>",
            from.name().unwrap_or_default(),
            from.address().unwrap_or_default()
        )
    }

    /// The link in the text part.
    pub fn link(&self) -> String {
        let text = self.text();
        text.split_whitespace()
            .find(|word| word.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in mail:\n{text}"))
            .to_owned()
    }

    /// The token carried by the link.
    pub fn token(&self) -> String {
        let link = url::Url::parse(&self.link()).unwrap();
        match link.query_pairs().find(|(k, _)| k == "token") {
            Some((_, token)) => token.into_owned(),
            None => link
                .path_segments()
                .unwrap()
                .next_back()
                .unwrap()
                .to_owned(),
        }
    }
}

/// An SMTP server (mailin-embedded) that keeps what it receives. It can be
/// told to refuse the next messages with a 451, like a relay in trouble.
#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse_next: Arc<AtomicUsize>,
    unknown_mailboxes: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct SinkHandler {
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse_next: Arc<AtomicUsize>,
    unknown_mailboxes: Arc<Mutex<Vec<String>>>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for SinkHandler {
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        let refuse = self
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            response::INTERNAL_ERROR
        } else {
            response::OK
        }
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if self
            .unknown_mailboxes
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == to)
        {
            response::NO_MAILBOX
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.received.lock().unwrap().push(ReceivedMail {
            from: self.from.clone(),
            to: self.to.clone(),
            raw: std::mem::take(&mut self.data),
        });
        response::OK
    }
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let refuse_next = Arc::new(AtomicUsize::new(0));
        let unknown_mailboxes = Arc::new(Mutex::new(Vec::new()));
        let handler = SinkHandler {
            received: received.clone(),
            refuse_next: refuse_next.clone(),
            unknown_mailboxes: unknown_mailboxes.clone(),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        std::thread::spawn(move || {
            let mut server = Server::new(handler);
            server
                .with_name("sink.rekey.test")
                // One thread per SMTP session, and rekey pools its connections.
                .with_num_threads(64)
                .with_tcp_listener(listener);
            let _ = server.serve();
        });
        Self {
            addr,
            received,
            refuse_next,
            unknown_mailboxes,
        }
    }

    /// Makes the next `count` messages fail at MAIL FROM with "451 local error".
    pub fn refuse_next(&self, count: usize) {
        self.refuse_next.store(count, Ordering::SeqCst);
    }

    /// Makes RCPT TO `mailbox` fail permanently with "550 mailbox unavailable".
    pub fn reject_mailbox(&self, mailbox: &str) {
        self.unknown_mailboxes
            .lock()
            .unwrap()
            .push(mailbox.to_owned());
    }

    pub fn all(&self) -> Vec<ReceivedMail> {
        self.received.lock().unwrap().clone()
    }

    pub fn to(&self, recipient: &str) -> Vec<ReceivedMail> {
        self.all()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == recipient))
            .collect()
    }

    /// Waits up to 10 s until `recipient` has `count` messages; returns them.
    pub async fn wait_for(&self, recipient: &str, count: usize) -> Vec<ReceivedMail> {
        for _ in 0..200 {
            let mails = self.to(recipient);
            if mails.len() >= count {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{recipient} received {} of {count} mails; server logs:\n{}",
            self.to(recipient).len(),
            captured_logs()
        );
    }
}

// ---- PostgreSQL ------------------------------------------------------------

static STALE_DATABASES_DROPPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Test databases older than this are left over from earlier runs.
const STALE_AFTER_SECS: u64 = 3600;

/// Creates an empty database for one test and returns its URL. Its name
/// carries its creation time, so that databases left by runs long gone can
/// be dropped without touching those of tests running now.
pub async fn fresh_postgres_database() -> String {
    let admin_url = postgres_url().unwrap();
    let admin = Database::connect(&admin_url).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    STALE_DATABASES_DROPPED
        .get_or_init(|| async {
            let rows = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    "SELECT datname FROM pg_database WHERE datname LIKE 'rekey_test_%'",
                ))
                .await
                .unwrap();
            for row in rows {
                let name: String = row.try_get("", "datname").unwrap();
                let created = name
                    .split('_')
                    .nth(2)
                    .and_then(|secs| secs.parse::<u64>().ok())
                    .unwrap_or(0);
                if now.saturating_sub(created) > STALE_AFTER_SECS {
                    admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await
                        .unwrap();
                }
            }
        })
        .await;
    let name = format!("rekey_test_{now}_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

// ---- Logs ------------------------------------------------------------------

/// Everything the server logged in this test process, at debug level.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter("rekey=debug,info")
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
}
