use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, spawn_app, violated_fields},
};
use rekey::grpc::pb;

async fn bad_emails_are_invalid_arguments(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let overlong = format!("{}@example.com", "a".repeat(250));
    for email in [
        "",
        "plain",
        "jane@",
        "@example.com",
        "Jane <jane@example.com>",
        overlong.as_str(),
    ] {
        let status = app.request_reset(email).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["email"], "{email:?}");
        let status = app.sign_up(email, "Jane").await.unwrap_err();
        assert_eq!(violated_fields(&status), ["email"], "{email:?}");
    }
    app.wait_for_outbox_drained().await;
    assert!(app.mailbox.all().is_empty());
}
flow_test!(bad_emails_are_invalid_arguments);

async fn reset_urls_outside_the_allow_list_are_refused(backend: Backend) {
    let mut app = spawn_app(backend).await;
    for page in [
        "https://app.example.com.evil.com/reset",
        "https://evil.com/reset",
        "http://app.example.com/reset",
        "https://app.example.com/resetx",
        "https://app.example.com@evil.com/reset",
        "javascript:alert(1)",
        "not a url",
    ] {
        let status = app
            .reset
            .request_reset(pb::RequestResetRequest {
                email: "jane@example.com".into(),
                reset_url: page.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["reset_url"], "{page}");
        let status = app
            .reset
            .sign_up(pb::SignUpRequest {
                email: "jane@example.com".into(),
                reset_url: page.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["reset_url"], "{page}");
    }
    // A page below an allowed one is fine.
    app.reset
        .request_reset(pb::RequestResetRequest {
            email: "jane@example.com".into(),
            reset_url: "https://app.example.com/reset/step-2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}
flow_test!(reset_urls_outside_the_allow_list_are_refused);

async fn every_bad_field_is_reported_at_once(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let status = app
        .reset
        .sign_up(pb::SignUpRequest {
            email: "nope".into(),
            display_name: "x".repeat(129),
            locale: "not a locale".into(),
            reset_url: "https://evil.com/".into(),
            client: Some(pb::ClientContext {
                ip: "999.1.1.1".into(),
                user_agent: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["email", "display_name", "locale", "reset_url", "client.ip"]
    );
}
flow_test!(every_bad_field_is_reported_at_once);

async fn passwords_over_128_characters_are_refused_before_hashing(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;

    let status = app
        .reset_password(&token, &"p".repeat(129))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["new_password"]);
    let status = app.reset_password(&token, "short").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["new_password"]);
    let status = app.reset_password("", PASSWORD).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["token"]);

    // The refusals did not use the token; exactly 128 characters (code
    // points, not bytes) is allowed.
    let longest: String = "Grüße aus München, wo Bären über Brücken tanzen und Füchse im \
                           Mondschein Äpfel zählen; während Eulen Lieder für Möwen summen, \
                           blüht Klee"
        .chars()
        .take(128)
        .collect();
    assert_eq!((longest.chars().count(), longest.len()), (128, 140));
    app.reset_password(&token, &longest).await.unwrap();
    app.authenticate("jane@example.com", &longest)
        .await
        .unwrap();
    let status = app
        .authenticate("jane@example.com", &"p".repeat(129))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["password"]);
}
flow_test!(passwords_over_128_characters_are_refused_before_hashing);
