//! TLS pieces shared by the tests: a throwaway CA, leaf certificates it signs, and a `wss://`
//! client that trusts only that CA.

use std::sync::Arc;

use super::Client;

pub fn make_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relay test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    (rcgen::Issuer::new(params, key), pem)
}

pub fn write_leaf(dir: &std::path::Path, ca: &rcgen::Issuer<'static, rcgen::KeyPair>) {
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// A `wss://` client that trusts only `ca_pem`; panics when the handshake fails.
pub async fn wss_client(url: &str, ca_pem: &str) -> Client {
    try_wss_client(url, ca_pem)
        .await
        .expect("a TLS connection trusting the test CA")
}

/// A `wss://` client that trusts only `ca_pem`, or `None` when the handshake fails.
pub async fn try_wss_client(url: &str, ca_pem: &str) -> Option<Client> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .ok()?;
    Some(Client::from_ws(ws))
}
