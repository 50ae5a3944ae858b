//! `GET /metrics` over HTTP/1.1, in the Prometheus text format (0.0.4).
//!
//! It has no authentication: bind it to loopback or a private address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::live::{LiveCollector, LiveFigures};
use super::ExecutionMetrics;
use crate::request_counts::RequestCounts;

/// Scrape connections served at once; more wait to be accepted.
pub const MAX_SCRAPE_CONNECTIONS: usize = 8;

/// How long a scraper may take to send its request headers before its
/// connection is closed.
pub const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics of one daemon, ready to be served.
pub struct MetricsEndpoint {
    registry: Registry,
}

impl MetricsEndpoint {
    /// The endpoint for the daemon whose figures are `figures`, whose
    /// execution runs record into `executions` and whose service counts
    /// `requests`.
    pub fn new(
        figures: Arc<dyn LiveFigures>,
        executions: &ExecutionMetrics,
        requests: RequestCounts,
    ) -> Self {
        let mut registry = Registry::default();
        executions.register(&mut registry);
        registry.register_collector(Box::new(LiveCollector { figures, requests }));
        MetricsEndpoint { registry }
    }

    /// The metrics now, in the Prometheus text format.
    pub fn scrape(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Serves `GET /metrics` on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let endpoint = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: try again soon.
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = endpoint.respond(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
                drop(slot);
            });
        }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<String> {
        let reply = |status: StatusCode, body: String| {
            let mut response = Response::new(body);
            *response.status_mut() = status;
            response
        };
        if request.uri().path() != "/metrics" {
            return reply(
                StatusCode::NOT_FOUND,
                format!(
                    "no {:?} here: metrics are at /metrics\n",
                    request.uri().path()
                ),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed: use GET\n", request.method()),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = reply(StatusCode::OK, self.scrape());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
        );
        response
    }
}
