//! Load shedding in one place: a tower layer that asks
//! [`Admission`] before any rekey call starts. Health and reflection do not
//! touch the database and always answer.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};

use super::to_status;
use crate::{service::Admission, telemetry::load::CallsInFlight};

/// Wraps services with [`Admission::admit`], counting their calls in flight.
#[derive(Clone)]
pub struct SheddingLayer {
    admission: Arc<Admission>,
    calls: CallsInFlight,
}

impl SheddingLayer {
    /// Counts each call it sees into `calls` until the call ends.
    pub fn new(admission: Admission, calls: CallsInFlight) -> Self {
        Self {
            admission: Arc::new(admission),
            calls,
        }
    }
}

impl<S> Layer<S> for SheddingLayer {
    type Service = Shedding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shedding {
            inner,
            admission: self.admission.clone(),
            calls: self.calls.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shedding<S> {
    inner: S,
    admission: Arc<Admission>,
    calls: CallsInFlight,
}

impl<S> Service<http::Request<Body>> for Shedding<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with("/grpc.") {
            return Box::pin(inner.call(request));
        }
        let admission = self.admission.clone();
        let calls = self.calls.clone();
        Box::pin(async move {
            let _in_flight = calls.enter();
            match admission.admit().await {
                Ok(()) => inner.call(request).await,
                Err(refusal) => Ok(to_status(refusal).into_http()),
            }
        })
    }
}
