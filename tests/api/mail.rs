use rekey::store::{MailStatus, entities::mail_outbox};
use sea_orm::EntityTrait;

use crate::{
    flow_test,
    helpers::{Backend, spawn_app, spawn_app_with},
};

async fn mail_uses_the_configured_from_alias_and_reply_to(backend: Backend) {
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("mail_from", "Example Support <support@example.com>"))
            .merge(("mail_reply_to", "help@example.com"))
    })
    .await;
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);

    assert_eq!(mail.from, "support@example.com", "SMTP envelope sender");
    assert_eq!(mail.header_from(), "Example Support <support@example.com>");
    let raw = String::from_utf8_lossy(&mail.raw).to_string();
    assert!(raw.contains("Reply-To: help@example.com"), "{raw}");
    assert!(raw.contains("multipart/alternative"));
    assert!(mail.html().contains("<a href="));
}
flow_test!(mail_uses_the_configured_from_alias_and_reply_to);

async fn a_refused_send_is_retried_until_delivered(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.mailbox.refuse_next(1);

    app.sign_up("jane@example.com", "Jane").await.unwrap();

    let mail = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);
    app.wait_for_outbox_drained().await;
    let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, MailStatus::Sent);
    assert_eq!(jobs[0].attempts, 2, "one refused attempt, one delivered");
    // The retry minted a new token for the same request; it works.
    app.reset_password(&mail.token(), "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(a_refused_send_is_retried_until_delivered);

async fn a_permanent_refusal_becomes_a_dead_letter(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.mailbox.reject_mailbox("jane@example.com");

    app.sign_up("jane@example.com", "Jane").await.unwrap();

    app.wait_for_outbox_drained().await;
    let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, MailStatus::Dead);
    assert_eq!(jobs[0].attempts, 1, "a 5xx is not retried");
    let error = jobs[0].last_error.as_deref().unwrap();
    assert!(error.contains("550"), "{error}");
    assert!(app.mailbox.all().is_empty());
}
flow_test!(a_permanent_refusal_becomes_a_dead_letter);

async fn two_replicas_share_the_outbox_and_mail_each_job_once(backend: Backend) {
    let mut first = spawn_app(backend).await;
    let mut second = first.spawn_replica().await;

    let recipients: Vec<String> = (0..20).map(|i| format!("user{i}@example.com")).collect();
    for (i, email) in recipients.iter().enumerate() {
        let replica = if i % 2 == 0 { &mut first } else { &mut second };
        replica.sign_up(email, "").await.unwrap();
    }

    for email in &recipients {
        first.mailbox.wait_for(email, 1).await;
    }
    first.wait_for_outbox_drained().await;
    assert_eq!(first.mailbox.all().len(), recipients.len(), "no mail twice");
    let jobs = mail_outbox::Entity::find().all(&first.db).await.unwrap();
    assert!(
        jobs.iter()
            .all(|job| job.status == MailStatus::Sent && job.attempts == 1),
        "{jobs:?}"
    );

    // A link mailed by either replica works on the other.
    let token = first.mailbox.to("user1@example.com")[0].token();
    first
        .reset_password(&token, "a brand new passphrase")
        .await
        .unwrap();
    second
        .authenticate("user1@example.com", "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(two_replicas_share_the_outbox_and_mail_each_job_once);

async fn a_link_to_a_page_removed_from_the_allow_list_is_not_sent(backend: Backend) {
    use rekey::grpc::pb;
    use std::time::Duration;

    let mut app = spawn_app(backend).await;
    // The first attempt fails, so the job is still queued when the allow-list
    // changes.
    app.mailbox.refuse_next(1);
    app.reset
        .sign_up(pb::SignUpRequest {
            email: "jane@example.com".into(),
            display_name: "Jane".into(),
            reset_url: "https://other.example.com/welcome/{token}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    crate::helpers::eventually("the first attempt to fail", || async {
        let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
        (jobs.len() == 1 && jobs[0].attempts == 1 && jobs[0].status == MailStatus::Pending)
            .then_some(())
    })
    .await;
    app.stop().await.unwrap();

    // Restarted with that page no longer allowed: the retry is a dead letter.
    let restarted = app
        .spawn_replica_with(|f| f.merge(("allowed_reset_urls", "")))
        .await;
    restarted.clock.advance(Duration::from_secs(3600));
    let dead = crate::helpers::eventually("a dead letter", || async {
        let jobs = mail_outbox::Entity::find()
            .all(&restarted.db)
            .await
            .unwrap();
        (jobs[0].status == MailStatus::Dead).then(|| jobs[0].clone())
    })
    .await;
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no longer on the allow-list")),
        "{dead:?}"
    );
    assert!(restarted.mailbox.to("jane@example.com").is_empty());
}
flow_test!(a_link_to_a_page_removed_from_the_allow_list_is_not_sent);
