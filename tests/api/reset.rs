use std::time::Duration;

use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, assert_error, spawn_app},
};
use rekey::grpc::pb;

async fn reset_mails_a_link_that_sets_a_new_password(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let account_id = app.create_account("jane@example.com", "Jane").await;
    let before = app
        .authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap();

    app.request_reset("JANE@example.com").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "Reset your password");
    assert!(mail.text().contains("expires in 30 minutes"));
    let token = mail.token();
    assert_eq!(
        app.verify(&token).await.unwrap().purpose(),
        pb::Purpose::Reset
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let reset_id = app
        .reset_password(&token, "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(reset_id, account_id);

    let status = app
        .authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_error(
        &status,
        tonic::Code::Unauthenticated,
        Some("INVALID_CREDENTIALS"),
    );
    let after = app
        .authenticate("jane@example.com", "a brand new passphrase")
        .await
        .unwrap();
    assert!(
        after.password_changed_at.unwrap().seconds * 1000
            + i64::from(after.password_changed_at.unwrap().nanos / 1_000_000)
            > before.password_changed_at.unwrap().seconds * 1000
                + i64::from(before.password_changed_at.unwrap().nanos / 1_000_000),
        "password_changed_at moves forward"
    );
}
flow_test!(reset_mails_a_link_that_sets_a_new_password);

async fn a_reset_sends_a_password_changed_notice(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.request_reset("jane@example.com").await.unwrap();
    let reset_mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    app.reset_password(&reset_mail.token(), "a brand new passphrase")
        .await
        .unwrap();

    let notice = app.mailbox.wait_for("jane@example.com", 3).await.remove(2);
    assert_eq!(notice.subject(), "Your password was changed");
    assert!(notice.text().contains("Hello Jane"));
    assert!(
        !notice.text().contains("token="),
        "the notice carries no link"
    );
}
flow_test!(a_reset_sends_a_password_changed_notice);

async fn an_unknown_email_gets_the_same_reply_and_work_and_no_mail(backend: Backend) {
    use rekey::store::{AuditKind, entities::audit_event, entities::mail_outbox};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.wait_for_outbox_drained().await;
    let jobs_before = mail_outbox::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .len();

    let mut reply_for = async |email: &str| {
        app.reset
            .request_reset(pb::RequestResetRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .unwrap()
    };
    let known = reply_for("jane@example.com").await;
    let unknown = reply_for("nobody@example.com").await;

    // The same reply: message and headers (but for the date).
    assert_eq!(known.get_ref(), unknown.get_ref());
    let headers = |reply: &tonic::Response<pb::RequestResetResponse>| {
        let mut headers = reply.metadata().clone().into_headers();
        headers.remove("date");
        format!("{headers:?}")
    };
    assert_eq!(headers(&known), headers(&unknown));

    // The same work: one mail job with the same intent, one audit event
    // with the same fields, whether or not the account exists.
    let jobs = mail_outbox::Entity::find()
        .order_by_asc(mail_outbox::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    let queued = &jobs[jobs_before..];
    assert_eq!(queued.len(), 2, "{jobs:?}");
    assert_eq!(
        (queued[0].kind, &queued[0].payload),
        (queued[1].kind, &queued[1].payload)
    );
    let requested: Vec<_> = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::ResetRequested))
        .order_by_asc(audit_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.account_id, e.request_id, e.ip, e.detail))
        .collect();
    assert_eq!(requested.len(), 2, "{requested:?}");
    assert_eq!(requested[0], requested[1]);

    app.wait_for_outbox_drained().await;
    assert!(app.mailbox.to("nobody@example.com").is_empty());
    assert_eq!(app.mailbox.to("jane@example.com").len(), 2);
}
flow_test!(an_unknown_email_gets_the_same_reply_and_work_and_no_mail);

fn millis(at: prost_types::Timestamp) -> i64 {
    at.seconds * 1000 + i64::from(at.nanos / 1_000_000)
}

/// A replica whose clock is an hour behind still moves
/// `password_changed_at` forward, so services that drop older sessions
/// keep dropping them.
async fn password_changed_at_moves_forward_on_a_replica_whose_clock_is_behind(backend: Backend) {
    let mut ahead = spawn_app(backend).await;
    ahead.clock.advance(Duration::from_secs(3600));
    ahead.create_account("jane@example.com", "Jane").await;
    let first = ahead
        .authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap()
        .password_changed_at
        .unwrap();

    let mut behind = ahead.spawn_replica().await;
    behind.request_reset("jane@example.com").await.unwrap();
    let mail = behind
        .mailbox
        .wait_for("jane@example.com", 2)
        .await
        .remove(1);
    behind
        .reset_password(&mail.token(), "a brand new passphrase")
        .await
        .unwrap();
    let second = behind
        .authenticate("jane@example.com", "a brand new passphrase")
        .await
        .unwrap()
        .password_changed_at
        .unwrap();
    assert!(
        millis(second) > millis(first),
        "{second:?} is not after {first:?}"
    );
}
flow_test!(password_changed_at_moves_forward_on_a_replica_whose_clock_is_behind);
