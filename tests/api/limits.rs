//! Rate limits: kept in the database, shared by replicas, the same outcome
//! for known and unknown accounts, and password guessing throttled before
//! any hash is spent.

use std::time::Duration;

use rekey::domain::Clock;
use rekey::{
    grpc::pb,
    store::{AuditKind, MailKind, MailStatus, entities::audit_event, entities::mail_outbox},
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tonic_types::StatusExt;

use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, TestApp, assert_error, eventually, spawn_app_with},
};

/// Asserts `RESOURCE_EXHAUSTED` naming `setting` in its `QuotaFailure`, and
/// returns the `RetryInfo` delay.
fn assert_rate_limited(status: &tonic::Status, setting: &str) -> Duration {
    assert_error(status, tonic::Code::ResourceExhausted, Some("RATE_LIMITED"));
    let details = status.get_error_details();
    let quota = details
        .quota_failure()
        .unwrap_or_else(|| panic!("no QuotaFailure in {status:?}"));
    assert_eq!(quota.violations.len(), 1, "{status:?}");
    assert_eq!(quota.violations[0].subject, setting);
    details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"))
}

fn with_client(ip: &str) -> Option<pb::ClientContext> {
    Some(pb::ClientContext {
        ip: ip.into(),
        user_agent: "tests".into(),
    })
}

async fn rate_limited_audits(app: &TestApp) -> u64 {
    audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::RateLimited))
        .count(&app.db)
        .await
        .unwrap()
}

async fn the_per_email_limit_answers_alike_for_known_and_unknown_addresses(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("rate_limit_per_email", "3/15m"))
            .merge(("rate_limit_per_ip", "off"))
    })
    .await;
    app.create_account("jane@example.com", "Jane").await;
    let mails_before = app.mailbox.to("jane@example.com").len();

    let mut refusals = Vec::new();
    for email in ["jane@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            app.request_reset(email).await.unwrap();
        }
        // Case and spaces do not make a new key.
        let refused = app
            .request_reset(&format!(" {} ", email.to_uppercase()))
            .await
            .unwrap_err();
        refusals.push(refused);
    }
    let delays: Vec<Duration> = refusals
        .iter()
        .map(|s| assert_rate_limited(s, "REKEY_RATE_LIMIT_PER_EMAIL"))
        .collect();
    assert_eq!(refusals[0].message(), refusals[1].message());
    // GCRA over 3/15m: one slot frees every 5 minutes.
    for delay in &delays {
        assert!(
            *delay > Duration::from_secs(240) && *delay <= Duration::from_secs(300),
            "{delay:?}"
        );
    }
    assert_eq!(rate_limited_audits(&app).await, 2);

    // The limit is per purpose: signing up the unknown address still works.
    app.sign_up("nobody@example.com", "Nobody").await.unwrap();

    // Three reset mails for Jane, none for the refused call.
    let jane = app
        .mailbox
        .wait_for("jane@example.com", mails_before + 3)
        .await;
    app.wait_for_outbox_drained().await;
    let resets = mail_outbox::Entity::find()
        .filter(mail_outbox::Column::Kind.eq(MailKind::Reset))
        .count(&app.db)
        .await
        .unwrap();
    // Three per address (an unknown one queues its look-alike job too); the
    // refused calls queued nothing.
    assert_eq!(resets, 6);
    assert_eq!(app.mailbox.to("jane@example.com").len(), jane.len());

    // Once the slot frees, the address may ask again.
    app.clock.advance(delays[0]);
    app.request_reset("jane@example.com").await.unwrap();
    let again = app.request_reset("jane@example.com").await.unwrap_err();
    assert_rate_limited(&again, "REKEY_RATE_LIMIT_PER_EMAIL");
}
flow_test!(the_per_email_limit_answers_alike_for_known_and_unknown_addresses);

async fn the_per_ip_limit_counts_the_client_ip_the_caller_gives(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("rate_limit_per_email", "off"))
            .merge(("rate_limit_per_ip", "2/5m"))
    })
    .await;
    let request = |email: &str, ip: &str| pb::RequestResetRequest {
        email: email.into(),
        client: with_client(ip),
        ..Default::default()
    };
    app.reset
        .request_reset(request("a@example.com", "203.0.113.7"))
        .await
        .unwrap();
    app.reset
        .sign_up(pb::SignUpRequest {
            email: "b@example.com".into(),
            display_name: "B".into(),
            client: with_client("203.0.113.7"),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = app
        .reset
        .request_reset(request("c@example.com", "203.0.113.7"))
        .await
        .unwrap_err();
    assert_rate_limited(&refused, "REKEY_RATE_LIMIT_PER_IP");

    // Another client, or a call without a client IP, is not in that bucket.
    app.reset
        .request_reset(request("c@example.com", "203.0.113.8"))
        .await
        .unwrap();
    app.request_reset("c@example.com").await.unwrap();
    // A forwarding header is not a client IP.
    let mut forged = tonic::Request::new(request("d@example.com", "203.0.113.7"));
    forged
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
    let still_refused = app.reset.request_reset(forged).await.unwrap_err();
    assert_rate_limited(&still_refused, "REKEY_RATE_LIMIT_PER_IP");

    let audited = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::RateLimited))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(audited.len(), 2);
    assert!(
        audited
            .iter()
            .all(|e| e.ip.as_deref() == Some("203.0.113.7"))
    );
}
flow_test!(the_per_ip_limit_counts_the_client_ip_the_caller_gives);

