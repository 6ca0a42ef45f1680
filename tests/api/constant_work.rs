//! No enumeration by timing, proven by its cause: for a known and an unknown
//! email, `RequestReset`, `SignUp` and a failed `Authenticate` run the same
//! SQL statements in the same order and write the same number of rows.

use rekey::store::{
    AuditKind,
    entities::{audit_event, mail_outbox},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

use crate::{
    flow_test,
    helpers::{Backend, TestApp, count_rows, spawn_app},
};

/// Rows the RPCs write (the mail worker writes others, later).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Written {
    mail_jobs: u64,
    rate_limit_counters: u64,
    rpc_audit_events: u64,
}

async fn written(db: &DatabaseConnection) -> Written {
    Written {
        mail_jobs: mail_outbox::Entity::find().count(db).await.unwrap(),
        rate_limit_counters: count_rows(db, "rate_limits").await,
        rpc_audit_events: audit_event::Entity::find()
            .filter(audit_event::Column::Kind.is_in([
                AuditKind::ResetRequested,
                AuditKind::SignUpRequested,
                AuditKind::AuthenticationFailed,
            ]))
            .count(db)
            .await
            .unwrap(),
    }
}

/// The statements one call ran inside its RPC span, and the rows it added.
async fn trace<F>(app: &mut TestApp, call: F) -> (Vec<String>, Written)
where
    F: AsyncFnOnce(&mut TestApp),
{
    let before = written(&app.db).await;
    app.rpc_statements.lock().unwrap().clear();
    call(app).await;
    let statements = std::mem::take(&mut *app.rpc_statements.lock().unwrap());
    let after = written(&app.db).await;
    let added = Written {
        mail_jobs: after.mail_jobs - before.mail_jobs,
        rate_limit_counters: after.rate_limit_counters - before.rate_limit_counters,
        rpc_audit_events: after.rpc_audit_events - before.rpc_audit_events,
    };
    (statements, added)
}

fn assert_same(rpc: &str, known: (Vec<String>, Written), unknown: (Vec<String>, Written)) {
    assert!(!known.0.is_empty(), "{rpc}: no statements recorded");
    assert_eq!(
        known.0, unknown.0,
        "{rpc}: the statements differ between a known and an unknown email"
    );
    assert_eq!(known.1, unknown.1, "{rpc}: the rows written differ");
}

async fn known_and_unknown_emails_run_the_same_statements(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    // Both addresses have had one sign-up, so their counters exist alike.
    app.sign_up("stranger@example.com", "Stranger")
        .await
        .unwrap();
    app.wait_for_outbox_drained().await;

    let known = trace(&mut app, async |app| {
        app.request_reset("jane@example.com").await.unwrap()
    })
    .await;
    let unknown = trace(&mut app, async |app| {
        app.request_reset("stranger@example.com").await.unwrap()
    })
    .await;
    // The call's own statement is its rate-limit count; its job and audit
    // row are inserted with the rest of its group commit's rows, outside its
    // span, but are on disk by the time it answers.
    assert!(
        known.0.iter().any(|s| s.contains("rate_limits")),
        "the call is counted inside the RPC: {:?}",
        known.0
    );
    assert_eq!(known.1.mail_jobs, 1);
    assert_eq!(known.1.rpc_audit_events, 1);
    assert_same("RequestReset", known, unknown);

    let known = trace(&mut app, async |app| {
        app.sign_up("jane@example.com", "Jane").await.unwrap()
    })
    .await;
    let unknown = trace(&mut app, async |app| {
        app.sign_up("stranger@example.com", "Stranger")
            .await
            .unwrap()
    })
    .await;
    assert_same("SignUp", known, unknown);

    let known = trace(&mut app, async |app| {
        app.authenticate("jane@example.com", "not her password")
            .await
            .unwrap_err();
    })
    .await;
    let unknown = trace(&mut app, async |app| {
        app.authenticate("stranger@example.com", "not her password")
            .await
            .unwrap_err();
    })
    .await;
    assert_same("Authenticate", known, unknown);
}
flow_test!(known_and_unknown_emails_run_the_same_statements);
