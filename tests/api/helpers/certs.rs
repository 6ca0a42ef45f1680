//! Certificates made in the test (rcgen): an authority that signs server
//! and client certificates, for the gRPC port and for an SMTP relay.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tonic::transport::Identity;

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The authority's own certificate, PEM-encoded.
    pub pem: String,
}

impl Authority {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A certificate and its key, PEM-encoded.
    pub fn sign(
        &self,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `localhost` and 127.0.0.1, and its key.
    pub fn server(&self) -> (String, String) {
        self.sign(
            "rekey",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn client(&self, cn: &str) -> Identity {
        let (cert, key) = self.sign(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        Identity::from_pem(cert, key)
    }
}

/// Makes ring the process's rustls provider: test servers built on the
/// default provider need one, and this test binary's dependencies enable
/// two. Later calls change nothing.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
