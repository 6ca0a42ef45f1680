//! Retention: the periodic cleanup deletes exactly what is past its time,
//! moved there with the injectable clock.

use std::time::Duration;

use rekey::store::{
    MailStatus,
    entities::{account, audit_event, mail_outbox, request, request_token},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

use crate::{
    flow_test,
    helpers::{Backend, TestApp, count_rows, eventually, spawn_app_with},
};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, PartialEq, Eq)]
struct Kept {
    accounts: u64,
    requests: u64,
    tokens: u64,
    audit: u64,
    rate_limits: u64,
    /// Recipients of the mail jobs kept, with their status, sorted.
    mail: Vec<(String, MailStatus)>,
}

async fn kept(db: &DatabaseConnection) -> Kept {
    // Counted first: a cleanup deletes idle counters last, so once none is
    // left, what is read next is what that cleanup left.
    let rate_limits = count_rows(db, "rate_limits").await;
    let mut mail: Vec<(String, MailStatus)> = mail_outbox::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.recipient, m.status))
        .collect();
    mail.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    Kept {
        accounts: account::Entity::find().count(db).await.unwrap(),
        requests: request::Entity::find().count(db).await.unwrap(),
        tokens: request_token::Entity::find().count(db).await.unwrap(),
        audit: audit_event::Entity::find().count(db).await.unwrap(),
        rate_limits,
        mail,
    }
}

/// Moves the clock and waits until a cleanup has run past the new time
/// (the idle rate-limit counters are the last thing each run deletes).
async fn advance_and_clean(app: &mut TestApp, by: Duration) -> Kept {
    // A fresh counter that is idle once the clock moves.
    app.request_reset("marker@example.com").await.unwrap();
    app.wait_for_outbox_drained().await;
    app.clock.advance(by);
    let db = app.db.clone();
    eventually("a cleanup after the clock moved", || {
        let db = db.clone();
        async move {
            let now = kept(&db).await;
            (now.rate_limits == 0).then_some(now)
        }
    })
    .await
}

fn recipients(kept: &Kept, status: MailStatus) -> Vec<&str> {
    kept.mail
        .iter()
        .filter(|(_, s)| *s == status)
        .map(|(r, _)| r.as_str())
        .collect()
}

async fn retention_deletes_exactly_what_is_past_its_time(backend: Backend) {
    let mut app = spawn_app_with(backend, |f| {
        f.merge(("retention_interval", "50ms"))
            .merge(("retention_requests", "7d"))
            .merge(("retention_mail", "30d"))
            .merge(("retention_audit", "90d"))
    })
    .await;
    app.mailbox.reject_mailbox("dead@example.com");
    app.create_account("jane@example.com", "Jane").await;
    app.request_reset("nobody@example.com").await.unwrap();
    app.sign_up("stranger@example.com", "Stranger")
        .await
        .unwrap();
    app.sign_up("dead@example.com", "Dead").await.unwrap();
    app.wait_for_outbox_drained().await;
    let start = kept(&app.db).await;
    assert!(recipients(&start, MailStatus::Skipped).contains(&"nobody@example.com"));
    assert_eq!(
        recipients(&start, MailStatus::Dead),
        vec!["dead@example.com"]
    );

    // Six days: only idle rate-limit counters go (the marker, an unknown
    // address, adds a skipped mail job and an audit event, no request).
    let day6 = advance_and_clean(&mut app, 6 * DAY).await;
    assert_eq!(day6.requests, start.requests);
    assert_eq!(day6.tokens, start.tokens);
    assert_eq!(day6.mail.len(), start.mail.len() + 1, "{day6:?}");
    assert!(day6.audit > start.audit);

    // Nine days: finished requests and their digests go, and so does mail to
    // addresses that never had an account (older than 7 days); Jane's sent
    // mail (30 days) and every dead letter stay.
    let day9 = advance_and_clean(&mut app, 3 * DAY).await;
    assert_eq!(day9.accounts, 1);
    assert_eq!(day9.requests, 0, "{day9:?}");
    assert_eq!(day9.tokens, 0);
    assert_eq!(
        recipients(&day9, MailStatus::Sent),
        vec!["jane@example.com"],
        "her sign-up mail: {day9:?}"
    );
    assert_eq!(
        recipients(&day9, MailStatus::Skipped),
        vec!["marker@example.com"],
        "the marker queued on day 6 (each marker is queued before the clock moves): {day9:?}"
    );
    assert_eq!(
        recipients(&day9, MailStatus::Dead),
        vec!["dead@example.com"]
    );
    assert!(day9.audit > day6.audit, "audit is kept 90 days");

    // Thirty-one days: Jane's sent mail goes too; the dead letter stays.
    let day31 = advance_and_clean(&mut app, 22 * DAY).await;
    assert!(recipients(&day31, MailStatus::Sent).is_empty(), "{day31:?}");
    assert!(
        recipients(&day31, MailStatus::Skipped).is_empty(),
        "the day-9 marker is past the 7-day request retention: {day31:?}"
    );
    assert_eq!(
        recipients(&day31, MailStatus::Dead),
        vec!["dead@example.com"]
    );
    assert!(day31.audit > day9.audit);

    // Ninety-one days: the audit events of day 0 are gone, the rest stay.
    let day91 = advance_and_clean(&mut app, 60 * DAY).await;
    let cutoff = app_now(&app) - 90 * 24 * 3_600_000;
    let older = audit_event::Entity::find()
        .filter(audit_event::Column::At.lt(cutoff))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(older, 0);
    assert!(day91.audit < day31.audit, "{day91:?} vs {day31:?}");
    let from_day6 = audit_event::Entity::find()
        .filter(audit_event::Column::At.lt(cutoff + 10 * 24 * 3_600_000))
        .count(&app.db)
        .await
        .unwrap();
    assert!(from_day6 > 0, "85-day-old events stay");
    assert_eq!(day91.accounts, 1, "accounts are never purged");
}
flow_test!(retention_deletes_exactly_what_is_past_its_time);

fn app_now(app: &TestApp) -> i64 {
    use rekey::domain::Clock;
    app.clock.now_millis()
}