/// Replicas race for the same slots on one PostgreSQL: exactly the limit
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_limit_exactly() {
    if crate::helpers::postgres_url().await.is_none() {
        return;
    }
    let app = spawn_app_with(Backend::Postgres, |f| {
        f.merge(("rate_limit_per_email", "5/1h"))
    })
    .await;
    let replica = app.spawn_replica().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut client = if i % 2 == 0 {
            app.reset.clone()
        } else {
            replica.reset.clone()
        };
        calls.push(tokio::spawn(async move {
            client
                .request_reset(pb::RequestResetRequest {
                    email: "race@example.com".into(),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut accepted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_rate_limited(&status, "REKEY_RATE_LIMIT_PER_EMAIL");
            }
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(rate_limited_audits(&app).await, 11);
}

async fn password_guessing_is_throttled_before_any_hash(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| f.merge(("auth_failure_limit", "3/15m"))).await;
    app.create_account("jane@example.com", "Jane").await;
    app.create_account("joe@example.com", "Joe").await;

    for email in ["jane@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            let wrong = app
                .authenticate(email, "wrong password!")
                .await
                .unwrap_err();
            assert_error(
                &wrong,
                tonic::Code::Unauthenticated,
                Some("INVALID_CREDENTIALS"),
            );
        }
    }
    // Another account's success resets nobody's counter.
    app.authenticate("joe@example.com", PASSWORD).await.unwrap();

    let hashes_before = app.hasher.completed();
    let mut refusals = Vec::new();
    for email in ["jane@example.com", "nobody@example.com"] {
        // Even the right password is refused while the limit holds.
        refusals.push(app.authenticate(email, PASSWORD).await.unwrap_err());
    }
    assert_eq!(app.hasher.completed(), hashes_before, "no hash was spent");
    for refused in &refusals {
        let delay = assert_rate_limited(refused, "REKEY_AUTH_FAILURE_LIMIT");
        assert!(delay <= Duration::from_secs(300), "{delay:?}");
    }
    assert_eq!(refusals[0].message(), refusals[1].message());
    assert_eq!(rate_limited_audits(&app).await, 2);

    // Joe is unaffected; Jane may try again once a slot frees.
    app.authenticate("joe@example.com", PASSWORD).await.unwrap();
    app.clock.advance(Duration::from_secs(301));
    app.authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap();
}
flow_test!(password_guessing_is_throttled_before_any_hash);

async fn the_global_mail_limit_holds_mail_back_without_dropping_it(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| f.merge(("rate_limit_mail_global", "2/1h"))).await;
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        app.sign_up(email, "Someone").await.unwrap();
    }
    eventually("two mails sent", || {
        let sent = app.mailbox.all().len();
        async move { (sent >= 2).then_some(()) }
    })
    .await;
    let pending = eventually("the third mail postponed", || {
        let (db, clock) = (app.db.clone(), app.clock.clone());
        async move {
            let rows = mail_outbox::Entity::find().all(&db).await.unwrap();
            let pending: Vec<_> = rows
                .into_iter()
                .filter(|r| r.status == MailStatus::Pending && r.attempts == 0)
                .collect();
            (pending.len() == 1 && pending[0].next_attempt_at > clock.now_millis())
                .then_some(pending)
        }
    })
    .await;
    assert_eq!(app.mailbox.all().len(), 2, "the limit held");
    assert_eq!(pending.len(), 1);

    // A slot frees after 30 minutes: the held mail goes out, not lost.
    app.clock.advance(Duration::from_secs(31 * 60));
    eventually("the held mail sent", || {
        let sent = app.mailbox.all().len();
        async move { (sent == 3).then_some(()) }
    })
    .await;
}
flow_test!(the_global_mail_limit_holds_mail_back_without_dropping_it);

