use futures::future::join_all;
use std::time::Duration;

use rekey::grpc::pb::{self, Purpose};
use rekey::store::{
    AuditKind, MailStatus,
    entities::{audit_event, mail_outbox, request},
};
use sea_orm::EntityTrait;

use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, RESET_PAGE, TestApp, assert_error, spawn_app, spawn_app_with},
};

async fn reset_token_for(app: &mut TestApp, email: &str) -> String {
    let before = app.mailbox.to(email).len();
    app.request_reset(email).await.unwrap();
    app.mailbox
        .wait_for(email, before + 1)
        .await
        .remove(before)
        .token()
}

async fn verify_token_does_not_consume_it(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    let token = reset_token_for(&mut app, "jane@example.com").await;

    for _ in 0..3 {
        app.verify(&token).await.unwrap();
    }
    app.reset_password(&token, "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(verify_token_does_not_consume_it);

async fn each_verification_is_audited_by_the_time_the_server_stops(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    let token = reset_token_for(&mut app, "jane@example.com").await;
    for _ in 0..3 {
        app.verify(&token).await.unwrap();
    }
    // Queued audit events are written before a graceful stop returns.
    app.stop().await.unwrap();

    let events = audit_event::Entity::find().all(&app.db).await.unwrap();
    let verified: Vec<_> = events
        .iter()
        .filter(|e| e.kind == AuditKind::Verified)
        .collect();
    assert_eq!(verified.len(), 3, "{events:?}");
    for event in verified {
        assert_eq!(event.email_hint.as_deref(), Some("j***@example.com"));
        assert!(event.request_id.is_some() && event.account_id.is_some());
    }
}
flow_test!(each_verification_is_audited_by_the_time_the_server_stops);

async fn a_used_token_is_refused(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    let token = reset_token_for(&mut app, "jane@example.com").await;
    app.reset_password(&token, "a brand new passphrase")
        .await
        .unwrap();

    let status = app.verify(&token).await.unwrap_err();
    assert_error(&status, tonic::Code::FailedPrecondition, Some("TOKEN_USED"));
    let status = app
        .reset_password(&token, "yet another passphrase")
        .await
        .unwrap_err();
    assert_error(&status, tonic::Code::FailedPrecondition, Some("TOKEN_USED"));
    app.authenticate("jane@example.com", "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(a_used_token_is_refused);

async fn an_expired_token_is_refused(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    let token = reset_token_for(&mut app, "jane@example.com").await;
    app.verify(&token).await.unwrap();
    // Reset links live 30 minutes.
    app.clock.advance(Duration::from_secs(30 * 60));

    let status = app.verify(&token).await.unwrap_err();
    assert_error(
        &status,
        tonic::Code::FailedPrecondition,
        Some("TOKEN_EXPIRED"),
    );
    let status = app
        .reset_password(&token, "a brand new passphrase")
        .await
        .unwrap_err();
    assert_error(
        &status,
        tonic::Code::FailedPrecondition,
        Some("TOKEN_EXPIRED"),
    );
    app.authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap();
}
flow_test!(an_expired_token_is_refused);

async fn a_new_request_revokes_the_older_link(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    let first = reset_token_for(&mut app, "jane@example.com").await;
    let second = reset_token_for(&mut app, "jane@example.com").await;

    let status = app
        .reset_password(&first, "a brand new passphrase")
        .await
        .unwrap_err();
    assert_error(
        &status,
        tonic::Code::FailedPrecondition,
        Some("TOKEN_REVOKED"),
    );
    app.reset_password(&second, "a brand new passphrase")
        .await
        .unwrap();

    let events = audit_event::Entity::find().all(&app.db).await.unwrap();
    assert_one_supersession_of_jane(&events);
}
flow_test!(a_new_request_revokes_the_older_link);

/// One `revoked` event, for jane's request superseded by a new one.
fn assert_one_supersession_of_jane(events: &[audit_event::Model]) {
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.kind == AuditKind::Revoked)
        .collect();
    assert_eq!(revoked.len(), 1, "{events:?}");
    assert_eq!(revoked[0].email_hint.as_deref(), Some("j***@example.com"));
    assert_eq!(
        revoked[0].detail.as_deref(),
        Some("superseded by a new request")
    );
}

async fn of_two_resets_claimed_in_one_batch_only_the_later_link_works(backend: Backend) {
    use rekey::{
        domain::Clock,
        store::outbox::{self, MailIntent},
    };
    use sea_orm::TransactionTrait;

    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.wait_for_outbox_drained().await;
    let mails_before = app.mailbox.to("jane@example.com").len();
    let mailed = |events: &[audit_event::Model]| {
        events
            .iter()
            .filter(|e| e.kind == AuditKind::Mailed)
            .count()
    };
    let mailed_before = mailed(&audit_event::Entity::find().all(&app.db).await.unwrap());
    // Queued in one transaction, so that the worker claims both at once.
    let intent = MailIntent::Reset {
        locale: String::new(),
        reset_url: RESET_PAGE.into(),
    };
    let now = app.clock.now_millis();
    let tx = app.db.begin().await.unwrap();
    let first = outbox::enqueue(&tx, "jane@example.com", &intent, now)
        .await
        .unwrap();
    let second = outbox::enqueue(&tx, "jane@example.com", &intent, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mails = app
        .mailbox
        .wait_for("jane@example.com", mails_before + 2)
        .await;
    app.wait_for_outbox_drained().await;
    let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
    let job = |id: i64| jobs.iter().find(|job| job.id == id).unwrap();
    assert_eq!(
        (job(first).attempts, job(second).attempts),
        (1, 1),
        "one claim"
    );
    assert_eq!(job(first).status, MailStatus::Sent);
    assert_eq!(job(second).status, MailStatus::Sent);

    // The later job's request is the open one; the earlier's link is revoked.
    let request_of = |id: i64| job(id).request_id.clone().unwrap();
    let requests = request::Entity::find().all(&app.db).await.unwrap();
    let state = |id: String| {
        let request = requests.iter().find(|r| r.id == id).unwrap();
        (request.revoked_at.is_some(), request.consumed_at.is_some())
    };
    assert_eq!(state(request_of(first)), (true, false));
    assert_eq!(state(request_of(second)), (false, false));
    // Read before a reset queues its password-changed mail.
    let events = audit_event::Entity::find().all(&app.db).await.unwrap();
    assert_one_supersession_of_jane(&events);
    assert_eq!(
        mailed(&events),
        mailed_before + 2,
        "both resets: {events:?}"
    );

    let mut outcomes = Vec::new();
    for mail in &mails[mails_before..] {
        match app
            .reset_password(&mail.token(), "a brand new passphrase")
            .await
        {
            Ok(_) => outcomes.push("reset"),
            Err(status) => {
                assert_error(
                    &status,
                    tonic::Code::FailedPrecondition,
                    Some("TOKEN_REVOKED"),
                );
                outcomes.push("revoked");
            }
        }
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["reset", "revoked"]);
}
flow_test!(of_two_resets_claimed_in_one_batch_only_the_later_link_works);

async fn an_unknown_or_malformed_token_is_not_found(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let well_formed_but_unknown = "A".repeat(43);
    for token in [well_formed_but_unknown.as_str(), "not-a-token", "x"] {
        let status = app.verify(token).await.unwrap_err();
        assert_error(&status, tonic::Code::NotFound, Some("TOKEN_INVALID"));
        let status = app
            .reset_password(token, "a brand new passphrase")
            .await
            .unwrap_err();
        assert_error(&status, tonic::Code::NotFound, Some("TOKEN_INVALID"));
    }
}
flow_test!(an_unknown_or_malformed_token_is_not_found);

async fn fifty_concurrent_resets_with_one_token_succeed_exactly_once(backend: Backend) {
    // Production hash cost: every call passes the cheap token pre-check long
    // before the first hash is done, so only the atomic consume can decide.
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("argon2_memory_kib", 19_456))
            .merge(("argon2_iterations", 2))
    })
    .await;
    app.create_account("jane@example.com", "Jane").await;
    let token = reset_token_for(&mut app, "jane@example.com").await;

    let attempts = (0..50).map(|i| {
        let mut client = app.reset.clone();
        let token = token.clone();
        async move {
            client
                .reset_password(rekey::grpc::pb::ResetPasswordRequest {
                    token,
                    new_password: format!("concurrent passphrase {i:02}"),
                })
                .await
                .map(|_| i)
        }
    });
    let results = join_all(attempts).await;

    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for failure in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_error(failure, tonic::Code::FailedPrecondition, Some("TOKEN_USED"));
    }
    let winning_password = format!("concurrent passphrase {:02}", winners[0]);
    app.authenticate("jane@example.com", &winning_password)
        .await
        .unwrap();
}
flow_test!(fifty_concurrent_resets_with_one_token_succeed_exactly_once);

