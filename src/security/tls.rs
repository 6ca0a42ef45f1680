//! TLS for the gRPC port: a certificate and key from PEM files, optionally
//! a client CA that makes client certificates mandatory (mTLS). The files
//! are re-read when they change (cert-manager rotates them): new
//! connections get the new certificate, open ones keep theirs.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must be signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("the client CA is not usable")]
    ClientCa(#[source] rustls::server::VerifierBuilderError),
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

impl TlsFiles {
    /// Builds an acceptor from the files as they are now.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert).map_err(TlsError::Config)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(TlsError::ClientCa)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::Read {
            path: self.key.clone(),
            source,
        })?;
        let mut config = builder
            .with_single_cert(certificates(&self.cert)?, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// When any of the files last changed, to notice a rotation.
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.clone()));
    }
    Ok(certs)
}

/// The current acceptor, replaced when the files change.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl ReloadingAcceptor {
    /// Loads the files now (a bad file fails start-up) and then checks them
    /// every `interval` until `stop`. A rotation that does not load keeps
    /// the previous certificate and logs why.
    pub fn watch(
        files: TlsFiles,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Self, TlsError> {
        let acceptor = Self {
            current: Arc::new(RwLock::new(files.acceptor()?)),
        };
        let current = acceptor.current.clone();
        tokio::spawn(async move {
            let mut stamp = files.stamp();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
                let now = files.stamp();
                if now == stamp {
                    continue;
                }
                match files.acceptor() {
                    Ok(fresh) => {
                        if let Ok(mut slot) = current.write() {
                            *slot = fresh;
                        }
                        stamp = now;
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(error) => {
                        let error = anyhow::Error::new(error);
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "TLS files changed but do not load; keeping the previous certificate"
                        );
                    }
                }
            }
        });
        Ok(acceptor)
    }

    /// The acceptor for a new connection.
    pub fn current(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|a| a.clone())
    }
}

/// The subject CN of a DER certificate, if it has one.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
