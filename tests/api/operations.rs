use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_liveness_and_readiness() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "liveness",
        "readiness",
        "rekey.v1.PasswordReset",
        "rekey.v1.Accounts",
        "rekey.v1.Admin",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app(Backend::Sqlite).await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "rekey.v1.Accounts",
            "rekey.v1.Admin",
            "rekey.v1.PasswordReset",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_the_call_in_flight_then_refuses_new_ones() {
    use rekey::{config::Settings, startup::App};

    // The server gets a runtime of its own, shut down as soon as
    // `run_until_stopped` returns, as a process exits after `main`: a call
    // it did not wait for is cut off. A costly hash keeps one in flight.
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_figment(
        figment::Figment::new()
            .merge(("listen", "127.0.0.1:0"))
            .merge((
                "database_url",
                format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display()),
            ))
            .merge(("mail_dir", dir.path().join("mail").display().to_string()))
            .merge(("reset_url", crate::helpers::RESET_PAGE))
            .merge(("argon2_memory_kib", 65_536))
            .merge(("argon2_iterations", 8))
            .merge(("shutdown_delay", "0s")),
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (started, built) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let stopped = runtime.block_on(async move {
            let app = App::build(settings).await.unwrap();
            let _ = started.send((app.local_addr().unwrap(), app.hasher().clone()));
            app.run_until_stopped(stop).await
        });
        runtime.shutdown_background();
        stopped
    });
    let (addr, hasher) = built.await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut accounts = rekey::grpc::pb::accounts_client::AccountsClient::new(channel.clone());
    let in_flight = tokio::spawn(async move {
        accounts
            .authenticate(rekey::grpc::pb::AuthenticateRequest {
                email: "nobody@example.com".into(),
                password: "whatever the password".into(),
                client: None,
            })
            .await
    });
    crate::helpers::eventually("the call to reach the hashing pool", || async {
        (hasher.in_use() > 0).then_some(())
    })
    .await;

    shutdown.cancel();
    let stopped = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    stopped.unwrap();

    // A complete answer, not a connection cut mid-call.
    let status = in_flight.await.unwrap().unwrap_err();
    crate::helpers::assert_error(
        &status,
        tonic::Code::Unauthenticated,
        Some("INVALID_CREDENTIALS"),
    );
    let mut reset = rekey::grpc::pb::password_reset_client::PasswordResetClient::new(channel);
    let refused = reset
        .request_reset(rekey::grpc::pb::RequestResetRequest {
            email: "jane@example.com".into(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "no longer serving");
}

async fn readiness(app: &crate::helpers::TestApp) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn wait_for_readiness(app: &crate::helpers::TestApp, wanted: ServingStatus) {
    let what = format!("readiness to become {wanted:?}");
    crate::helpers::eventually(&what, || async {
        (readiness(app).await == wanted).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_pending_migrations_but_ignores_newer_ones() {
    use sea_orm::ConnectionTrait;
    let app = spawn_app(Backend::Sqlite).await;
    wait_for_readiness(&app, ServingStatus::Serving).await;

    // A newer release's migration, applied by a newer replica: still ready.
    app.db
        .execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_future', 0)",
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(readiness(&app).await, ServingStatus::Serving);

    // One of our own migrations missing: not ready.
    app.db
        .execute_unprepared("DELETE FROM seaql_migrations WHERE version LIKE 'm20261122%'")
        .await
        .unwrap();
    wait_for_readiness(&app, ServingStatus::NotServing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_block_shutdown_past_the_grace() {
    let mut app =
        crate::helpers::spawn_app_with(Backend::Sqlite, |f| f.merge(("shutdown_grace", "1s")))
            .await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let started = std::time::Instant::now();
    app.stop().await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_an_empty_postgres_database_both_migrate() {
    use figment::Figment;
    use rekey::{config::Settings, startup::App};
    if crate::helpers::postgres_url().await.is_none() {
        return;
    }
    let database = crate::helpers::fresh_postgres_database().await;
    let build = || {
        let settings = Settings::from_figment(
            Figment::new()
                .merge(("listen", "127.0.0.1:0"))
                .merge(("database_url", database.url.clone()))
                .merge(("reset_url", crate::helpers::RESET_PAGE))
                .merge(("argon2_memory_kib", 1024))
                .merge(("argon2_iterations", 1)),
        )
        .unwrap();
        App::build(settings)
    };
    let (first, second) = tokio::join!(build(), build());
    first.unwrap();
    second.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_unavailable_and_not_ready_until_it_ends() {
    use sea_orm::{ConnectionTrait, Database};
    use tonic_types::StatusExt;
    let Some(admin_url) = crate::helpers::postgres_url().await else {
        return;
    };
    let mut app = spawn_app(Backend::Postgres).await;
    wait_for_readiness(&app, ServingStatus::Serving).await;
    let name = url::Url::parse(&app.database_url).unwrap().path()[1..].to_owned();
    let admin = Database::connect(&admin_url).await.unwrap();

    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
        ))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();

    let status = app.request_reset("jane@example.com").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.get_error_details().retry_info().is_some());
    assert!(!status.message().contains(&name), "no internal detail");
    wait_for_readiness(&app, ServingStatus::NotServing).await;

    admin
        .execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    wait_for_readiness(&app, ServingStatus::Serving).await;
    app.request_reset("jane@example.com").await.unwrap();
}

/// On SIGTERM readiness turns NOT_SERVING at once, calls are still answered
/// for `REKEY_SHUTDOWN_DELAY` (so endpoints are removed first), then the
/// server drains and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_not_ready_first_and_keeps_serving_for_the_delay() {
    let mut app = spawn_app_with(Backend::Sqlite, |f| f.merge(("shutdown_delay", "3s"))).await;
    let mut health = HealthClient::new(app.channel.clone());
    let readiness = || HealthCheckRequest {
        service: "readiness".into(),
    };
    app.shutdown.cancel();
    let started = std::time::Instant::now();
    crate::helpers::eventually("readiness NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health.check(readiness()).await.ok()?.into_inner().status();
            (status == ServingStatus::NotServing).then_some(())
        }
    })
    .await;
    // Still serving: a call made now is answered.
    app.request_reset("jane@example.com").await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    let server = app.server.take().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    assert!(health.check(readiness()).await.is_err(), "stopped serving");
}

/// With `REKEY_MIGRATE_ON_START=false` (a migration Job runs `rekey migrate`)
/// a replica on an unmigrated database starts but is not ready until the
/// migrations are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_start_readiness_waits_for_the_migrations() {
    let app = spawn_app_with(Backend::Sqlite, |f| f.merge(("migrate_on_start", false))).await;
    let mut health = HealthClient::new(app.channel.clone());
    let readiness = || HealthCheckRequest {
        service: "readiness".into(),
    };
    let status = health
        .check(readiness())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::NotServing);

    rekey::store::migrate(&app.db).await.unwrap();
    crate::helpers::eventually("readiness SERVING once migrated", || {
        let mut health = health.clone();
        async move {
            let status = health.check(readiness()).await.ok()?.into_inner().status();
            (status == ServingStatus::Serving).then_some(())
        }
    })
    .await;
}
