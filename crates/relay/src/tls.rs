//! Optional TLS on the client listener, with the certificate re-read on demand (SIGHUP) without
//! dropping a connection: established sessions keep their keys, new handshakes use the new pair.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::security::TlsConfig;

/// The current acceptor; swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Loads the certificate and key; an error names the file.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Tls> {
        let acceptor = acceptor(&config.cert_path, &config.key_path)?;
        Ok(Tls {
            config: config.clone(),
            acceptor: RwLock::new(acceptor),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }

    /// Re-reads the files. On error the old certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = acceptor(&self.config.cert_path, &self.config.key_path)?;
        *self.acceptor.write() = fresh;
        Ok(())
    }
}

fn acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("security.tls.cert_path = {:?}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "security.tls.cert_path = {:?}: no certificate in the file",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("security.tls.key_path = {:?}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("security.tls: the key does not match the certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
