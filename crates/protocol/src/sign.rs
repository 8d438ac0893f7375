//! Handshake signing: the `KALSHI-ACCESS-*` headers, and the verifier the simulator uses.
//!
//! The signed bytes are `timestamp_ms + "GET" + path`, signed with RSA-PSS over SHA-256 with
//! MGF1(SHA-256) and a 32-byte salt, sent as standard padded base64. PSS is randomised, so a
//! server verifies; it never compares signatures.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::pss::{BlindedSigningKey, Signature, VerifyingKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

pub const HEADER_KEY: &str = "KALSHI-ACCESS-KEY";
pub const HEADER_TIMESTAMP: &str = "KALSHI-ACCESS-TIMESTAMP";
pub const HEADER_SIGNATURE: &str = "KALSHI-ACCESS-SIGNATURE";

/// The WebSocket path every request is signed for.
pub const WS_PATH: &str = "/trade-api/ws/v2";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an RSA private key in PEM form (PKCS#1 or PKCS#8)")]
    BadPrivateKey,
    #[error("not an RSA public key in PEM form (SPKI or PKCS#1)")]
    BadPublicKey,
}

/// Why a handshake's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("timestamp is not a decimal number of milliseconds")]
    BadTimestamp,
    #[error("timestamp is {skew_ms} ms away from now, outside the window")]
    Expired { skew_ms: i64 },
    #[error("signature is not valid base64 or not a signature")]
    Malformed,
    #[error("signature does not verify against any configured key")]
    BadSignature,
}

/// The three headers of one signed handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthHeaders {
    pub key_id: String,
    pub timestamp_ms: String,
    pub signature: String,
}

impl AuthHeaders {
    /// `(name, value)` pairs, ready for a request builder.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_KEY, self.key_id.as_str()),
            (HEADER_TIMESTAMP, self.timestamp_ms.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
        ]
    }
}

/// Signs handshakes with one API key.
#[derive(Clone)]
pub struct Signer {
    key_id: String,
    key: BlindedSigningKey<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a key id and a PEM private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(key_id: impl Into<String>, pem: &str) -> Result<Signer, KeyError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::BadPrivateKey)?;
        Ok(Signer {
            key_id: key_id.into(),
            key: BlindedSigningKey::new(key),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Headers for a `GET` of `path` at `timestamp_ms`.
    pub fn sign(&self, timestamp_ms: u64, path: &str) -> AuthHeaders {
        let ts = timestamp_ms.to_string();
        let message = format!("{ts}GET{path}");
        let signature = self
            .key
            .sign_with_rng(&mut rand::thread_rng(), message.as_bytes());
        AuthHeaders {
            key_id: self.key_id.clone(),
            timestamp_ms: ts,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Headers for a `GET` of `path` now.
    pub fn sign_now(&self, path: &str) -> AuthHeaders {
        self.sign(now_ms(), path)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Verifies handshakes against a set of public keys (any may match).
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Vec<VerifyingKey<Sha256>>,
    /// How far a timestamp may be from the server's clock, either way.
    pub window_ms: u64,
}

impl Verifier {
    pub fn new(window_ms: u64) -> Verifier {
        Verifier {
            keys: Vec::new(),
            window_ms,
        }
    }

    /// Adds a PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
    pub fn add_public_pem(&mut self, pem: &str) -> Result<(), KeyError> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::BadPublicKey)?;
        self.keys.push(VerifyingKey::new(key));
        Ok(())
    }

    /// Adds the public half of a PEM private key (handy for tests and the demo).
    pub fn add_private_pem(&mut self, pem: &str) -> Result<(), KeyError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::BadPrivateKey)?;
        self.keys.push(VerifyingKey::new(key.to_public_key()));
        Ok(())
    }

    /// Checks the three header values (as received, `None` when absent) for `GET path` at `now_ms`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        timestamp_ms: Option<&str>,
        signature: Option<&str>,
        path: &str,
        now_ms: u64,
    ) -> Result<(), VerifyError> {
        key_id
            .filter(|k| !k.is_empty())
            .ok_or(VerifyError::MissingHeader(HEADER_KEY))?;
        let ts = timestamp_ms.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
        let sig = signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::BadTimestamp);
        }
        let ts_ms: u64 = ts.parse().map_err(|_| VerifyError::BadTimestamp)?;
        let skew_ms = now_ms as i64 - ts_ms as i64;
        if skew_ms.unsigned_abs() > self.window_ms {
            return Err(VerifyError::Expired { skew_ms });
        }
        let bytes = STANDARD.decode(sig).map_err(|_| VerifyError::Malformed)?;
        let signature =
            Signature::try_from(bytes.as_slice()).map_err(|_| VerifyError::Malformed)?;
        let message = format!("{ts}GET{path}");
        if self
            .keys
            .iter()
            .any(|k| k.verify(message.as_bytes(), &signature).is_ok())
        {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

/// Generates a fresh RSA key pair as (PKCS#8 private PEM, SPKI public PEM). For tests and demos:
/// never commit what it makes.
pub fn generate_key_pair(bits: usize) -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = RsaPrivateKey::new(&mut rand::thread_rng(), bits).expect("key generation");
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .expect("encode private key")
        .to_string();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("encode public key");
    (private_pem, public_pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};

    #[test]
    fn signs_and_verifies_and_refuses_tampering() {
        let (private_pem, public_pem) = generate_key_pair(2048);
        let signer = Signer::from_pem("key-1", &private_pem).unwrap();
        let mut verifier = Verifier::new(10_000);
        verifier.add_public_pem(&public_pem).unwrap();

        let now = 1_700_000_000_000;
        let h = signer.sign(now, WS_PATH);
        let check = |ts: &str, sig: &str, path: &str| {
            verifier.verify(Some("key-1"), Some(ts), Some(sig), path, now + 50)
        };
        assert_eq!(check(&h.timestamp_ms, &h.signature, WS_PATH), Ok(()));
        let tampered_ts = (now + 1).to_string();
        assert_eq!(
            check(&tampered_ts, &h.signature, WS_PATH),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(&h.timestamp_ms, &h.signature, "/other"),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verifier.verify(
                Some("key-1"),
                Some(&h.timestamp_ms),
                Some(&h.signature),
                WS_PATH,
                now + 60_000
            ),
            Err(VerifyError::Expired { skew_ms: 60_000 })
        );
        assert_eq!(
            check(&h.timestamp_ms, "!!", WS_PATH),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verifier.verify(
                None,
                Some(&h.timestamp_ms),
                Some(&h.signature),
                WS_PATH,
                now
            ),
            Err(VerifyError::MissingHeader(HEADER_KEY))
        );

        // The same key in PKCS#1 form signs verifiably too.
        let key = RsaPrivateKey::from_pkcs8_pem(&private_pem).unwrap();
        let pkcs1 = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        let h = Signer::from_pem("key-1", &pkcs1)
            .unwrap()
            .sign(now, WS_PATH);
        assert_eq!(check(&h.timestamp_ms, &h.signature, WS_PATH), Ok(()));
        assert!(Signer::from_pem("k", "not a key").is_err());
    }
}