/// Calls batched into one group commit: those over the limit leave neither
/// a job nor an audit row, the others leave exactly one of each.
async fn concurrent_calls_over_the_limit_write_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |f| {
        f.merge(("rate_limit_per_email", "3/15m"))
            .merge(("rate_limit_per_ip", "off"))
    })
    .await;
    let calls = (0..8).map(|_| {
        let mut reset = app.reset.clone();
        async move {
            reset
                .request_reset(pb::RequestResetRequest {
                    email: "jane@example.com".into(),
                    ..Default::default()
                })
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 5, "{results:?}");
    for status in refused {
        assert_rate_limited(status, "REKEY_RATE_LIMIT_PER_EMAIL");
    }
    let jobs = mail_outbox::Entity::find()
        .filter(mail_outbox::Column::Recipient.eq("jane@example.com"))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(jobs, 3);
    let requested = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::ResetRequested))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(requested, 3);
}
flow_test!(concurrent_calls_over_the_limit_write_nothing);

/// With no limit to count against, a call's rows go straight into its
/// batch's multi-row inserts; each call still leaves its own job and event.
async fn without_limits_each_concurrent_call_leaves_its_job_and_event(backend: Backend) {
    let app = spawn_app_with(backend, |f| {
        f.merge(("rate_limit_per_email", "off"))
            .merge(("rate_limit_per_ip", "off"))
    })
    .await;
    app.sign_up_at_once((0..40).map(|i| (format!("user{i}@example.com"), format!("User {i}"))))
        .await;
    let mut recipients: Vec<String> = mail_outbox::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.recipient)
        .collect();
    recipients.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("user{i}@example.com")).collect();
    expected.sort();
    assert_eq!(recipients, expected);
    let requested = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::SignUpRequested))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(requested, 40);
}
flow_test!(without_limits_each_concurrent_call_leaves_its_job_and_event);

/// A batch whose merged inserts fail is undone as a whole, and no call in
/// it is told its request was taken (SQLite: a trigger refuses the audit row).
#[tokio::test]
async fn a_batch_whose_rows_cannot_be_inserted_acknowledges_nothing() {
    use sea_orm::ConnectionTrait;
    let mut app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("rate_limit_per_email", "off"))
            .merge(("rate_limit_per_ip", "off"))
    })
    .await;
    app.db
        .execute_unprepared(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END",
        )
        .await
        .unwrap();
    let refused = app.request_reset("jane@example.com").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
    assert!(!refused.message().contains("jane"), "{refused:?}");
    assert_eq!(mail_outbox::Entity::find().count(&app.db).await.unwrap(), 0);

    app.db
        .execute_unprepared("DROP TRIGGER refuse_audit")
        .await
        .unwrap();
    app.request_reset("jane@example.com").await.unwrap();
    assert_eq!(mail_outbox::Entity::find().count(&app.db).await.unwrap(), 1);
}

/// Two batches charging the same two keys in opposite order deadlock on
/// PostgreSQL; the one PostgreSQL aborts is a conflict its callers may
/// retry (`UNAVAILABLE` with `RetryInfo`), not an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_in_opposite_order_deadlock_into_a_retryable_conflict() {
    use rekey::{
        domain::RateLimit,
        service::ServiceError,
        store::{
            StoreFailure,
            rate_limits::{self, Charge},
        },
    };
    use sea_orm::TransactionTrait;

    if crate::helpers::postgres_url().await.is_none() {
        return;
    }
    let app = crate::helpers::spawn_app(Backend::Postgres).await;
    let limit = RateLimit::parse("1000/1m").unwrap().unwrap();
    let charge = |key: &str| {
        vec![Charge {
            key: key.to_owned(),
            limit,
        }]
    };
    let now = app.clock.now_millis();
    let first = app.db.begin().await.unwrap();
    let second = app.db.begin().await.unwrap();
    rate_limits::take(&first, &charge("x"), now).await.unwrap();
    rate_limits::take(&second, &charge("y"), now).await.unwrap();
    // The aborted one is rolled back at once, which lets the other go on.
    let take_then_end = |tx: sea_orm::DatabaseTransaction, key: &'static str| {
        let charges = charge(key);
        async move {
            let taken = rate_limits::take(&tx, &charges, now).await;
            tx.rollback().await.unwrap();
            taken
        }
    };
    let (first_then, second_then) =
        tokio::join!(take_then_end(first, "y"), take_then_end(second, "x"));
    let aborted: Vec<_> = [first_then, second_then]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    let error = aborted.into_iter().next().unwrap();
    assert!(error.is_conflict(), "{error:?}");
    assert!(!error.is_unavailable(), "{error:?}");
    let refused = ServiceError::from(StoreFailure {
        doing: "taking rate-limit slots",
        source: error,
    });
    assert!(matches!(refused, ServiceError::Conflict(_)), "{refused:?}");
}
