//! The real `rekey` binary as a separate process on 127.0.0.1, with a fresh
//! SQLite file or PostgreSQL database, mailing over SMTP to the bench's sink.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use sea_orm::{ConnectionTrait, Database};
use tokio::process::{Child, Command};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{args::Db, procfs::Process};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const RESET_PAGE: &str = "https://app.example.com/reset";

/// Server settings the bench relies on, set explicitly.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Params {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub hash_permits: usize,
    pub hash_queue_depth: usize,
    pub mail_send_concurrency: usize,
    pub mail_batch_size: usize,
    pub smtp_timeout_secs: u64,
}

impl Params {
    /// The server's defaults (src/config/raw.rs), permits = cores.
    pub fn defaults() -> Self {
        Self {
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_permits: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hash_queue_depth: 64,
            mail_send_concurrency: 32,
            mail_batch_size: 64,
            smtp_timeout_secs: 30,
        }
    }
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub health_addr: SocketAddr,
    /// Spawn to readiness `SERVING`.
    pub startup: Duration,
    /// VmRSS once serving and idle, MiB.
    pub idle_rss_mib: f64,
    /// The server's database, for scenarios that write to it directly.
    pub database_url: String,
    log: std::path::PathBuf,
    postgres_database: Option<String>,
    _dir: tempfile::TempDir,
}

/// A port free right now on 127.0.0.1.
fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Server {
    pub async fn start(db: Db, smtp: SocketAddr, params: &Params) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (database_url, postgres_database) = match db {
            Db::Sqlite => (
                format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display()),
                None,
            ),
            Db::Postgres => {
                let name = format!("rekey_bench_{}", std::process::id());
                let admin = Database::connect(POSTGRES_ADMIN_URL)
                    .await
                    .context("connecting to PostgreSQL at 127.0.0.1:5432 as postgres")?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await?;
                admin.close().await?;
                (
                    format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    Some(name),
                )
            }
        };
        let (addr, health_addr) = (free_port()?, free_port()?);
        let log = dir.path().join("server.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rekey"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REKEY_LISTEN", addr.to_string())
            .env("REKEY_HEALTH_LISTEN", health_addr.to_string())
            .env("REKEY_DATABASE_URL", &database_url)
            .env("REKEY_SMTP_URL", format!("smtp://{smtp}"))
            .env(
                "REKEY_SMTP_TIMEOUT",
                format!("{}s", params.smtp_timeout_secs),
            )
            .env("REKEY_MAIL_FROM", "rekey bench <no-reply@rekey.test>")
            .env("REKEY_RESET_URL", RESET_PAGE)
            .env("REKEY_ALLOWED_RESET_URLS", RESET_PAGE)
            .env("REKEY_MAIL_POLL_INTERVAL", "100ms")
            .env(
                "REKEY_MAIL_SEND_CONCURRENCY",
                params.mail_send_concurrency.to_string(),
            )
            .env("REKEY_MAIL_BATCH_SIZE", params.mail_batch_size.to_string())
            // Limits would refuse the bench's repeated calls from one IP.
            .env("REKEY_RATE_LIMIT_PER_EMAIL", "off")
            .env("REKEY_RATE_LIMIT_PER_IP", "off")
            .env("REKEY_RATE_LIMIT_MAIL_GLOBAL", "off")
            .env("REKEY_AUTH_FAILURE_LIMIT", "off")
            .env(
                "REKEY_ARGON2_MEMORY_KIB",
                params.argon2_memory_kib.to_string(),
            )
            .env(
                "REKEY_ARGON2_ITERATIONS",
                params.argon2_iterations.to_string(),
            )
            .env(
                "REKEY_ARGON2_PARALLELISM",
                params.argon2_parallelism.to_string(),
            )
            .env("REKEY_HASH_CONCURRENCY", params.hash_permits.to_string())
            .env(
                "REKEY_HASH_QUEUE_DEPTH",
                params.hash_queue_depth.to_string(),
            )
            .env("REKEY_SHUTDOWN_DELAY", "0s")
            .env("REKEY_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("server.err"),
            )?))
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = command.spawn().context("starting the rekey binary")?;
        let pid = child.id().ok_or_else(|| anyhow!("rekey exited at once"))?;
        let mut server = Self {
            child,
            pid,
            addr,
            health_addr,
            startup: Duration::ZERO,
            idle_rss_mib: 0.0,
            database_url: database_url.clone(),
            log,
            postgres_database,
            _dir: dir,
        };
        server.startup = server.wait_serving(spawned).await?;
        // Idle: the first readiness and mail polls done.
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.idle_rss_mib = Process::Pid(pid).memory_mib()?.0;
        Ok(server)
    }

    /// Polls readiness on the health port until `SERVING`.
    async fn wait_serving(&mut self, spawned: Instant) -> Result<Duration> {
        let url = format!("http://{}", self.health_addr);
        while spawned.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait()? {
                bail!("rekey exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())?
                .connect()
                .await
            {
                let mut health = HealthClient::new(channel);
                let reply = health
                    .check(HealthCheckRequest {
                        service: "readiness".into(),
                    })
                    .await;
                if reply.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                    return Ok(spawned.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bail!("rekey not SERVING within 60 s:\n{}", self.log_tail())
    }

    /// The last lines the server logged (stdout and stderr), for errors.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for file in [self.log.clone(), self.log.with_file_name("server.err")] {
            let content = std::fs::read_to_string(file).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let start = lines.len().saturating_sub(20);
            text.push_str(&lines[start..].join("\n"));
            text.push('\n');
        }
        text
    }

    /// Whether the process still runs.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("rekey exited with {status}:\n{}", self.log_tail()),
            None => Ok(()),
        }
    }

    /// SIGTERM, a graceful stop, then the database is dropped.
    pub async fn stop(mut self) -> Result<()> {
        let pid = i32::try_from(self.pid)?;
        // SAFETY: signals the child this value owns, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        if let Some(name) = self.postgres_database.take() {
            let admin = Database::connect(POSTGRES_ADMIN_URL).await?;
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
        }
        Ok(())
    }
}
