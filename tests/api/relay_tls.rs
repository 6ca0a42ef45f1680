//! TLS to the SMTP relay with a private certificate authority: a relay
//! offering STARTTLS, or TLS from the first byte, with a certificate made
//! here (rcgen), trusted through `REKEY_SMTP_CA_FILE` and refused without it.

use std::{net::SocketAddr, sync::Arc};

use rekey::store::{MailStatus, entities::mail_outbox};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sea_orm::EntityTrait;

use crate::{
    config::Run,
    helpers::{
        Authority, Backend, PASSWORD, RESET_PAGE, SmtpSink, eventually, install_ring_provider,
        spawn_app_with_mailbox,
    },
};

/// A relay whose certificate `authority` signed, the URL rekey reaches it
/// by, and a file holding `authority`'s certificate.
struct PrivateRelay {
    relay: SmtpSink,
    url: String,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateRelay {
    /// A relay offering STARTTLS, reached with `tls=required`.
    fn starttls() -> Self {
        let authority = Authority::new("mail relay CA");
        let relay = SmtpSink::start_starttls(&authority);
        let url = format!("smtp://localhost:{}?tls=required", relay.addr.port());
        Self::with_ca_file(relay, url, &authority)
    }

    /// A relay speaking TLS from the first byte, as on port 465: a TLS
    /// listener in front of a plain SMTP sink, reached with `smtps://`.
    async fn implicit_tls() -> Self {
        let authority = Authority::new("mail relay CA");
        let relay = SmtpSink::start();
        let front = implicit_tls_front(&authority, relay.addr).await;
        let url = format!("smtps://localhost:{}", front.port());
        Self::with_ca_file(relay, url, &authority)
    }

    fn with_ca_file(relay: SmtpSink, url: String, authority: &Authority) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("relay-ca.pem");
        std::fs::write(&ca_file, &authority.pem).unwrap();
        Self {
            relay,
            url,
            ca_file,
            _dir: dir,
        }
    }

    /// A sign-up's mail reaches the relay with its CA file set, and its
    /// link works.
    async fn delivers_with_the_ca_file(&self) {
        let (url, ca_file) = (self.url.clone(), self.ca_file.clone());
        let mut app = spawn_app_with_mailbox(Backend::Sqlite, self.relay.clone(), |figment| {
            figment
                .merge(("smtp_url", url))
                .merge(("smtp_ca_file", ca_file))
        })
        .await;
        app.sign_up("jane@example.com", "Jane").await.unwrap();
        let mail = self.relay.wait_for("jane@example.com", 1).await.remove(0);
        app.reset_password(&mail.token(), PASSWORD).await.unwrap();
    }
}

/// A TLS listener (a certificate for `localhost` signed by `authority`)
/// in front of the plain SMTP server at `behind`.
async fn implicit_tls_front(authority: &Authority, behind: SocketAddr) -> SocketAddr {
    install_ring_provider();
    let (cert, key) = authority.server();
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(behind).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_to_a_relay_whose_ca_is_in_the_ca_file() {
    // `tls=required`: lettre sends nothing unless STARTTLS succeeded.
    PrivateRelay::starttls().delivers_with_the_ca_file().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_implicit_tls_to_a_relay_whose_ca_is_in_the_ca_file() {
    // The sink behind the TLS listener is reached only through it.
    PrivateRelay::implicit_tls()
        .await
        .delivers_with_the_ca_file()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_the_relay_is_refused_and_its_mail_waits_for_a_retry() {
    let private = PrivateRelay::starttls();
    let url = private.url.clone();
    let mut app = spawn_app_with_mailbox(Backend::Sqlite, private.relay.clone(), |figment| {
        figment.merge(("smtp_url", url))
    })
    .await;

    app.sign_up("jane@example.com", "Jane").await.unwrap();

    let db = app.db.clone();
    let job = eventually("the first attempt's outcome", || {
        let db = db.clone();
        async move {
            let jobs = mail_outbox::Entity::find().all(&db).await.unwrap();
            jobs.into_iter().find(|job| job.last_error.is_some())
        }
    })
    .await;
    // A relay the worker cannot trust is a setup problem: kept, not buried.
    assert_eq!(job.status, MailStatus::Pending);
    assert_eq!(job.attempts, 1);
    let error = job.last_error.unwrap();
    assert!(error.contains("certificate"), "{error}");
    assert!(!error.contains("jane@example.com"), "{error}");
    assert!(private.relay.all().is_empty());
}

#[test]
fn check_config_connect_trusts_the_relay_through_the_ca_file_alone() {
    let private = PrivateRelay::starttls();
    let run = Run::new();
    let database = run.database_url();
    let other_ca = run.path().join("other-ca.pem");
    std::fs::write(&other_ca, Authority::new("another CA").pem).unwrap();
    let check = |ca_file: Option<&std::path::Path>| {
        let mut vars = vec![
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", database.as_str()),
            ("REKEY_SMTP_URL", private.url.as_str()),
            ("REKEY_SMTP_TIMEOUT", "5s"),
        ];
        if let Some(file) = ca_file {
            vars.push(("REKEY_SMTP_CA_FILE", file.to_str().unwrap()));
        }
        run.rekey(&["check-config", "--connect"], &vars)
    };
    let relay = format!("smtp relay localhost:{}", private.relay.addr.port());

    let trusted = check(Some(&private.ca_file));
    assert_eq!(trusted.code, Some(0), "{trusted:?}");
    assert!(
        trusted.stdout.contains(&format!("\n{relay}: ok\n")),
        "{trusted:?}"
    );

    // The public roots, then another authority, in place of the relay's.
    for refused in [check(None), check(Some(&other_ca))] {
        assert_eq!(refused.code, Some(1), "{refused:?}");
        let failed = format!("\n{relay}: FAILED: ");
        assert!(refused.stdout.contains(&failed), "{refused:?}");
        assert!(refused.stdout.contains("certificate"), "{refused:?}");
    }

    let missing = run.path().join("missing.pem");
    let unreadable = check(Some(&missing));
    assert_eq!(unreadable.code, Some(2), "{unreadable:?}");
    assert!(
        unreadable.stderr.starts_with(&format!(
            "rekey: invalid configuration: REKEY_SMTP_CA_FILE: {}: ",
            missing.display()
        )),
        "{unreadable:?}"
    );
}
