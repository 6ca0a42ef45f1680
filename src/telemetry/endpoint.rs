//! The Prometheus scrape endpoint: plain HTTP `GET /metrics` on its own
//! port (`REKEY_METRICS_LISTEN`), in its own task.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `registry` at `/metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

async fn scrape(State(registry): State<prometheus::Registry>) -> impl IntoResponse {
    match super::metrics::encode(&registry) {
        Ok(text) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "encoding metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
