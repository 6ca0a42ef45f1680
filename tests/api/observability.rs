//! Metrics, traces and shutdown as an operator sees them: `/metrics`
//! scraped after a flow, spans exported to an OTLP collector run here, and
//! SIGTERM on the real binary.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::Span,
};
use rekey::grpc::pb;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::{mpsc, oneshot},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, PASSWORD, SmtpSink, eventually, spawn_app_with};

/// `GET /metrics` over a plain TCP connection; the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: rekey\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let found: HashMap<&str, &str> = rest
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, v)| found.get(k) == Some(v))
            .then(|| value.parse().unwrap())
    })
}

fn rpc(method: &'static str, code: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("rpc_system", "grpc"),
        ("rpc_service", "rekey.v1.PasswordReset"),
        ("rpc_method", method),
        ("rpc_grpc_status_code", code),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_moves_the_metrics_with_their_labels() {
    let mut app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("metrics_listen", "127.0.0.1:0"))
            .merge(("rate_limit_per_email", "2/1h"))
    })
    .await;
    let addr = app.metrics_addr.expect("metrics are served");
    let before = scrape(addr).await;
    assert_eq!(sample(&before, "rekey_readiness", &[]), Some(1.0));

    app.create_account("jane@example.com", "Jane").await;
    app.authenticate("jane@example.com", PASSWORD)
        .await
        .unwrap();
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let refused = app.sign_up("jane@example.com", "Jane").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    app.wait_for_outbox_drained().await;

    let text = eventually("the outbox gauge to count the sent mail", || async {
        let text = scrape(addr).await;
        (sample(&text, "rekey_outbox_mails", &[("status", "sent")]) == Some(2.0)).then_some(text)
    })
    .await;
    let count = "rpc_server_duration_seconds_count";
    assert_eq!(
        sample(&text, count, &rpc("SignUp", "0")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, count, &rpc("SignUp", "8")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, count, &rpc("ResetPassword", "0")), Some(1.0));
    let authenticate = [
        ("rpc_service", "rekey.v1.Accounts"),
        ("rpc_method", "Authenticate"),
        ("rpc_grpc_status_code", "0"),
    ];
    assert_eq!(sample(&text, count, &authenticate), Some(1.0), "{text}");
    let bucket = [("rpc_method", "Authenticate"), ("le", "+Inf")];
    assert_eq!(
        sample(&text, "rpc_server_duration_seconds_bucket", &bucket),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "rekey_rate_limit_rejections_total",
            &[("limit", "per_email")]
        ),
        Some(1.0)
    );
    // The first sign-up mail is a sign-up, the second "already registered".
    for kind in ["sign_up", "already_registered"] {
        assert_eq!(
            sample(&text, "rekey_mail_sent_total", &[("kind", kind)]),
            Some(1.0),
            "{kind}: {text}"
        );
    }
    assert_eq!(
        sample(&text, "rekey_outbox_mails", &[("status", "pending")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "rekey_outbox_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    // A hash for the new password and one to check it at least.
    let hashes = sample(&text, "rekey_hash_wait_duration_seconds_count", &[]).unwrap();
    assert!(hashes >= 2.0, "{text}");
    assert!(sample(&text, "rekey_hash_permits_capacity", &[]).unwrap() >= 1.0);
    assert_eq!(sample(&text, "rekey_hash_permits_in_use", &[]), Some(0.0));
    assert_eq!(sample(&text, "rekey_hash_queue_length", &[]), Some(0.0));
    // SQLite file default: four connections, readers beside the writer.
    assert_eq!(sample(&text, "db_client_connection_max", &[]), Some(4.0));
    assert!(sample(&text, "db_client_connection_count", &[("state", "idle")]).is_some());
    assert!(sample(&text, "db_client_connection_count", &[("state", "used")]).is_some());
    let build = sample(
        &text,
        "rekey_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
    );
    assert_eq!(build, Some(1.0), "{text}");
    assert!(text.contains("git_commit=\""), "{text}");
    assert!(!text.contains("jane@"), "an address in the metrics: {text}");
}

/// An OTLP trace collector: keeps every span exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text_of(kv: &KeyValue) -> String {
    format!("{:?}", kv.value)
}

/// The real binary on loopback with a JSON log on stderr, read line by line.
struct Rekey {
    child: Child,
    logs: mpsc::UnboundedReceiver<serde_json::Value>,
    addr: SocketAddr,
}

impl Rekey {
    async fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::spawn(dir, env, None).await
    }

    /// As [`Self::start`], but once it listens its stderr is left unread
    /// until `resume` is sent, as a stalled log collector leaves it.
    async fn start_holding_logs(
        dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> (Self, oneshot::Sender<()>) {
        let (resume, held) = oneshot::channel();
        (Self::spawn(dir, env, Some(held)).await, resume)
    }

    async fn spawn(
        dir: &std::path::Path,
        env: &[(&str, String)],
        mut hold: Option<oneshot::Receiver<()>>,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rekey"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REKEY_LISTEN", "127.0.0.1:0")
            .env(
                "REKEY_DATABASE_URL",
                format!("sqlite://{}/rekey.db?mode=rwc", dir.display()),
            )
            .env("REKEY_MAIL_DIR", dir.join("mail"))
            .env("REKEY_RESET_URL", "https://app.example.com/reset")
            .env("REKEY_ARGON2_MEMORY_KIB", "1024")
            .env("REKEY_ARGON2_ITERATIONS", "1")
            .env("REKEY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (send, mut logs) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let parsed: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                let listening = parsed["fields"]["message"] == "rekey listening";
                if send.send(parsed).is_err() {
                    break;
                }
                if let Some(held) = hold.take_if(|_| listening) {
                    let _ = held.await;
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = logs.recv().await.expect("rekey exited before listening");
                if line["fields"]["message"] == "rekey listening" {
                    break line["fields"]["addr"].as_str().unwrap().parse().unwrap();
                }
            }
        })
        .await
        .expect("rekey did not start");
        Self { child, logs, addr }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_span_joins_the_callers_trace_and_its_mail_links_to_it() {
    let (collector, collector_addr) = Collector::start().await;
    let mailbox = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let rekey = Rekey::start(
        dir.path(),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_addr}"),
            ),
            ("OTEL_SERVICE_NAME", "rekey-under-test".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
            ("REKEY_SMTP_URL", format!("smtp://{}", mailbox.addr)),
            ("REKEY_MAIL_FROM", "rekey <no-reply@rekey.test>".to_owned()),
        ],
    )
    .await;
    let email = "trace.me@example.com";
    let mut request = tonic::Request::new(pb::SignUpRequest {
        email: email.into(),
        display_name: "Tracy".into(),
        ..Default::default()
    });
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    pb::password_reset_client::PasswordResetClient::new(rekey.channel().await)
        .sign_up(request)
        .await
        .unwrap();
    let token = mailbox.wait_for(email, 1).await.remove(0).token();

    let hex = |bytes: &[u8]| hex::encode(bytes);
    let (sign_up, mail_job, spans) = eventually("the SignUp and mail job spans", || async {
        let spans = collector.spans();
        let sign_up = spans
            .iter()
            .find(|s| s.name == "rekey.v1.PasswordReset/SignUp")?
            .clone();
        let mail_job = spans.iter().find(|s| s.name == "mail_job")?.clone();
        Some((sign_up, mail_job, spans))
    })
    .await;

    assert_eq!(hex(&sign_up.trace_id), TRACE_ID);
    assert_eq!(hex(&sign_up.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(sign_up.kind, 2, "a server span");
    let string = |s: &str| Some(Value::StringValue(s.to_owned()));
    assert_eq!(attribute(&sign_up, "rpc.system").cloned(), string("grpc"));
    assert_eq!(
        attribute(&sign_up, "rpc.service").cloned(),
        string("rekey.v1.PasswordReset")
    );
    assert_eq!(attribute(&sign_up, "rpc.method").cloned(), string("SignUp"));
    assert_eq!(
        attribute(&sign_up, "rpc.grpc.status_code").cloned(),
        Some(Value::IntValue(0))
    );

    // The mail job runs in a trace of its own, linked to the request's.
    assert_ne!(hex(&mail_job.trace_id), TRACE_ID);
    let link = mail_job
        .links
        .first()
        .expect("the mail job links its request");
    assert_eq!(hex(&link.trace_id), TRACE_ID);
    let in_sign_up: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    assert!(
        in_sign_up.iter().any(|s| s.span_id == link.span_id),
        "the link points at a span of the SignUp call"
    );
    assert!(attribute(&mail_job, "kind").is_some());

    for span in &spans {
        for kv in span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| &e.attributes))
        {
            let value = text_of(kv);
            assert!(!value.contains(email), "{}: {value}", kv.key);
            assert!(!value.contains(&token), "{}: {value}", kv.key);
        }
    }
    drop(rekey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_keeps_serving_for_the_delay_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut rekey = Rekey::start(dir.path(), &[("REKEY_SHUTDOWN_DELAY", "2s".to_owned())]).await;
    let readiness = |channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await
            .map(|r| r.into_inner().status())
    };
    assert_eq!(
        readiness(rekey.channel().await).await.unwrap(),
        ServingStatus::Serving
    );

    rekey.terminate();
    let signalled = Instant::now();
    eventually("readiness to turn NOT_SERVING", || async {
        let status = readiness(rekey.channel().await).await.ok()?;
        (status == ServingStatus::NotServing).then_some(())
    })
    .await;
    // The listener still accepts new connections and answers calls.
    let fresh = rekey.channel().await;
    assert_eq!(readiness(fresh).await.unwrap(), ServingStatus::NotServing);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "checked within the delay"
    );

    let status = tokio::time::timeout(Duration::from_secs(15), rekey.child.wait())
        .await
        .expect("rekey exits after the delay")
        .unwrap();
    assert!(
        signalled.elapsed() >= Duration::from_millis(1900),
        "exited {:?} after SIGTERM, before the delay",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    let mut logged = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), rekey.logs.recv()).await
    {
        logged.push(line["fields"]["message"].to_string());
    }
    assert!(
        logged
            .iter()
            .any(|m| m.contains("still serving while endpoints are removed")),
        "{logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_while_nobody_reads_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let off = || "off".to_owned();
    let (mut rekey, resume) = Rekey::start_holding_logs(
        dir.path(),
        &[
            ("REKEY_RATE_LIMIT_PER_EMAIL", off()),
            ("REKEY_RATE_LIMIT_PER_IP", off()),
        ],
    )
    .await;
    let client = pb::password_reset_client::PasswordResetClient::new(rekey.channel().await);
    // Each call logs a line: together more than a pipe holds (64 KiB)
    // before its writer has to wait (with stderr written directly, 78 of
    // them were answered in 30 s).
    const CALLS: usize = 2_000;
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let calls = futures::stream::iter(0..CALLS)
        .map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .request_reset(pb::RequestResetRequest {
                        email: format!("user{i}@example.com"),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(32)
        .for_each(|outcome| {
            if outcome.is_ok() {
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            std::future::ready(())
        });
    // A debug build answered them within about a second.
    let _ = tokio::time::timeout(Duration::from_secs(30), calls).await;
    assert_eq!(answered.into_inner(), CALLS, "calls answered");

    // Read again: every line is there, none dropped.
    resume.send(()).unwrap();
    rekey.terminate();
    let mut queued = 0;
    while let Some(line) = rekey.logs.recv().await {
        if line["fields"]["message"] == "mail queued" {
            queued += 1;
        }
    }
    assert_eq!(queued, CALLS);
}

/// A caller cannot grow the metrics' label set: a call to a made-up method,
/// refused before routing for want of a key, is counted as `_OTHER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_are_counted_under_one_label() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("metrics_listen", "127.0.0.1:0"))
            .merge(("api_keys", "web:reset:web-9f3c0a1b2c3d4e5f60718293a4b5c6d7"))
    })
    .await;
    let addr = app.metrics_addr.expect("metrics are served");
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    for made_up in ["Made-Up-1", "Made-Up-2"] {
        grpc.ready().await.unwrap();
        let path = format!("/rekey.v1.PasswordReset/{made_up}");
        let refused = grpc
            .unary(
                tonic::Request::new(pb::GetStatsRequest::default()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::<pb::GetStatsRequest, pb::GetStatsResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let text = scrape(addr).await;
    assert!(!text.contains("Made-Up"), "{text}");
    let other = [
        ("rpc_service", "_OTHER"),
        ("rpc_method", "_OTHER"),
        ("rpc_grpc_status_code", "16"),
    ];
    assert_eq!(
        sample(&text, "rpc_server_duration_seconds_count", &other),
        Some(2.0),
        "{text}"
    );
}
