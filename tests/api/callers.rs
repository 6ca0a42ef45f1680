//! Caller authentication with API keys: every RPC against no key, a wrong
//! key, a key without the scope and the right key.

use rekey::{
    grpc::pb::{
        self, accounts_client::AccountsClient, admin_client::AdminClient,
        password_reset_client::PasswordResetClient,
    },
    store::{AuditKind, entities::audit_event},
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::{
    flow_test,
    helpers::{Backend, TestApp, captured_logs, spawn_app_with},
};

const WEB_SECRET: &str = "web-9f3c0a1b2c3d4e5f60718293a4b5c6d7";
const LOGIN_SECRET: &str = "login-c41d0a1b2c3d4e5f60718293a4b5c6";
const OPS_SECRET: &str = "ops-77aa0a1b2c3d4e5f60718293a4b5c6d7";

async fn spawn_with_keys(backend: Backend) -> TestApp {
    spawn_app_with(backend, |figment| {
        figment.merge((
            "api_keys",
            format!("web:reset:{WEB_SECRET},login:auth:{LOGIN_SECRET},ops:admin:{OPS_SECRET}"),
        ))
    })
    .await
}

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

const RPCS: [&str; 11] = [
    "ListRequests",
    "RevokeRequest",
    "ListMail",
    "RetryMail",
    "ListAuditEvents",
    "GetStats",
    "RequestReset",
    "VerifyToken",
    "ResetPassword",
    "SignUp",
    "Authenticate",
];

/// Calls `rpc` with `key`; returns the status it ended with.
async fn call(channel: &Channel, rpc: &str, key: Option<&str>) -> Status {
    let mut reset = PasswordResetClient::new(channel.clone());
    let mut accounts = AccountsClient::new(channel.clone());
    let mut admin = AdminClient::new(channel.clone());
    let token = "A".repeat(43);
    let result = match rpc {
        "ListRequests" => admin
            .list_requests(with_key(pb::ListRequestsRequest::default(), key))
            .await
            .map(drop),
        "RevokeRequest" => admin
            .revoke_request(with_key(
                pb::RevokeRequestRequest {
                    request_id: "no-such-request".into(),
                },
                key,
            ))
            .await
            .map(drop),
        "ListMail" => admin
            .list_mail(with_key(pb::ListMailRequest::default(), key))
            .await
            .map(drop),
        "RetryMail" => admin
            .retry_mail(with_key(pb::RetryMailRequest { mail_id: 999 }, key))
            .await
            .map(drop),
        "ListAuditEvents" => admin
            .list_audit_events(with_key(pb::ListAuditEventsRequest::default(), key))
            .await
            .map(drop),
        "GetStats" => admin
            .get_stats(with_key(pb::GetStatsRequest::default(), key))
            .await
            .map(drop),
        "RequestReset" => reset
            .request_reset(with_key(
                pb::RequestResetRequest {
                    email: "jane@example.com".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "VerifyToken" => reset
            .verify_token(with_key(pb::VerifyTokenRequest { token }, key))
            .await
            .map(drop),
        "ResetPassword" => reset
            .reset_password(with_key(
                pb::ResetPasswordRequest {
                    token,
                    new_password: "correct horse battery staple".into(),
                },
                key,
            ))
            .await
            .map(drop),
        "SignUp" => reset
            .sign_up(with_key(
                pb::SignUpRequest {
                    email: "jane@example.com".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "Authenticate" => accounts
            .authenticate(with_key(
                pb::AuthenticateRequest {
                    email: "nobody@example.com".into(),
                    password: "correct horse battery staple".into(),
                    client: None,
                },
                key,
            ))
            .await
            .map(drop),
        other => panic!("unknown rpc {other}"),
    };
    result.err().unwrap_or_else(|| Status::ok(""))
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

async fn every_rpc_needs_a_known_key_with_its_scope(backend: Backend) {
    let app = spawn_with_keys(backend).await;
    for rpc in RPCS {
        let admin = RPCS[..6].contains(&rpc);
        let (right, other_scopes) = if rpc == "Authenticate" {
            (LOGIN_SECRET, [WEB_SECRET, OPS_SECRET])
        } else if admin {
            (OPS_SECRET, [WEB_SECRET, LOGIN_SECRET])
        } else {
            (WEB_SECRET, [LOGIN_SECRET, OPS_SECRET])
        };
        let wrong = "not-a-key-0123456789abcdef0123456789";
        for key in [None, Some(wrong)] {
            let status = call(&app.channel, rpc, key).await;
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc} {status:?}");
            assert_eq!(reason(&status), "API_KEY_INVALID", "{rpc}");
        }
        for key in other_scopes {
            let status = call(&app.channel, rpc, Some(key)).await;
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc} {status:?}");
            assert_eq!(reason(&status), "API_KEY_SCOPE", "{rpc}");
        }
        // The right key reaches the use case, which answers for itself.
        let status = call(&app.channel, rpc, Some(right)).await;
        let expected = match rpc {
            "RequestReset" | "SignUp" => (Code::Ok, ""),
            "VerifyToken" | "ResetPassword" => (Code::NotFound, "TOKEN_INVALID"),
            "ListRequests" | "ListMail" | "ListAuditEvents" | "GetStats" => (Code::Ok, ""),
            "RevokeRequest" => (Code::NotFound, "REQUEST_NOT_FOUND"),
            "RetryMail" => (Code::NotFound, "MAIL_NOT_FOUND"),
            _ => (Code::Unauthenticated, "INVALID_CREDENTIALS"),
        };
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            expected,
            "{rpc} {status:?}"
        );
    }
}
flow_test!(every_rpc_needs_a_known_key_with_its_scope);

async fn health_and_reflection_need_no_key(backend: Backend) {
    let app = spawn_with_keys(backend).await;
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
}
flow_test!(health_and_reflection_need_no_key);

async fn the_key_name_is_audited_and_the_secret_never_logged(backend: Backend) {
    let app = spawn_with_keys(backend).await;
    assert_eq!(
        call(&app.channel, "RequestReset", Some(WEB_SECRET))
            .await
            .code(),
        Code::Ok
    );
    assert_eq!(
        call(&app.channel, "Authenticate", Some(LOGIN_SECRET))
            .await
            .code(),
        Code::Unauthenticated
    );
    call(
        &app.channel,
        "SignUp",
        Some("not-a-key-0123456789abcdef0123456789"),
    )
    .await;

    let audited = |kind: AuditKind| {
        audit_event::Entity::find()
            .filter(audit_event::Column::Kind.eq(kind))
            .one(&app.db)
    };
    let requested = audited(AuditKind::ResetRequested).await.unwrap().unwrap();
    assert_eq!(requested.caller.as_deref(), Some("web"));
    let failed = audited(AuditKind::AuthenticationFailed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.caller.as_deref(), Some("login"));

    let logs = captured_logs();
    assert!(logs.contains("caller=\"web\"") || logs.contains("caller=web"));
    for secret in [
        WEB_SECRET,
        LOGIN_SECRET,
        "not-a-key-0123456789abcdef0123456789",
    ] {
        assert!(!logs.contains(secret), "a key reached the logs");
    }
}
flow_test!(the_key_name_is_audited_and_the_secret_never_logged);

/// Neither a key's name nor a certificate's CN has a length limit: a long
/// name is audited whole (PostgreSQL's column once held 64 characters and
/// refused the call's write).
async fn a_long_caller_name_is_audited_whole(backend: Backend) {
    let name = format!("billing-service-production-eu-west-1-{}", "x".repeat(70));
    let app = spawn_app_with(backend, |figment| {
        figment.merge(("api_keys", format!("{name}:reset:{WEB_SECRET}")))
    })
    .await;
    assert_eq!(
        call(&app.channel, "RequestReset", Some(WEB_SECRET))
            .await
            .code(),
        Code::Ok
    );
    let requested = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::ResetRequested))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(requested.caller.as_deref(), Some(name.as_str()));
}
flow_test!(a_long_caller_name_is_audited_whole);

/// HTTP auth schemes are case-insensitive: `bearer` and `BEARER` work too.
async fn the_bearer_scheme_is_accepted_in_any_case(backend: Backend) {
    let app = spawn_with_keys(backend).await;
    for scheme in ["bearer", "BEARER"] {
        let mut request = Request::new(pb::GetStatsRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {OPS_SECRET}").parse().unwrap(),
        );
        AdminClient::new(app.channel.clone())
            .get_stats(request)
            .await
            .unwrap_or_else(|status| panic!("{scheme}: {status:?}"));
    }
}
flow_test!(the_bearer_scheme_is_accepted_in_any_case);
