//! Logs, metrics and traces. Logs go through `tracing`: human-readable or
//! JSON lines on stderr, level from `RUST_LOG` (default `info`), written by
//! a thread of their own so that a call never waits on stderr. With an
//! OTLP endpoint in the standard `OTEL_*` variables, spans are exported
//! too ([`traces`]). Metrics are per [`App`](crate::startup::App)
//! ([`metrics`]), served in Prometheus text ([`endpoint`]) and over OTLP.

pub mod endpoint;
pub mod gauges;
pub mod load;
pub mod metrics;
pub mod traces;

use std::io::BufWriter;

use serde::Deserialize;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Bytes of log lines gathered before a write to stderr; the log thread
/// also writes whenever it has taken every line queued.
const LOG_WRITE_BUFFER: usize = 64 * 1024;

/// Log lines queued for the log thread at most, while stderr is not read.
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// How logs are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The exporters [`init`] started; [`Self::shutdown`] flushes them.
#[must_use = "shut down to flush the spans still buffered"]
pub struct TelemetryGuard {
    traces: Option<traces::TraceExport>,
    /// Dropped last: writes the log lines still queued, then stops.
    _logs: WorkerGuard,
}

impl TelemetryGuard {
    /// Exports what is buffered and stops the exporters.
    pub async fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// Installs the global subscriber, with span export when the `OTEL_*`
/// variables name an OTLP endpoint. Fails if a subscriber is installed.
pub fn init(format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,h2=warn,tower=warn"));
    let traces = traces::TraceExport::from_env()?;
    // Never lossy: a full queue makes callers wait, as a direct write to
    // stderr would, rather than drop lines.
    let (stderr, logs) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("rekey-log")
        .finish(BufWriter::with_capacity(
            LOG_WRITE_BUFFER,
            std::io::stderr(),
        ));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(traces.as_ref().map(traces::TraceExport::layer));
    match format {
        LogFormat::Pretty => registry.with(fmt::layer().with_writer(stderr)).try_init()?,
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(stderr))
            .try_init()?,
    }
    if traces.is_some() {
        traces::set_exporting();
        tracing::info!("exporting traces over OTLP");
    }
    Ok(TelemetryGuard {
        traces,
        _logs: logs,
    })
}

/// True when `OTEL_SDK_DISABLED` turns every OpenTelemetry export off.
fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// True when OTLP export of `signal` ("TRACES", "METRICS") is asked for:
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own endpoint is set.
fn otlp_requested(signal: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    !sdk_disabled()
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

/// The service's resource: `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` as the SDK reads them, else `rekey`.
fn resource() -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("rekey").build()
    }
}
