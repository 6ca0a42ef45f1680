use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, RESET_PAGE, spawn_app},
};
use rekey::grpc::pb;

async fn sign_up_mails_a_link_that_creates_the_account(backend: Backend) {
    let mut app = spawn_app(backend).await;

    // Anyone can sign up any address: the name is the caller's text, so the
    // mail does not repeat it; the account gets it once the address is proven.
    let name = "Jane <a href=\"https://evil.example\">win</a>";
    app.sign_up("Jane.Doe@Example.com", name).await.unwrap();

    let mail = app
        .mailbox
        .wait_for("jane.doe@example.com", 1)
        .await
        .remove(0);
    assert_eq!(mail.subject(), "Confirm your email address");
    assert!(mail.text().starts_with("Hello,"), "{}", mail.text());
    for body in [mail.text(), mail.html()] {
        assert!(!body.contains("Jane"), "{body}");
        assert!(!body.contains("evil.example"), "{body}");
    }
    assert!(mail.link().starts_with(&format!("{RESET_PAGE}?token=")));
    assert!(mail.html().contains(&mail.token()));

    let token = mail.token();
    let verified = app.verify(&token).await.unwrap();
    assert_eq!(verified.purpose(), pb::Purpose::SignUp);
    assert_eq!(verified.email_hint, "j***@example.com");

    let account_id = app.reset_password(&token, PASSWORD).await.unwrap();
    let authenticated = app
        .authenticate("jane.doe@example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(authenticated.account_id, account_id);
    assert_eq!(authenticated.display_name, name);
}
flow_test!(sign_up_mails_a_link_that_creates_the_account);

async fn sign_up_with_a_registered_email_mails_a_reset_link_instead(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let account_id = app.create_account("jane@example.com", "Jane").await;

    // Same empty reply as for a new address.
    app.sign_up("jane@example.com", "Impostor").await.unwrap();

    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "You already have an account");
    assert!(
        mail.text().contains("Hello Jane"),
        "uses the account's name"
    );
    let token = mail.token();
    assert_eq!(
        app.verify(&token).await.unwrap().purpose(),
        pb::Purpose::Reset
    );
    let reset_id = app
        .reset_password(&token, "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(reset_id, account_id);
    app.authenticate("jane@example.com", "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(sign_up_with_a_registered_email_mails_a_reset_link_instead);

async fn a_second_sign_up_revokes_the_first_link(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let first = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let second = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);

    let status = app.verify(&first.token()).await.unwrap_err();
    crate::helpers::assert_error(
        &status,
        tonic::Code::FailedPrecondition,
        Some("TOKEN_REVOKED"),
    );
    app.reset_password(&second.token(), PASSWORD).await.unwrap();
}
flow_test!(a_second_sign_up_revokes_the_first_link);

async fn sign_up_links_can_use_a_token_placeholder_page(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.reset
        .sign_up(pb::SignUpRequest {
            email: "jane@example.com".into(),
            reset_url: "https://other.example.com/welcome/{token}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);
    let token = mail.token();
    assert_eq!(
        mail.link(),
        format!("https://other.example.com/welcome/{token}")
    );
    app.reset_password(&token, PASSWORD).await.unwrap();
}
flow_test!(sign_up_links_can_use_a_token_placeholder_page);
