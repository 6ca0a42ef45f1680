//! Telemetry of every call in one place, the outermost tower layer: a
//! server span with the RPC semantic conventions, its parent taken from
//! `traceparent` metadata, and `rpc.server.duration` by service, method and
//! status code. The code is read from a trailers-only response's headers or
//! from the trailers at the end of the body; a call whose response is
//! dropped before that was cancelled.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message as _;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

use crate::telemetry::{metrics::Metrics, traces};

/// The method label of calls to a method that does not exist, so that
/// callers cannot grow the label set.
const OTHER: &str = "_OTHER";

/// The service and method of `path` when the server serves it; a call to
/// any other path is refused before it is routed (e.g. for want of a key)
/// or answered `UNIMPLEMENTED`, and is labelled [`OTHER`]. (The unit test
/// names a method of each descriptor set, so one that stopped decoding
/// would fail it.)
fn served_method(path: &str) -> Option<(&str, &str)> {
    static SERVED: LazyLock<HashSet<String>> = LazyLock::new(|| {
        [
            super::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .filter_map(|encoded| prost_types::FileDescriptorSet::decode(encoded).ok())
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package.unwrap_or_default();
            file.service.into_iter().flat_map(move |service| {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                service.method.into_iter().map(move |method| {
                    format!("/{service_name}/{}", method.name.unwrap_or_default())
                })
            })
        })
        .collect()
    });
    if !SERVED.contains(path) {
        return None;
    }
    path.strip_prefix('/')?.split_once('/')
}

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<http::Request<Body>> for Observe<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = served_method(path).unwrap_or((OTHER, OTHER));
        // Probes would flood traces; they are counted, not traced.
        let span = if service == "grpc.health.v1.Health" {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "grpc.server",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
            )
        };
        if let Some(parent) = traces::remote_parent(request.headers()) {
            traces::set_remote_parent(&span, parent);
        }
        let call = Call {
            metrics: self.metrics.clone(),
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            span: span.clone(),
            finished: false,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Spans the inner layers open at call time are children of this one.
        let response = span.in_scope(|| inner.call(request)).instrument(span);
        Box::pin(async move {
            let mut call = call;
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    call.finish(Code::Unknown);
                    return Err(error);
                }
            };
            if let Some(code) = status_code(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// A call in flight, recorded once when its status is known.
struct Call {
    metrics: Metrics,
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        // On the health port the rekey services are routed nowhere.
        let (service, method) = if code == Code::Unimplemented {
            (OTHER, OTHER)
        } else {
            (self.service.as_str(), self.method.as_str())
        };
        let code = code as i32;
        self.metrics
            .rpc_served(service, method, code, self.started.elapsed());
        // Recording re-formats the span's fields for the log layer, which
        // never shows them again after the call's last event.
        if traces::exporting() {
            self.span.record("rpc.grpc.status_code", code);
            if is_server_error(code) {
                self.span.record("otel.status_code", "ERROR");
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response was dropped before its status: the client went away.
        self.finish(Code::Cancelled);
    }
}

/// Codes the semantic conventions count as server errors.
fn is_server_error(code: i32) -> bool {
    [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The response body, which records the call when its trailers pass.
struct ObservedBody {
    inner: Body,
    call: Option<Call>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(status_code),
            Some(Err(status)) => Some(Some(status.code())),
            None => Some(None),
        };
        if let Some(code) = code
            && let Some(mut call) = self.call.take()
        {
            // A body that ends without a status broke the protocol.
            call.finish(code.unwrap_or(Code::Unknown));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_read_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status_code(&headers), Some(Code::NotFound));
        assert!(is_server_error(Code::Internal as i32));
        assert!(!is_server_error(Code::NotFound as i32));
    }

    #[test]
    fn only_served_methods_get_a_label_of_their_own() {
        assert_eq!(
            served_method("/rekey.v1.PasswordReset/RequestReset"),
            Some(("rekey.v1.PasswordReset", "RequestReset"))
        );
        assert_eq!(
            served_method("/rekey.v1.Admin/GetStats"),
            Some(("rekey.v1.Admin", "GetStats"))
        );
        assert_eq!(
            served_method("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(
            served_method("/grpc.health.v1.Health/Watch"),
            Some(("grpc.health.v1.Health", "Watch"))
        );
        assert_eq!(
            served_method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some((
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo"
            ))
        );
        assert_eq!(
            served_method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some((
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo"
            ))
        );
        for made_up in [
            "/rekey.v1.PasswordReset/Anything-1234",
            "/rekey.v1.Nothing/RequestReset",
            "/",
            "",
        ] {
            assert_eq!(served_method(made_up), None, "{made_up:?}");
        }
    }
}
