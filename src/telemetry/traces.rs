//! Span export over OTLP (gRPC) through `tracing-opentelemetry`, configured
//! by the standard `OTEL_*` variables (endpoint, headers, timeout, sampler,
//! service name). W3C trace context joins a call to its caller
//! (`traceparent` metadata) and a mail job to the call that queued it
//! (the outbox row's `trace_context`). With no endpoint set, no layer is
//! installed: spans stay local and cost what plain `tracing` costs.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header carrying a trace context.
const TRACEPARENT: &str = "traceparent";

/// Set once [`init`](super::init) has installed the export layer.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when spans leave the process. Fields recorded on a span after its
/// last event reach no log line, only an exported span.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The tracer provider exporting to the OTLP endpoint.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// A batching OTLP exporter when an endpoint is set, else `None`.
    /// Call inside the tokio runtime: the gRPC client lives on it.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        if !super::otlp_requested("TRACES") {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("setting up the OTLP span exporter")?;
        // The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the default is
        // parent-based, always on.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(super::resource())
            .build();
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("rekey"))
    }

    /// Exports the spans still buffered, then stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // Blocks until the export thread is done; keep it off the runtime.
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = stopped {
            tracing::warn!(%error, "flushing spans at shutdown");
        }
    }
}

/// The caller's trace context from `traceparent` (and `tracestate`)
/// metadata; `None` when absent or malformed.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<Context> {
    headers.get(TRACEPARENT)?;
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `parent` the parent of `span`; a no-op without trace export.
pub fn set_remote_parent(span: &tracing::Span, parent: Context) {
    // Fails only when no OpenTelemetry layer is installed: nothing to join.
    let _ = span.set_parent(parent);
}

/// The current span's `traceparent`, kept with a queued mail; `None` when
/// spans are not exported.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Links `span` (a mail job's) to the span whose `traceparent` queued it.
pub fn link_to_origin(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let origin = TraceContextPropagator::new().extract(&carrier);
    span.add_link(origin.span().span_context().clone());
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_becomes_the_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let parent = remote_parent(&headers).unwrap();
        assert_eq!(
            parent.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        assert!(remote_parent(&headers).is_none());
    }

    #[test]
    fn without_export_nothing_is_stored() {
        assert_eq!(current_traceparent(), None);
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn the_remote_parent_is_the_spans_parent() {
        let provider = SdkTracerProvider::builder().build();
        let export = TraceExport { provider };
        let subscriber = tracing_subscriber::registry().with(export.layer());
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            let span = tracing::info_span!("server");
            set_remote_parent(&span, remote_parent(&headers).unwrap());
            let trace_id = span.context().span().span_context().trace_id();
            assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let _entered = span.enter();
            let queued = current_traceparent().unwrap();
            assert!(
                queued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{queued}"
            );
        });
    }
}
