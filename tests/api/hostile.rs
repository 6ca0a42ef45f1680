//! Hostile bytes: strings that are not UTF-8 in every string field of every
//! RPC, malformed and truncated messages, oversized ones, slow and silent
//! clients. Each is refused with a proper status, never `INTERNAL`, and the
//! server stays healthy for everyone else.

use std::{collections::HashMap, time::Duration};

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::{
    flow_test,
    helpers::{
        Backend, TestApp, assert_error,
        raw::{RawConnection, frame},
        spawn_app, spawn_app_with,
    },
};

/// A method the server serves, and its request message's full name.
struct Rpc {
    path: String,
    input: String,
}

/// Every method of the descriptor sets, and every message by full name.
fn schema(sets: &[&[u8]]) -> (Vec<Rpc>, HashMap<String, DescriptorProto>) {
    fn add(messages: &mut HashMap<String, DescriptorProto>, scope: &str, m: &DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        for nested in &m.nested_type {
            add(messages, &name, nested);
        }
        messages.insert(name, m.clone());
    }
    let (mut rpcs, mut messages) = (Vec::new(), HashMap::new());
    for set in sets {
        for file in FileDescriptorSet::decode(*set).unwrap().file {
            let package = file.package().to_owned();
            for message in &file.message_type {
                add(&mut messages, &format!(".{package}"), message);
            }
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(Rpc {
                        path: format!("/{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                    });
                }
            }
        }
    }
    (rpcs, messages)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Field `number` as a length-delimited field holding `payload`.
fn field(number: i32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((u64::try_from(number).unwrap() << 3) | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// For each string field of `message`, nested ones included: its path
/// (`client.user_agent`) and a message whose only content is that field,
/// holding bytes that are not UTF-8.
fn invalid_strings(
    messages: &HashMap<String, DescriptorProto>,
    message: &str,
    depth: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    for f in &messages[message].field {
        match f.r#type() {
            Type::String => cases.push((f.name().to_owned(), field(f.number(), &[0xc3, 0x28]))),
            Type::Message if depth < 3 => {
                for (path, inner) in invalid_strings(messages, f.type_name(), depth + 1) {
                    cases.push((format!("{}.{path}", f.name()), field(f.number(), &inner)));
                }
            }
            _ => {}
        }
    }
    cases
}

async fn assert_healthy(app: &mut TestApp) {
    let status = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    app.request_reset("jane@example.com").await.unwrap();
}

fn assert_malformed(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert_error(status, Code::InvalidArgument, Some("MALFORMED_MESSAGE"));
}

async fn invalid_utf8_in_any_string_field_of_any_rpc_is_invalid_argument(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let (rpcs, messages) = schema(&[
        rekey::grpc::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let mut raw = RawConnection::open(app.addr).await;
    let mut checked = Vec::new();
    for rpc in &rpcs {
        for (path, message) in invalid_strings(&messages, &rpc.input, 0) {
            let what = format!("{} {path}", rpc.path);
            let status = raw.unary(&rpc.path, frame(&message)).await;
            assert_malformed(&status, &what);
            if rpc.path.starts_with("/rekey.") {
                let details = status.get_error_details();
                let violations = &details.bad_request().expect("BadRequest").field_violations;
                assert_eq!(violations[0].field, path, "{what}");
                assert_eq!(violations[0].description, "is not valid UTF-8", "{what}");
            }
            checked.push(what);
        }
    }
    // The walk found them all: the rekey fields, health's and reflection's.
    for expected in [
        "/rekey.v1.PasswordReset/RequestReset email",
        "/rekey.v1.PasswordReset/RequestReset client.user_agent",
        "/rekey.v1.PasswordReset/VerifyToken token",
        "/rekey.v1.PasswordReset/ResetPassword new_password",
        "/rekey.v1.PasswordReset/SignUp display_name",
        "/rekey.v1.PasswordReset/SignUp client.ip",
        "/rekey.v1.Accounts/Authenticate password",
        "/grpc.health.v1.Health/Check service",
        "/grpc.health.v1.Health/Watch service",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo file_containing_symbol",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} in {checked:#?}"
        );
    }
    assert!(checked.len() >= 25, "{}", checked.len());
    assert_healthy(&mut app).await;
}
flow_test!(invalid_utf8_in_any_string_field_of_any_rpc_is_invalid_argument);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument_for_every_rpc() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let (rpcs, _) = schema(&[
        rekey::grpc::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ]);
    let mut raw = RawConnection::open(app.addr).await;
    let garbage: [&[u8]; 4] = [
        // A wire type (7) that does not exist.
        &[0x0f],
        // A field 32 bytes long, with 1 byte there.
        &[0x0a, 0x20, b'a'],
        // A varint that never ends.
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        // Field number 0.
        &[0x02, 0x00],
    ];
    for rpc in &rpcs {
        for bytes in garbage {
            let status = raw.unary(&rpc.path, frame(bytes)).await;
            assert_malformed(&status, &format!("{} {bytes:?}", rpc.path));
        }
    }
    assert_healthy(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_misframed_requests_are_invalid_argument() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let mut raw = RawConnection::open(app.addr).await;
    let sign_up = "/rekey.v1.PasswordReset/SignUp";
    let whole = frame(&field(1, b"jane@example.com"));
    let cases: [(&str, Vec<u8>); 5] = [
        ("a message cut short", whole[..whole.len() - 3].to_vec()),
        ("a prefix cut short", whole[..3].to_vec()),
        ("no message at all", Vec::new()),
        (
            "compressed without grpc-encoding",
            [&[1u8][..], &whole[1..]].concat(),
        ),
        (
            "an unknown compression flag",
            [&[7u8][..], &whole[1..]].concat(),
        ),
    ];
    for (what, body) in cases {
        let status = raw.unary(sign_up, body).await;
        assert_malformed(&status, what);
    }
    // A message followed by the start of another is cut short too.
    let status = raw
        .unary(sign_up, [whole.clone(), whole[..4].to_vec()].concat())
        .await;
    assert_malformed(&status, "a second message cut short");
    // On health and reflection (streaming) alike.
    let status = raw
        .unary("/grpc.health.v1.Health/Check", whole[..3].to_vec())
        .await;
    assert_malformed(&status, "health, cut short");
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let status = raw.unary(reflection, whole[..3].to_vec()).await;
    assert_malformed(&status, "reflection, cut short");
    assert_healthy(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_from_its_prefix_before_it_is_read() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let mut raw = RawConnection::open(app.addr).await;

    // A prefix announcing 5 MB, and nothing after it: the answer comes
    // without the body, which is never sent (the stream stays open).
    let mut call = raw.call("/rekey.v1.PasswordReset/SignUp").await;
    call.send(vec![0, 0, 0x4c, 0x4b, 0x40], false);
    let status = tokio::time::timeout(Duration::from_secs(5), call.status())
        .await
        .expect("an answer before the body");
    assert_error(&status, Code::ResourceExhausted, Some("MESSAGE_TOO_LARGE"));
    assert!(status.message().contains("16384"), "{status:?}");

    // One byte over the default 16 KiB, through a normal client.
    let email = format!("{}@example.com", "a".repeat(16_384));
    let status = app.request_reset(&email).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, Some("MESSAGE_TOO_LARGE"));

    // Exactly at the limit it is read, and judged on its content.
    let mut message = field(1, &[b'a'; 16_381]);
    assert_eq!(message.len(), 16_384);
    let status = raw
        .unary("/rekey.v1.PasswordReset/RequestReset", frame(&message))
        .await;
    assert_eq!(crate::helpers::violated_fields(&status), ["email"]);
    message.push(0);
    let status = raw
        .unary("/rekey.v1.PasswordReset/RequestReset", frame(&message))
        .await;
    assert_error(&status, Code::ResourceExhausted, Some("MESSAGE_TOO_LARGE"));
    assert_healthy(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_size_limit_is_a_setting() {
    let mut app = spawn_app_with(Backend::Sqlite, |f| f.merge(("max_message_size", "1KiB"))).await;
    let email = format!("{}@example.com", "a".repeat(1_100));
    let status = app.request_reset(&email).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, Some("MESSAGE_TOO_LARGE"));
    assert!(status.message().contains("1024"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_deadline_exceeded_while_others_are_served() {
    let mut app = spawn_app_with(Backend::Sqlite, |f| f.merge(("request_timeout", "1s"))).await;
    let mut raw = RawConnection::open(app.addr).await;
    let whole = frame(&field(1, b"jane@example.com"));
    let started = std::time::Instant::now();
    let mut slow = raw.call("/rekey.v1.PasswordReset/RequestReset").await;
    slow.send(whole[..8].to_vec(), false);
    let slow = tokio::spawn(slow.status());

    // Everyone else is served meanwhile.
    assert_healthy(&mut app).await;
    assert!(!slow.is_finished());

    let status = slow.await.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_healthy(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_and_says_nothing_is_dropped() {
    let mut app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("connection_idle_timeout", "1s"))
            .merge(("keepalive_interval", "200ms"))
    })
    .await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The server may greet (its HTTP/2 settings); then it hangs up.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed early: {waited:?}"
    );

    // A quiet HTTP/2 client answers the keep-alive pings and stays.
    let mut quiet = RawConnection::open(app.addr).await;
    let status = quiet
        .unary("/grpc.health.v1.Health/Check", frame(&[]))
        .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let status = quiet
        .unary("/grpc.health.v1.Health/Check", frame(&[]))
        .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_healthy(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |f| f.merge(("max_concurrent_streams", 3))).await;
    let mut raw = RawConnection::open(app.addr).await;
    // Once the server's settings have arrived (any answer shows they have).
    let status = raw.unary("/grpc.health.v1.Health/Check", frame(&[])).await;
    assert_eq!(status.code(), Code::Ok);
    assert_eq!(raw.max_streams(), 3);
}
