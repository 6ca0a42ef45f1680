//! Metrics through the OpenTelemetry SDK, one meter provider per server:
//! read by the Prometheus exporter (served by [`super::endpoint`]) when
//! `REKEY_METRICS_LISTEN` is set, and pushed over OTLP when the `OTEL_*`
//! variables name an endpoint. Names follow the OpenTelemetry semantic
//! conventions where there are some; the Prometheus names are the dotted
//! names with `_`, the unit (`_seconds`) and `_total` on counters.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::{Encoder as _, TextEncoder};

/// Bucket bounds of the duration histograms, in seconds (the semantic
/// conventions' advice for request durations).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The instruments the server records into. Cheap to clone; the disabled
/// set records nothing.
#[derive(Clone)]
pub struct Metrics {
    rpc_duration: Histogram<f64>,
    mail_sent: Counter<u64>,
    mail_retried: Counter<u64>,
    mail_dead: Counter<u64>,
    hash_wait: Histogram<f64>,
    rate_limited: Counter<u64>,
    db_wait: Histogram<f64>,
}

impl Metrics {
    /// Instruments that record nothing (no provider reads them).
    pub fn disabled() -> Self {
        Self::new(&opentelemetry::global::meter_provider().meter("rekey"))
    }

    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            rpc_duration: seconds("rpc.server.duration", "Duration of gRPC calls served"),
            mail_sent: counter("rekey.mail.sent", "Mails accepted by the transport"),
            mail_retried: counter("rekey.mail.retried", "Mail attempts that failed and wait"),
            mail_dead: counter("rekey.mail.dead", "Mails given up as dead letters"),
            hash_wait: seconds(
                "rekey.hash.wait_duration",
                "Time a password hash waited for a slot of the pool",
            ),
            rate_limited: counter(
                "rekey.rate_limit.rejections",
                "Calls or mails refused by a rate limit",
            ),
            db_wait: seconds(
                "db.client.connection.wait_time",
                "Time a call waited at admission for a connection of an exhausted pool",
            ),
        }
    }

    /// One gRPC call that ended with `code` after `elapsed`.
    pub fn rpc_served(&self, service: &str, method: &str, code: i32, elapsed: Duration) {
        self.rpc_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service.to_owned()),
                KeyValue::new("rpc.method", method.to_owned()),
                KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            ],
        );
    }

    /// A mail of `kind` (a template name) sent.
    pub fn mail_sent(&self, kind: &'static str) {
        self.mail_sent.add(1, &[KeyValue::new("kind", kind)]);
    }

    pub fn mail_retried(&self, kind: &'static str) {
        self.mail_retried.add(1, &[KeyValue::new("kind", kind)]);
    }

    pub fn mail_dead(&self, kind: &'static str) {
        self.mail_dead.add(1, &[KeyValue::new("kind", kind)]);
    }

    /// How long a hash waited for a running slot.
    pub fn hash_waited(&self, waited: Duration) {
        self.hash_wait.record(waited.as_secs_f64(), &[]);
    }

    /// A refusal by `limit`: per_email, per_ip, mail_global or auth_failure.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.add(1, &[KeyValue::new("limit", limit)]);
    }

    /// How long a call waited for a pooled database connection.
    pub fn db_waited(&self, waited: Duration) {
        self.db_wait.record(waited.as_secs_f64(), &[]);
    }
}

/// A server's meter provider, its readers, and its instruments.
pub struct MetricsPipeline {
    provider: SdkMeterProvider,
    /// Filled by the Prometheus exporter at each scrape.
    registry: Option<prometheus::Registry>,
    /// Whether an OTLP reader pushes the metrics.
    otlp: bool,
    metrics: Metrics,
}

impl MetricsPipeline {
    /// With a Prometheus reader when `prometheus`, an OTLP reader when the
    /// `OTEL_*` variables ask for one; with neither, instruments that
    /// record nothing. Call inside the tokio runtime.
    pub fn new(prometheus: bool) -> anyhow::Result<Self> {
        let otlp = super::otlp_requested("METRICS");
        if !prometheus && !otlp {
            return Ok(Self {
                provider: SdkMeterProvider::builder().build(),
                registry: None,
                otlp,
                metrics: Metrics::disabled(),
            });
        }
        let mut builder = SdkMeterProvider::builder().with_resource(super::resource());
        let registry = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_scope_info()
                .without_target_info()
                .build()
                .context("setting up the Prometheus exporter")?;
            builder = builder.with_reader(exporter);
            Some(registry)
        } else {
            None
        };
        if otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .context("setting up the OTLP metric exporter")?;
            // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (60s).
            builder = builder.with_reader(PeriodicReader::builder(exporter).build());
        }
        let provider = builder.build();
        let metrics = Metrics::new(&provider.meter("rekey"));
        Ok(Self {
            provider,
            registry,
            otlp,
            metrics,
        })
    }

    /// Whether any reader collects: otherwise gauges need no upkeep.
    pub fn is_enabled(&self) -> bool {
        self.registry.is_some() || self.otlp
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    pub(super) fn meter(&self) -> Meter {
        self.provider.meter("rekey")
    }

    /// The Prometheus exposition, or `None` without a Prometheus reader.
    pub fn prometheus_registry(&self) -> Option<prometheus::Registry> {
        self.registry.clone()
    }

    /// Pushes what is pending over OTLP and stops the readers.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = stopped {
            tracing::debug!(%error, "stopping the metric readers");
        }
    }
}

/// The metrics of `registry` in the Prometheus text format.
pub fn encode(registry: &prometheus::Registry) -> anyhow::Result<String> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .context("encoding metrics")?;
    String::from_utf8(text).context("encoding metrics")
}
