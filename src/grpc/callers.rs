//! Caller authentication in one place: a tower layer in front of every
//! service. It names the caller (API key or client certificate CN) on the
//! request, and on the span every log line of the call carries.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use super::{incoming::PeerInfo, to_status};
use crate::{
    security::callers::{Caller, Callers},
    service::ServiceError,
};

/// Wraps services with [`Callers::authorize`].
#[derive(Clone)]
pub struct CallerLayer {
    callers: Arc<Callers>,
}

impl CallerLayer {
    pub fn new(callers: Callers) -> Self {
        Self {
            callers: Arc::new(callers),
        }
    }
}

impl<S> Layer<S> for CallerLayer {
    type Service = CallerCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerCheck {
            inner,
            callers: self.callers.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallerCheck<S> {
    inner: S,
    callers: Arc<Callers>,
}

impl<S> Service<http::Request<Body>> for CallerCheck<S>
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

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        let certificate_cn = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.certificate_cn.as_deref());
        let path = request.uri().path().to_owned();
        let decision = self.callers.authorize(&path, bearer, certificate_cn);
        let caller = match decision {
            Ok(caller) => caller,
            Err(refusal) => {
                tracing::info!(method = %path, ?refusal, "call refused");
                let status = to_status(ServiceError::Caller(refusal));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let span = tracing::info_span!(
            "rpc",
            method = %path,
            caller = caller.as_ref().map_or("", |c| c.name.as_str()),
        );
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request).instrument(span))
    }
}

/// The credentials of an `authorization: Bearer …` header; the scheme's
/// name is case-insensitive, as HTTP's are.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, credentials) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// The authenticated caller's name, for audit events.
pub fn caller_name<T>(request: &tonic::Request<T>) -> Option<String> {
    request.extensions().get::<Caller>().map(|c| c.name.clone())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for header in ["Bearer k3y", "bearer k3y", "BEARER  k3y ", " Bearer k3y"] {
            assert_eq!(bearer_token(header), Some("k3y"), "{header:?}");
        }
        for header in ["Basic k3y", "Bearerk3y", "k3y", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}
