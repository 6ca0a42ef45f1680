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

async fn an_unknown_email_gets_the_same_reply_and_no_mail(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;

    let known = app
        .reset
        .request_reset(pb::RequestResetRequest {
            email: "jane@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let unknown = app
        .reset
        .request_reset(pb::RequestResetRequest {
            email: "nobody@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(known.get_ref(), unknown.get_ref());

    app.wait_for_outbox_drained().await;
    assert!(app.mailbox.to("nobody@example.com").is_empty());
    assert_eq!(app.mailbox.to("jane@example.com").len(), 2);
}
flow_test!(an_unknown_email_gets_the_same_reply_and_no_mail);
