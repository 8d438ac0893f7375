//! Client tokens: kept as SHA-256 hashes, looked up in constant time, each with its permission.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::TokenConfig;

/// What a client may subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Public channels only; a private one gets error 9.
    Public,
    /// The account's fills, orders and positions too.
    Private,
}

/// Who a client is, once admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Token {
        name: String,
        permission: Permission,
    },
    Anonymous(Permission),
    /// Must authenticate with a first message within the auth timeout.
    Pending,
}

impl Identity {
    pub fn permission(&self) -> Option<Permission> {
        match self {
            Identity::Token { permission, .. } | Identity::Anonymous(permission) => {
                Some(*permission)
            }
            Identity::Pending => None,
        }
    }
}

/// Hex SHA-256 of a token, as the config stores it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The digest behind a configured `sha256`; `None` unless it is 64 hex digits.
pub(super) fn decode_hash(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

/// The configured tokens, by hash. Entries with a malformed hash are left out (validation has
/// already refused to start with them).
pub(super) struct Tokens(Vec<(String, [u8; 32], Permission)>);

impl Tokens {
    pub(super) fn new(configured: &[TokenConfig]) -> Tokens {
        Tokens(
            configured
                .iter()
                .filter_map(|t| Some((t.name.clone(), decode_hash(&t.sha256)?, t.permission)))
                .collect(),
        )
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity behind a token, compared in constant time against every configured hash
    /// (no early exit, so the time taken does not tell which entry matched).
    pub(super) fn check(&self, token: &str) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash, permission) in &self.0 {
            if bool::from(digest.ct_eq(hash)) {
                found = Some(Identity::Token {
                    name: name.clone(),
                    permission: *permission,
                });
            }
        }
        found
    }
}
