//! The Admin API: requests, mail and audit events listed and paged, a
//! request revoked, a dead letter retried and delivered, stats.

use std::time::Duration;

use rekey::grpc::pb;

use crate::{
    flow_test,
    helpers::{
        Backend, TestApp, assert_error, eventually, spawn_app, spawn_app_with, violated_fields,
    },
};

async fn list_requests(
    app: &mut TestApp,
    request: pb::ListRequestsRequest,
) -> pb::ListRequestsResponse {
    app.admin.list_requests(request).await.unwrap().into_inner()
}

async fn audit_events(
    app: &mut TestApp,
    request: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    app.admin
        .list_audit_events(request)
        .await
        .unwrap()
        .into_inner()
        .events
}

/// Every page of open requests, `page_size` at a time.
async fn all_pages(app: &mut TestApp, page_size: i32) -> Vec<Vec<pb::AdminRequest>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = list_requests(
            app,
            pb::ListRequestsRequest {
                page_size,
                page_token: page_token.clone(),
                ..Default::default()
            },
        )
        .await;
        pages.push(page.requests);
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

async fn open_requests_are_listed_and_paged_stably(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let jane = app.create_account("jane@example.com", "Jane").await;
    for n in 0..5 {
        app.sign_up(&format!("user{n}@example.com"), "User")
            .await
            .unwrap();
    }
    app.wait_for_outbox_drained().await;
    app.request_reset("jane@example.com").await.unwrap();
    app.wait_for_outbox_drained().await;

    let pages = all_pages(&mut app, 2).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 2, 2]);
    let listed: Vec<pb::AdminRequest> = pages.into_iter().flatten().collect();
    // Newest first: Jane's reset, then the sign-ups from user4 down.
    let hints: Vec<&str> = listed.iter().map(|r| r.email_hint.as_str()).collect();
    assert_eq!(
        hints,
        vec![
            "j***@example.com",
            "u***@example.com",
            "u***@example.com",
            "u***@example.com",
            "u***@example.com",
            "u***@example.com"
        ]
    );
    assert_eq!(listed[0].purpose(), pb::Purpose::Reset);
    assert_eq!(listed[0].account_id, jane);
    assert!(listed.iter().all(|r| r.state() == pb::RequestState::Open));
    assert!(listed.iter().all(|r| r.mails_sent == 1), "{listed:?}");
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at.unwrap().seconds >= w[1].created_at.unwrap().seconds)
    );

    // A page token stays valid while requests are added.
    let first = list_requests(
        &mut app,
        pb::ListRequestsRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    app.sign_up("late@example.com", "Late").await.unwrap();
    app.wait_for_outbox_drained().await;
    let second = list_requests(
        &mut app,
        pb::ListRequestsRequest {
            page_size: 3,
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<&str> = first
        .requests
        .iter()
        .chain(&second.requests)
        .map(|r| r.request_id.as_str())
        .collect();
    let expected: Vec<&str> = listed.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, expected);

    // Filters: purpose, and the used sign-up of Jane's account.
    let resets = list_requests(
        &mut app,
        pb::ListRequestsRequest {
            purpose: pb::Purpose::Reset.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resets.requests.len(), 1);
    let used = list_requests(
        &mut app,
        pb::ListRequestsRequest {
            state: pb::RequestState::Used.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(used.requests.len(), 1);
    assert_eq!(used.requests[0].purpose(), pb::Purpose::SignUp);

    // Bad paging is a field error, not a crash.
    for request in [
        pb::ListRequestsRequest {
            page_size: -1,
            ..Default::default()
        },
        pb::ListRequestsRequest {
            page_token: "not a token".into(),
            ..Default::default()
        },
    ] {
        let status = app.admin.list_requests(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}
flow_test!(open_requests_are_listed_and_paged_stably);

async fn a_revoked_request_stops_its_link(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.request_reset("jane@example.com").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    let open = list_requests(&mut app, pb::ListRequestsRequest::default()).await;
    let request_id = open.requests[0].request_id.clone();

    let revoked = app
        .admin
        .revoke_request(pb::RevokeRequestRequest {
            request_id: request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(revoked.state(), pb::RequestState::Revoked);
    let status = app.verify(&mail.token()).await.unwrap_err();
    assert_error(
        &status,
        tonic::Code::FailedPrecondition,
        Some("TOKEN_REVOKED"),
    );

    let again = app
        .admin
        .revoke_request(pb::RevokeRequestRequest {
            request_id: request_id.clone(),
        })
        .await
        .unwrap_err();
    assert_error(
        &again,
        tonic::Code::FailedPrecondition,
        Some("REQUEST_NOT_OPEN"),
    );
    let unknown = app
        .admin
        .revoke_request(pb::RevokeRequestRequest {
            request_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_error(&unknown, tonic::Code::NotFound, Some("REQUEST_NOT_FOUND"));

    let revocations = audit_events(
        &mut app,
        pb::ListAuditEventsRequest {
            kind: "revoked".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].request_id, request_id);
    assert_eq!(revocations[0].email_hint, "j***@example.com");
}
flow_test!(a_revoked_request_stops_its_link);

async fn a_dead_letter_is_listed_retried_and_delivered_with_a_working_link(backend: Backend) {
    // One attempt: the relay's refusal makes a dead letter at once.
    let mut app = spawn_app_with(backend, |f| f.merge(("mail_max_attempts", 1))).await;
    app.mailbox.refuse_next(1);
    app.sign_up("late@example.com", "Late").await.unwrap();
    let dead = eventually("a dead letter", || {
        let mut admin = app.admin.clone();
        async move {
            let mail = admin
                .list_mail(pb::ListMailRequest {
                    status: pb::MailStatus::Dead.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .mail;
            mail.into_iter().next()
        }
    })
    .await;
    assert_eq!(dead.kind(), pb::MailKind::SignUp);
    assert_eq!(dead.recipient_hint, "l***@example.com");
    assert!(!dead.last_error.is_empty());
    assert!(!dead.last_error.contains("late@example.com"), "{dead:?}");
    assert_eq!(
        dead.next_attempt_at, None,
        "a dead letter is not tried again"
    );
    assert!(app.mailbox.to("late@example.com").is_empty());

    // The link's lifetime passes before the operator retries: the retried
    // mail carries a link to a fresh request, which works.
    app.clock.advance(Duration::from_secs(25 * 3600));
    let retried = app
        .admin
        .retry_mail(pb::RetryMailRequest {
            mail_id: dead.mail_id,
        })
        .await
        .unwrap()
        .into_inner()
        .mail
        .unwrap();
    assert_eq!(retried.status(), pb::MailStatus::Pending);
    assert_eq!(retried.attempts, 0);
    assert!(retried.next_attempt_at.is_some(), "{retried:?}");
    let mail = app.mailbox.wait_for("late@example.com", 1).await.remove(0);
    let verified = app.verify(&mail.token()).await.unwrap();
    assert_eq!(verified.purpose(), pb::Purpose::SignUp);

    let not_dead = app
        .admin
        .retry_mail(pb::RetryMailRequest {
            mail_id: dead.mail_id,
        })
        .await
        .unwrap_err();
    assert_error(
        &not_dead,
        tonic::Code::FailedPrecondition,
        Some("MAIL_NOT_DEAD"),
    );
    let retries = audit_events(
        &mut app,
        pb::ListAuditEventsRequest {
            kind: "mail_retried".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(retries.len(), 1);
}
flow_test!(a_dead_letter_is_listed_retried_and_delivered_with_a_working_link);

async fn audit_events_filter_and_page_and_stats_add_up(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let jane = app.create_account("jane@example.com", "Jane").await;
    for _ in 0..3 {
        app.authenticate("jane@example.com", "wrong password!")
            .await
            .unwrap_err();
    }
    app.authenticate("nobody@example.com", "wrong password!")
        .await
        .unwrap_err();
    app.request_reset("nobody@example.com").await.unwrap();
    app.wait_for_outbox_drained().await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .admin
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 1,
                page_token: page_token.clone(),
                kind: "authentication_failed".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0].event_id > w[1].event_id));
    let janes = audit_events(
        &mut app,
        pb::ListAuditEventsRequest {
            account_id: jane.clone(),
            kind: "authentication_failed".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(janes.len(), 3);
    let future = audit_events(
        &mut app,
        pb::ListAuditEventsRequest {
            since: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
    let bad_kind = app
        .admin
        .list_audit_events(pb::ListAuditEventsRequest {
            kind: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), tonic::Code::InvalidArgument);

    let stats = app
        .admin
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.mail_sent, 1, "{stats:?}");
    assert_eq!(stats.mail_skipped, 1, "{stats:?}");
    assert_eq!((stats.mail_pending, stats.mail_dead), (0, 0));
    assert!(stats.oldest_pending_age.is_none());
    assert_eq!(
        (stats.open_reset_requests, stats.open_sign_up_requests),
        (0, 0)
    );
    app.sign_up("new@example.com", "New").await.unwrap();
    app.wait_for_outbox_drained().await;
    let stats = app
        .admin
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.open_sign_up_requests, 1);
    assert_eq!(stats.mail_sent, 2);
}
flow_test!(audit_events_filter_and_page_and_stats_add_up);

/// A missing mail id and filter values this server does not know are bad
/// arguments naming the field, not "not found" or a silently dropped filter
/// (`violated_fields` checks the code is `INVALID_ARGUMENT`).
async fn bad_ids_and_unknown_filter_values_are_invalid_arguments(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let refused = app
        .admin
        .retry_mail(pb::RetryMailRequest { mail_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["mail_id"]);

    let refused = app
        .admin
        .list_requests(pb::ListRequestsRequest {
            state: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["state"]);

    let refused = app
        .admin
        .list_mail(pb::ListMailRequest {
            kind: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["kind"]);
}
flow_test!(bad_ids_and_unknown_filter_values_are_invalid_arguments);
