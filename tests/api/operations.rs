use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_liveness_and_readiness() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "liveness", "readiness", "rekey.v1.PasswordReset"] {
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
            "rekey.v1.PasswordReset",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_gracefully_when_told_to() {
    let mut app = spawn_app(Backend::Sqlite).await;
    app.request_reset("jane@example.com").await.unwrap();

    app.stop().await.unwrap();

    assert!(
        app.request_reset("jane@example.com").await.is_err(),
        "no longer serving"
    );
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
    for _ in 0..100 {
        if readiness(app).await == wanted {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("readiness never became {wanted:?}");
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
    if crate::helpers::postgres_url().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set REKEY_TEST_POSTGRES_URL"
        );
        eprintln!("REKEY_TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    }
    let database_url = crate::helpers::fresh_postgres_database().await;
    let build = || {
        let settings = Settings::from_figment(
            Figment::new()
                .merge(("listen", "127.0.0.1:0"))
                .merge(("database_url", database_url.clone()))
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
    let Some(admin_url) = crate::helpers::postgres_url() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set REKEY_TEST_POSTGRES_URL"
        );
        eprintln!("REKEY_TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
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
