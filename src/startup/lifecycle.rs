//! A running server's lifecycle: readiness kept in step with the database,
//! the plaintext health port, and the delay between not-ready and stopping.

use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    grpc::{
        self, TransportLimits,
        incoming::{self, Accept},
    },
    service::Readiness,
    store,
    telemetry::gauges::ReadyGauge,
};

use super::READY_SERVICES;

/// Serves `grpc.health.v1` alone, in plaintext: Kubernetes' `grpc:` probes
/// cannot speak TLS. The same transport limits apply.
pub(super) async fn serve_health(
    listener: TcpListener,
    health: HealthServer<HealthService>,
    transport: TransportLimits,
    observe: grpc::ObserveLayer,
    shutdown: CancellationToken,
) {
    let accept = Accept {
        tls: None,
        handshake_timeout: Duration::ZERO,
        idle_timeout: transport.connection_idle_timeout,
    };
    let incoming = incoming::accept(listener, accept, shutdown.clone());
    let served = grpc::server(&transport, observe)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the health port stopped");
    }
}

/// Publishes readiness to every ready service and the readiness gauge.
pub(super) async fn set_ready(reporter: &HealthReporter, gauge: &ReadyGauge, ready: bool) {
    gauge.set(ready);
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in READY_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Cancels `stop_serving` `delay` after `shutdown`: in between, readiness
/// says not serving while calls are still answered.
pub(super) async fn stop_serving_after_delay(
    shutdown: CancellationToken,
    stop_serving: CancellationToken,
    delay: Duration,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop_serving.cancelled() => return,
    }
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "shutting down: not ready; still serving while endpoints are removed"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop_serving.cancelled() => {}
        }
    }
    stop_serving.cancel();
}

/// Keeps readiness in step with the database until shutdown, then reports
/// not serving so load balancers drain this replica. A pool whose every
/// connection is in use is busy, not down: the check, which would wait out
/// the pool, is skipped then.
pub(super) async fn watch_readiness(
    reporter: HealthReporter,
    gauge: ReadyGauge,
    readiness: Readiness,
    db: DatabaseConnection,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut was_ready = None;
    loop {
        let ready = match was_ready {
            Some(ready) if store::pool_exhausted(&db) => ready,
            _ => store::is_ready(&db).await,
        };
        readiness.set(ready);
        if was_ready != Some(ready) {
            if ready {
                tracing::info!("database reachable; ready");
            } else {
                tracing::warn!("database unreachable or migrations pending; not ready");
            }
            set_ready(&reporter, &gauge, ready).await;
            was_ready = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    set_ready(&reporter, &gauge, false).await;
    reporter
        .set_service_status("liveness", ServingStatus::NotServing)
        .await;
}
