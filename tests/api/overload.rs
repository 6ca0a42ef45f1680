//! Slow work and overload: a deadline cancels a call's work safely, load is
//! shed at once while the database is down or its pool exhausted, and the
//! longest valid address goes through every flow.

use std::time::{Duration, Instant};

use rekey::{
    grpc::pb,
    store::entities::{audit_event, mail_outbox},
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DbBackend, EntityTrait, PaginatorTrait, QueryFilter,
    TransactionTrait,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::{
    flow_test,
    helpers::{
        Backend, PASSWORD, TestApp, assert_error, eventually, eventually_within, spawn_app,
        spawn_app_with,
    },
};

async fn readiness(app: &TestApp) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn wait_for_readiness(app: &TestApp, wanted: ServingStatus) {
    eventually(&format!("readiness {wanted:?}"), || async {
        (readiness(app).await == wanted).then_some(())
    })
    .await;
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"))
}

/// Each rekey RPC once, with a well-formed request; the statuses and how
/// long each took.
async fn every_rpc(app: &TestApp) -> Vec<(tonic::Status, Duration)> {
    let (mut reset, mut accounts) = (app.reset.clone(), app.accounts.clone());
    let email = || "jane@example.com".to_owned();
    let token = || "A".repeat(43);
    let mut results = Vec::new();
    for rpc in 0..5 {
        let started = Instant::now();
        let result = match rpc {
            0 => reset
                .request_reset(pb::RequestResetRequest {
                    email: email(),
                    ..Default::default()
                })
                .await
                .map(drop),
            1 => reset
                .verify_token(pb::VerifyTokenRequest { token: token() })
                .await
                .map(drop),
            2 => reset
                .reset_password(pb::ResetPasswordRequest {
                    token: token(),
                    new_password: PASSWORD.into(),
                })
                .await
                .map(drop),
            3 => reset
                .sign_up(pb::SignUpRequest {
                    email: email(),
                    ..Default::default()
                })
                .await
                .map(drop),
            _ => accounts
                .authenticate(pb::AuthenticateRequest {
                    email: email(),
                    password: PASSWORD.into(),
                    client: None,
                })
                .await
                .map(drop),
        };
        results.push((result.unwrap_err(), started.elapsed()));
    }
    results
}

/// Every rekey RPC answers `UNAVAILABLE` with `RetryInfo` at once.
async fn assert_shed_as_unavailable(app: &TestApp) {
    let mut took = Vec::new();
    for (status, elapsed) in every_rpc(app).await {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(retry_delay(&status) > Duration::ZERO);
        took.push(elapsed);
    }
    took.sort();
    // "At once": far from the pool's 5 s wait, even on a loaded machine.
    assert!(took[2] < Duration::from_millis(100), "{took:?}");
    assert!(took[4] < Duration::from_secs(1), "{took:?}");
}

async fn while_not_ready_calls_are_refused_at_once(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // A migration this binary knows, missing: readiness is NOT_SERVING.
    let newest = "m20261130_000001_widen_email_hint";
    app.db
        .execute_unprepared(&format!(
            "DELETE FROM seaql_migrations WHERE version = '{newest}'"
        ))
        .await
        .unwrap();
    wait_for_readiness(&app, ServingStatus::NotServing).await;
    assert_shed_as_unavailable(&app).await;

    app.db
        .execute_unprepared(&format!(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{newest}', 0)"
        ))
        .await
        .unwrap();
    wait_for_readiness(&app, ServingStatus::Serving).await;
    app.request_reset("jane@example.com").await.unwrap();
}
flow_test!(while_not_ready_calls_are_refused_at_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_database_outage_calls_are_refused_at_once() {
    let Some(admin_url) = crate::helpers::postgres_url().await else {
        return;
    };
    let mut app = spawn_app(Backend::Postgres).await;
    let name = url::Url::parse(&app.database_url).unwrap().path()[1..].to_owned();
    let admin = Database::connect(&admin_url).await.unwrap();
    for statement in [
        format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    ] {
        admin.execute_unprepared(&statement).await.unwrap();
    }
    wait_for_readiness(&app, ServingStatus::NotServing).await;
    assert_shed_as_unavailable(&app).await;

    admin
        .execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    wait_for_readiness(&app, ServingStatus::Serving).await;
    app.request_reset("jane@example.com").await.unwrap();
}

async fn an_exhausted_pool_answers_resource_exhausted_at_once(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| f.merge(("database_pool_size", 1))).await;
    app.request_reset("jane@example.com").await.unwrap();

    // Slow work holds the only connection.
    let held = app.db.begin().await.unwrap();
    let started = Instant::now();
    let status = app.request_reset("jane@example.com").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(retry_delay(&status) > Duration::ZERO);
    // Not the 5 s acquire timeout: a short look for a free connection.
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(
        readiness(&app).await,
        ServingStatus::Serving,
        "busy, not down"
    );

    held.rollback().await.unwrap();
    app.request_reset("jane@example.com").await.unwrap();
}
flow_test!(an_exhausted_pool_answers_resource_exhausted_at_once);

async fn a_call_past_its_deadline_is_cancelled_and_its_hash_slot_comes_back(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("request_timeout", "500ms"))
            // A hash far longer than the deadline (4 GiB of passes: over
            // 1.5 s on a fast host), one at a time, no queue.
            .merge(("argon2_memory_kib", 65_536))
            .merge(("argon2_iterations", 64))
            .merge(("hash_concurrency", 1))
            .merge(("hash_queue_depth", 0))
    })
    .await;
    let hashed = app.hasher.completed();
    let mut accounts = app.accounts.clone();
    let call = tokio::spawn(async move {
        accounts
            .authenticate(pb::AuthenticateRequest {
                email: "nobody@example.com".into(),
                password: "a password long enough".into(),
                client: None,
            })
            .await
    });
    eventually("the hash to start", || async {
        (app.hasher.in_use() == 1).then_some(())
    })
    .await;
    let status = call.await.unwrap().unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, None);

    // The hash goes on after the caller is gone, and keeps its slot until
    // it ends: a second call finds the pool full (unless it already ended).
    let second = app
        .authenticate("nobody@example.com", "a password long enough")
        .await
        .unwrap_err();
    match second.code() {
        Code::ResourceExhausted => assert!(retry_delay(&second) > Duration::ZERO),
        Code::DeadlineExceeded => assert!(app.hasher.completed() > hashed, "{second:?}"),
        _ => panic!("{second:?}"),
    }
    // The hash runs at the lowest priority: slow beside other tests.
    eventually_within(
        Duration::from_secs(60),
        "the hash slot to come back",
        || async { (app.hasher.in_use() == 0).then_some(()) },
    )
    .await;
    assert!(app.hasher.completed() > hashed);
    assert_eq!(readiness(&app).await, ServingStatus::Serving);
}
flow_test!(a_call_past_its_deadline_is_cancelled_and_its_hash_slot_comes_back);

