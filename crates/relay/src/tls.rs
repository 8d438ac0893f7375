//! Optional TLS on the client listener, with the certificate re-read on demand (SIGHUP) without
//! dropping a connection: established sessions keep their keys, new handshakes use the new pair.

use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use settings::Problem;
use tokio_rustls::TlsAcceptor;

use crate::security::TlsConfig;

/// The current acceptor; swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Loads the certificate and key; an error names the key and the file. The configuration
    /// check ([`problems`]) has already read them once, so this fails only if they changed since.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Tls> {
        let acceptor = acceptor(config).map_err(|p| anyhow::anyhow!("{p}"))?;
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
        let fresh = acceptor(&self.config).map_err(|p| anyhow::anyhow!("{p}"))?;
        *self.acceptor.write() = fresh;
        Ok(())
    }
}

/// What is wrong with the configured certificate and key, found at configuration time so that a
/// bad pair stops the relay before anything starts: a missing or unreadable file, a file with no
/// PEM certificate or key, or a key that does not match the certificate.
pub fn problems(config: &TlsConfig) -> Option<Problem> {
    acceptor(config).err()
}

fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, Problem> {
    let (cert_path, key_path) = (&config.cert_path, &config.key_path);
    let bad = |key: &str, path: &Path, reason: String| {
        Problem::new(
            format!("security.tls.{key}"),
            format!("{:?}", path.display()),
            reason,
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| bad("cert_path", cert_path, pem_reason(e, "certificate")))?;
    if certs.is_empty() {
        return Err(bad(
            "cert_path",
            cert_path,
            "no PEM certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| bad("key_path", key_path, pem_reason(e, "private key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem::about("security.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "key_path",
                key_path,
                format!("does not fit the certificate in security.tls.cert_path: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_reason(e: rustls_pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("cannot read: {e}"),
        rustls_pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in the file"),
        other => format!("not a PEM {what}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn every_bad_certificate_or_key_is_a_problem_naming_its_key() {
        let dir = std::env::temp_dir().join(format!("relay-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair(&dir, "a");
        let (_, other_key) = pair(&dir, "b");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let check = |cert: &Path, key: &Path| {
            problems(&TlsConfig {
                cert_path: cert.to_owned(),
                key_path: key.to_owned(),
            })
            .map(|p| p.to_string())
        };
        assert_eq!(check(&cert, &key), None);
        let cases = [
            (
                check(&dir.join("missing.crt"), &key),
                "security.tls.cert_path",
                "cannot read",
            ),
            (
                check(&garbage, &key),
                "security.tls.cert_path",
                "no PEM certificate",
            ),
            (
                check(&key, &key),
                "security.tls.cert_path",
                "no PEM certificate",
            ),
            (
                check(&cert, &dir.join("missing.key")),
                "security.tls.key_path",
                "cannot read",
            ),
            (
                check(&cert, &garbage),
                "security.tls.key_path",
                "no PEM private key",
            ),
            (
                check(&cert, &other_key),
                "security.tls.key_path",
                "does not fit the certificate",
            ),
        ];
        for (problem, key, reason) in cases {
            let problem = problem.expect("a problem");
            assert!(
                problem.starts_with(key) && problem.contains(reason),
                "{problem}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