/// The worker's batch revocation touches only the open requests of the
/// addresses and purpose it names, and returns their addresses.
async fn a_batch_revocation_revokes_only_the_open_requests_it_names(backend: Backend) {
    use rekey::{
        domain::{Clock, Purpose},
        store::requests::{self, Request},
    };

    let app = spawn_app(backend).await;
    let now = app.clock.now_millis();
    let request = |id: &str, purpose: Purpose, email: &str, consumed_at: Option<i64>| Request {
        id: id.to_owned(),
        purpose,
        email: email.to_owned(),
        account_id: None,
        display_name: "Someone".to_owned(),
        locale: "en".to_owned(),
        created_at: now,
        expires_at: now + 60_000,
        consumed_at,
        revoked_at: None,
    };
    let rows = [
        request("open-jane", Purpose::SignUp, "jane@example.com", None),
        request("open-joe", Purpose::SignUp, "joe@example.com", None),
        request("used-jane", Purpose::SignUp, "jane@example.com", Some(now)),
        request("reset-jane", Purpose::Reset, "jane@example.com", None),
        request("open-ann", Purpose::SignUp, "ann@example.com", None),
    ];
    requests::insert_many(&app.db, &rows).await.unwrap();

    let mut revoked = requests::revoke_open_of_emails(
        &app.db,
        Purpose::SignUp,
        &["jane@example.com", "joe@example.com", "nobody@example.com"],
        now + 1,
    )
    .await
    .unwrap();
    revoked.sort();
    assert_eq!(revoked, ["jane@example.com", "joe@example.com"]);

    let mut revoked_ids: Vec<String> = request::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|request| request.revoked_at == Some(now + 1))
        .map(|request| request.id)
        .collect();
    revoked_ids.sort();
    assert_eq!(revoked_ids, ["open-jane", "open-joe"]);
}
flow_test!(a_batch_revocation_revokes_only_the_open_requests_it_names);

