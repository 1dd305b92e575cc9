//! Join tokens, modelled on kubeadm's bootstrap tokens: `<id>.<secret>`, where the id is
//! 6 and the secret 16 characters of `[a-z0-9]`. Only the SHA-256 of the secret is stored.

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::ProtocolError;

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A join token as the operator holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl JoinToken {
    pub fn generate() -> Self {
        Self { id: random_string(ID_LEN), secret: random_string(SECRET_LEN) }
    }

    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let (id, secret) =
            s.trim().split_once('.').ok_or_else(|| ProtocolError::BadToken("expected <id>.<secret>".into()))?;
        let ok = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b));
        if !ok(id, ID_LEN) || !ok(secret, SECRET_LEN) {
            return Err(ProtocolError::BadToken(format!(
                "expected {ID_LEN} and {SECRET_LEN} characters of [a-z0-9] around a dot"
            )));
        }
        Ok(Self { id: id.to_string(), secret: secret.to_string() })
    }

    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let t = JoinToken::generate();
        assert_eq!(JoinToken::parse(&t.to_string()).expect("parses"), t);
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in
            ["", "abc", "abcdef.", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde", "abcdef-0123456789abcdef"]
        {
            assert!(JoinToken::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
