use rekey::store::entities::{account, audit_event, mail_outbox, request, request_token};
use sea_orm::EntityTrait;

use crate::{
    flow_test,
    helpers::{Backend, captured_logs, spawn_app},
};

/// Every row of every table, as text.
async fn dump_database(db: &sea_orm::DatabaseConnection) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        account::Entity::find().all(db).await.unwrap(),
        request::Entity::find().all(db).await.unwrap(),
        request_token::Entity::find().all(db).await.unwrap(),
        mail_outbox::Entity::find().all(db).await.unwrap(),
        audit_event::Entity::find().all(db).await.unwrap(),
    )
}

async fn no_token_link_or_password_is_stored_or_logged(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // Unique per run, so other tests' logs cannot hide a leak or fake one.
    let password = format!("signup secret {}", uuid::Uuid::new_v4());
    let new_password = format!("reset secret {}", uuid::Uuid::new_v4());

    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let signup = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);
    app.verify(&signup.token()).await.unwrap();
    app.reset_password(&signup.token(), &password)
        .await
        .unwrap();
    app.request_reset("jane@example.com").await.unwrap();
    let reset = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    app.reset_password(&reset.token(), &new_password)
        .await
        .unwrap();
    app.authenticate("jane@example.com", &new_password)
        .await
        .unwrap();
    app.authenticate("jane@example.com", &password)
        .await
        .unwrap_err();
    app.wait_for_outbox_drained().await;

    let secrets = [
        signup.token(),
        signup.link(),
        reset.token(),
        reset.link(),
        password.clone(),
        new_password.clone(),
    ];
    let stored = dump_database(&app.db).await;
    let logs = captured_logs();
    assert!(
        stored.contains("$argon2id$"),
        "passwords are stored as argon2id hashes"
    );
    assert!(
        logs.contains("mail accepted for delivery"),
        "logs were captured"
    );
    for secret in &secrets {
        assert!(!stored.contains(secret.as_str()), "database holds a secret");
        assert!(!logs.contains(secret.as_str()), "logs hold a secret");
    }
    assert!(
        !logs.contains("jane@example.com"),
        "emails in logs are masked"
    );

    if backend == Backend::Sqlite {
        // Also the raw files, including the write-ahead log.
        for entry in std::fs::read_dir(app.dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "database file holds a secret"
                );
            }
        }
    }
}
flow_test!(no_token_link_or_password_is_stored_or_logged);
