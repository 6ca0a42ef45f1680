//! TLS and mTLS with certificates made here (rcgen): a real handshake, a
//! client with and without a certificate, the plaintext health port, and a
//! rotated certificate picked up without a restart.

use std::{net::SocketAddr, path::Path};

use figment::Figment;
use rekey::{
    config::Settings,
    grpc::pb::{self, accounts_client::AccountsClient, password_reset_client::PasswordResetClient},
    startup::App,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::helpers::{Authority, RESET_PAGE, eventually};

fn write_server_files(dir: &Path, authority: &Authority) {
    let (cert, key) = authority.server();
    // Key first: the server must not load a new cert with the old key.
    std::fs::write(dir.join("tls.key.new"), key).unwrap();
    std::fs::write(dir.join("tls.crt.new"), cert).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
}

struct TlsApp {
    addr: SocketAddr,
    health_addr: SocketAddr,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn_tls_app(
    authority: &Authority,
    configure: impl FnOnce(Figment, &Path) -> Figment,
) -> TlsApp {
    let dir = tempfile::tempdir().unwrap();
    write_server_files(dir.path(), authority);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let figment = Figment::new()
        .merge(("listen", "127.0.0.1:0"))
        .merge(("health_listen", "127.0.0.1:0"))
        .merge((
            "database_url",
            format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display()),
        ))
        .merge(("mail_dir", path("mail")))
        .merge(("reset_url", RESET_PAGE))
        .merge(("argon2_memory_kib", 1024))
        .merge(("argon2_iterations", 1))
        .merge(("tls_cert_file", path("tls.crt")))
        .merge(("tls_key_file", path("tls.key")))
        .merge(("tls_reload_interval", "50ms"));
    let settings = Settings::from_figment(configure(figment, dir.path())).unwrap();
    let app = App::build(settings).await.unwrap();
    let addr = app.local_addr().unwrap();
    let health_addr = app.health_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TlsApp {
        addr,
        health_addr,
        shutdown,
        _dir: dir,
    }
}

async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn request_reset(channel: &Channel) -> Result<(), tonic::Status> {
    PasswordResetClient::new(channel.clone())
        .request_reset(pb::RequestResetRequest {
            email: "jane@example.com".into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_the_health_port_stays_plaintext() {
    let authority = Authority::new("rekey test CA");
    let app = spawn_tls_app(&authority, |f, _| f).await;

    let channel = tls_channel(app.addr, &authority.pem, None).await.unwrap();
    request_reset(&channel).await.unwrap();

    // Plaintext on the TLS port gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(request_reset(&plain).await.is_err());
    }

    // Kubernetes' grpc: probe speaks plaintext to the health port.
    let health_channel = Channel::from_shared(format!("http://{}", app.health_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(health_channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    // It serves health alone.
    assert!(request_reset(&health_channel).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_and_its_cn_names_the_caller() {
    let authority = Authority::new("rekey test CA");
    let app = spawn_tls_app(&authority, |f, dir| {
        std::fs::write(dir.join("client-ca.crt"), &authority.pem).unwrap();
        f.merge((
            "tls_client_ca_file",
            dir.join("client-ca.crt").display().to_string(),
        ))
        .merge(("tls_client_scopes", "billing=reset+auth,ops=admin"))
        .merge(("api_keys", "web:reset:web-9f3c0a1b2c3d4e5f60718293a4b5c6d7"))
    })
    .await;

    // No certificate: the handshake or the first call fails.
    if let Ok(anonymous) = tls_channel(app.addr, &authority.pem, None).await {
        assert!(request_reset(&anonymous).await.is_err());
    }
    // A certificate from another CA: refused too.
    let stranger_ca = Authority::new("someone else's CA");
    if let Ok(foreign) = tls_channel(
        app.addr,
        &authority.pem,
        Some(stranger_ca.client("billing")),
    )
    .await
    {
        assert!(request_reset(&foreign).await.is_err());
    }

    let billing = tls_channel(app.addr, &authority.pem, Some(authority.client("billing")))
        .await
        .unwrap();
    request_reset(&billing).await.unwrap();
    let status = AccountsClient::new(billing)
        .authenticate(pb::AuthenticateRequest {
            email: "nobody@example.com".into(),
            password: "correct horse battery staple".into(),
            client: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "INVALID_CREDENTIALS",
        "authenticated as billing; only the password was wrong"
    );

    let ops = tls_channel(app.addr, &authority.pem, Some(authority.client("ops")))
        .await
        .unwrap();
    let status = request_reset(&ops).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Keys and certificates combine: a key names the caller on any connection.
    let mut reset = PasswordResetClient::new(ops);
    let mut request = tonic::Request::new(pb::RequestResetRequest {
        email: "jane@example.com".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        "Bearer web-9f3c0a1b2c3d4e5f60718293a4b5c6d7"
            .parse()
            .unwrap(),
    );
    reset.request_reset(request).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_or_dropping_connections() {
    let old_authority = Authority::new("old CA");
    let app = spawn_tls_app(&old_authority, |f, _| f).await;
    let dir = app._dir.path().to_owned();
    let open = tls_channel(app.addr, &old_authority.pem, None)
        .await
        .unwrap();
    request_reset(&open).await.unwrap();

    let new_authority = Authority::new("new CA");
    write_server_files(&dir, &new_authority);

    // New connections get the new certificate once the change is noticed.
    let fresh = eventually("the new certificate to be served", || async {
        tls_channel(app.addr, &new_authority.pem, None).await.ok()
    })
    .await;
    request_reset(&fresh).await.unwrap();
    // The connection opened before the rotation still works.
    request_reset(&open).await.unwrap();
}