async fn work_cut_off_by_the_deadline_is_rolled_back(backend: Backend) {
    // Room for the mail worker, which the lock blocks too (SQLite: one
    // connection by default), beside the call.
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("request_timeout", "1s"))
            .merge(("database_pool_size", 4))
    })
    .await;
    // Another session holds the lock the call's first write needs.
    let other = Database::connect(&app.database_url).await.unwrap();
    let lock = other.begin().await.unwrap();
    match other.get_database_backend() {
        DbBackend::Sqlite => lock.execute_unprepared("CREATE TABLE held (x INTEGER)"),
        _ => lock.execute_unprepared("LOCK TABLE rate_limits IN ACCESS EXCLUSIVE MODE"),
    }
    .await
    .unwrap();

    let status = app.request_reset("jane@example.com").await.unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, None);
    lock.rollback().await.unwrap();

    // The call's transaction never committed: nothing is queued, and the
    // next call queues exactly one mail job.
    app.request_reset("jane@example.com").await.unwrap();
    app.wait_for_outbox_drained().await;
    let jobs = mail_outbox::Entity::find()
        .filter(mail_outbox::Column::Recipient.eq("jane@example.com"))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}
flow_test!(work_cut_off_by_the_deadline_is_rolled_back);

async fn the_longest_valid_address_goes_through_every_flow(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // 254 characters: one of local part, 252 of domain in labels of at most 63.
    let domain = format!(
        "{}.{}.{}.{}.com",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(56)
    );
    let email = format!("j@{domain}");
    assert_eq!(email.chars().count(), 254);
    let hint = format!("j***@{domain}");

    app.create_account(&email, "Jane").await;
    let before = app.mailbox.to(&email).len();
    app.request_reset(&email).await.unwrap();
    let mail = app
        .mailbox
        .wait_for(&email, before + 1)
        .await
        .remove(before);
    let info = app.verify(&mail.token()).await.unwrap();
    assert_eq!(info.email_hint, hint);
    let status = app
        .authenticate(&email, "not the password")
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    app.authenticate(&email, PASSWORD).await.unwrap();
    app.reset_password(&mail.token(), "another long passphrase")
        .await
        .unwrap();

    let audited = audit_event::Entity::find()
        .filter(audit_event::Column::EmailHint.eq(hint.as_str()))
        .count(&app.db)
        .await
        .unwrap();
    assert!(audited >= 5, "{audited}");
}
flow_test!(the_longest_valid_address_goes_through_every_flow);

/// A saturated hashing pool refuses `Authenticate` and `ResetPassword`
/// before any database work, so a flood of refusals costs no queries.
async fn a_saturated_hash_pool_refuses_before_any_statement(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("hash_concurrency", 1))
            .merge(("hash_queue_depth", 0))
    })
    .await;
    app.create_account("jane@example.com", "Jane").await;
    app.request_reset("jane@example.com").await.unwrap();
    let token = app
        .mailbox
        .wait_for("jane@example.com", 2)
        .await
        .remove(1)
        .token();

    let held = app.hasher.admit().unwrap();
    app.rpc_statements.lock().unwrap().clear();
    let refused = app
        .authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_delay(&refused) > Duration::ZERO);
    let refused = app.reset_password(&token, PASSWORD).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let statements = std::mem::take(&mut *app.rpc_statements.lock().unwrap());
    assert!(statements.is_empty(), "{statements:?}");

    drop(held);
    app.authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap();
    let statements = std::mem::take(&mut *app.rpc_statements.lock().unwrap());
    assert!(!statements.is_empty(), "the statements are observed");
}
flow_test!(a_saturated_hash_pool_refuses_before_any_statement);
