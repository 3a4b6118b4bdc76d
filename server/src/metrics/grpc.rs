//! Requests in flight and errors by gRPC code, counted around a whole gRPC service.
//!
//! [`Observed`] wraps the service at the HTTP level, so no method can forget to count: a request is
//! in flight from its call until its response body ends or is dropped (a download stream until
//! its last chunk), and its gRPC status is read where gRPC puts it, in the response headers (an
//! error before any message: "trailers-only") or in the trailers (the end of a stream).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::Metrics;

/// A gRPC service whose requests are counted in [`Metrics`].
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Observed<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for Observed<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let in_flight = InFlight::enter(self.metrics.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                in_flight.metrics.record_error(code);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(ObservedBody {
                    inner: body,
                    in_flight: Some(in_flight),
                })
            }))
        })
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// One request counted in `requests_in_flight` until dropped.
struct InFlight {
    metrics: Arc<Metrics>,
}

impl InFlight {
    fn enter(metrics: Arc<Metrics>) -> Self {
        metrics.requests_in_flight.inc();
        Self { metrics }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}

/// A response body that reads the status in its trailers and ends its request's time in flight.
struct ObservedBody {
    inner: tonic::body::Body,
    in_flight: Option<InFlight>,
}

impl Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(in_flight)) = (frame.trailers_ref(), &self.in_flight)
                    && let Some(code) = grpc_status(trailers)
                {
                    in_flight.metrics.record_error(code);
                }
            }
            Poll::Ready(_) => self.in_flight = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
