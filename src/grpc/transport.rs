//! The transport's limits in one place: the HTTP/2 server settings, and a
//! tower layer in front of every service that checks each request's
//! framing ([`frames`](super::frames)) and bounds each call in time.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use prost::Message as _;
use tokio::time::Instant;
use tonic::{Status, body::Body, transport::Server};
use tower::{Layer, Service, layer::util::Identity, layer::util::Stack};

use super::{
    ObserveLayer,
    frames::{CheckedBody, Expect, Refusal, ReportedBody, Validator},
};

/// Largest header block a client may send; hyper's default, stated.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// How much a connection and a call may take.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// The largest request message, in bytes; a larger one is refused
    /// from its length prefix.
    pub max_message_size: usize,
    /// Every call ends by then (or by the client's shorter `grpc-timeout`).
    pub request_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub connection_idle_timeout: Duration,
    /// HTTP/2 streams (calls) open at once per connection.
    pub max_concurrent_streams: u32,
    /// Ping a connection that has been quiet this long ...
    pub keepalive_interval: Duration,
    /// ... and close it when the ping is not answered within this.
    pub keepalive_timeout: Duration,
}

/// A server with the HTTP/2 limits set, [`ObserveLayer`] outermost (so it
/// sees every refusal), then [`TransportLayer`].
pub fn server(
    limits: &TransportLimits,
    observe: ObserveLayer,
) -> Server<Stack<TransportLayer, Stack<ObserveLayer, Identity>>> {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .layer(observe)
        .layer(TransportLayer { limits: *limits })
}

/// Checks each request's framing and bounds each call in time.
#[derive(Debug, Clone)]
pub struct TransportLayer {
    limits: TransportLimits,
}

impl<S> Layer<S> for TransportLayer {
    type Service = Transport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Transport {
            inner,
            limits: self.limits,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transport<S> {
    inner: S,
    limits: TransportLimits,
}

impl<S> Service<http::Request<Body>> for Transport<S>
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
        // Taken now, before tonic's own `grpc-timeout` timer (which would
        // answer CANCELLED), so this one fires first.
        let timeout = grpc_timeout(request.headers()).map_or(self.limits.request_timeout, |t| {
            t.min(self.limits.request_timeout)
        });
        let deadline = Instant::now() + timeout;
        let path = request.uri().path().to_owned();
        let (validator, may_be_empty) = foreign_messages(&path);
        let expect = Expect {
            max_message: self.limits.max_message_size,
            compressed: request.headers().contains_key("grpc-encoding"),
            may_be_empty,
            validator,
        };
        let refusal = Refusal::default();
        let request =
            request.map(|body| Body::new(CheckedBody::new(body, expect, refusal.clone())));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                // A client stream is read after the response has begun.
                Ok(Ok(response)) if may_be_empty => {
                    Ok(response.map(|body| Body::new(ReportedBody::new(body, refusal))))
                }
                Ok(response) => response,
                Err(_) => {
                    // Dropping the call cancels its work: an open transaction
                    // rolls back, a running hash finishes and frees its slot.
                    tracing::info!(method = %path, ?timeout, "deadline exceeded; call cancelled");
                    Ok(Status::deadline_exceeded(format!(
                        "the call did not finish within its deadline of {timeout:?}"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// For services whose generated code is not ours (tonic's health and
/// reflection), the message check that rekey's codec does for its own, and
/// whether the call may carry no message at all (client streaming).
fn foreign_messages(path: &str) -> (Option<Validator>, bool) {
    fn health(bytes: &[u8]) -> Result<(), prost::DecodeError> {
        tonic_health::pb::HealthCheckRequest::decode(bytes).map(drop)
    }
    fn reflection_v1(bytes: &[u8]) -> Result<(), prost::DecodeError> {
        tonic_reflection::pb::v1::ServerReflectionRequest::decode(bytes).map(drop)
    }
    fn reflection_v1alpha(bytes: &[u8]) -> Result<(), prost::DecodeError> {
        tonic_reflection::pb::v1alpha::ServerReflectionRequest::decode(bytes).map(drop)
    }
    let service = path.rsplit_once('/').map_or(path, |(service, _)| service);
    match service {
        "/grpc.health.v1.Health" => (Some(health), false),
        "/grpc.reflection.v1.ServerReflection" => (Some(reflection_v1), true),
        "/grpc.reflection.v1alpha.ServerReflection" => (Some(reflection_v1alpha), true),
        _ => (None, false),
    }
}

/// The client's deadline: `grpc-timeout` is at most 8 digits and a unit.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_foreign_services_are_validated_here() {
        assert!(foreign_messages("/grpc.health.v1.Health/Check").0.is_some());
        assert!(foreign_messages("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").1);
        let (validator, may_be_empty) = foreign_messages("/rekey.v1.PasswordReset/SignUp");
        assert!(validator.is_none() && !may_be_empty);
    }
}