/// Verifications that arrive together (on PostgreSQL, answered by one
/// statement) each get the answer for their own token.
async fn concurrent_verifications_each_get_their_own_token_answered(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let mut open = Vec::new();
    for (email, hint) in [
        ("ann@example.com", "a***@example.com"),
        ("bob@example.com", "b***@example.com"),
        ("cid@example.com", "c***@example.com"),
    ] {
        app.create_account(email, "Someone").await;
        let token = reset_token_for(&mut app, email).await;
        open.push((token, hint, Purpose::Reset));
    }
    let token = app.sign_up_token("dee@example.com", "Dee").await;
    open.push((token, "d***@example.com", Purpose::SignUp));
    app.create_account("eve@example.com", "Eve").await;
    let used = reset_token_for(&mut app, "eve@example.com").await;
    app.reset_password(&used, "a brand new passphrase")
        .await
        .unwrap();
    let unknown = "A".repeat(43);

    let kinds = open.len() + 2;
    let calls = (0..10 * kinds).map(|i| {
        let mut client = app.reset.clone();
        let token = match i % kinds {
            k if k < open.len() => open[k].0.clone(),
            k if k == open.len() => used.clone(),
            _ => unknown.clone(),
        };
        async move {
            let answer = client
                .verify_token(pb::VerifyTokenRequest { token })
                .await
                .map(tonic::Response::into_inner);
            (i % kinds, answer)
        }
    });
    for (kind, answer) in join_all(calls).await {
        if let Some((_, hint, purpose)) = open.get(kind) {
            let answer = answer.unwrap();
            assert_eq!(answer.email_hint, *hint);
            assert_eq!(answer.purpose(), *purpose);
        } else if kind == open.len() {
            let status = answer.unwrap_err();
            assert_error(&status, tonic::Code::FailedPrecondition, Some("TOKEN_USED"));
        } else {
            let status = answer.unwrap_err();
            assert_error(&status, tonic::Code::NotFound, Some("TOKEN_INVALID"));
        }
    }
}
flow_test!(concurrent_verifications_each_get_their_own_token_answered);
