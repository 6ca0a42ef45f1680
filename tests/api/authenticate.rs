use crate::{
    flow_test,
    helpers::{Backend, PASSWORD, assert_error, spawn_app},
};

async fn authenticate_accepts_the_right_password_only(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let account_id = app.create_account("jane@example.com", "Jane").await;

    let ok = app
        .authenticate(" Jane@Example.com ", PASSWORD)
        .await
        .unwrap();
    assert_eq!(ok.account_id, account_id);
    assert_eq!(ok.display_name, "Jane");
    assert!(ok.password_changed_at.is_some());

    let wrong = app
        .authenticate("jane@example.com", "not the password")
        .await
        .unwrap_err();
    let unknown = app
        .authenticate("nobody@example.com", PASSWORD)
        .await
        .unwrap_err();
    for status in [&wrong, &unknown] {
        assert_error(
            status,
            tonic::Code::Unauthenticated,
            Some("INVALID_CREDENTIALS"),
        );
    }
    assert_eq!(wrong.message(), unknown.message(), "no account enumeration");
}
flow_test!(authenticate_accepts_the_right_password_only);

async fn failed_authentications_are_audited_without_secrets(backend: Backend) {
    use rekey::store::{AuditKind, entities::audit_event};
    use sea_orm::EntityTrait;

    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.authenticate("jane@example.com", "not the password")
        .await
        .unwrap_err();

    let events = audit_event::Entity::find().all(&app.db).await.unwrap();
    let failure = events
        .iter()
        .find(|e| e.kind == AuditKind::AuthenticationFailed)
        .expect("an authentication_failed event");
    assert_eq!(failure.email_hint.as_deref(), Some("j***@example.com"));
    assert!(!format!("{events:?}").contains("not the password"));
    for kind in [
        AuditKind::SignUpRequested,
        AuditKind::Mailed,
        AuditKind::SignedUp,
    ] {
        assert!(events.iter().any(|e| e.kind == kind), "missing {kind:?}");
    }
}
flow_test!(failed_authentications_are_audited_without_secrets);
