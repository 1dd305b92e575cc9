//! API keys' stored form: `HMAC-SHA256(secret, key)` with a secret derived from the cluster
//! CA's private key (see the gateway's `auth` module for why a keyed hash). Coordinators
//! derive the secret; a gateway receives it when it joins.

use rand::Rng;
use sha2::{Digest, Sha256};

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Turns API keys into the stored form.
#[derive(Clone)]
pub struct KeyHasher {
    secret: [u8; 32],
}

impl KeyHasher {
    /// The hasher of a cluster, from its CA's private key (the same on every coordinator).
    pub fn from_ca_key(ca_key_pem: &str) -> Self {
        Self { secret: hmac_sha256(ca_key_pem.as_bytes(), b"shoal api-key hashing v1") }
    }

    /// The hasher from its secret (what a gateway receives when it joins).
    pub fn from_secret(secret: &[u8]) -> Option<Self> {
        Some(Self { secret: secret.try_into().ok()? })
    }

    /// The secret, for a gateway that joins.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The stored form of an API key.
    pub fn hash(&self, key: &str) -> String {
        hex::encode(hmac_sha256(&self.secret, key.as_bytes()))
    }
}

/// A fresh secret: 128 random bits.
pub fn generate_secret() -> String {
    format!("sk-shoal-{:032x}", rand::rng().random::<u128>())
}

/// A fresh public id for a key.
pub fn generate_id() -> String {
    format!("key-{:08x}", rand::rng().random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_6_long_key() {
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn hashes_depend_on_the_cluster() {
        let a = KeyHasher::from_ca_key("ca one");
        let b = KeyHasher::from_ca_key("ca two");
        assert_eq!(a.hash("sk-1"), a.hash("sk-1"));
        assert_ne!(a.hash("sk-1"), a.hash("sk-2"));
        assert_ne!(a.hash("sk-1"), b.hash("sk-1"));
        assert_ne!(a.hash("sk-1"), hex::encode(Sha256::digest(b"sk-1")));
    }

    #[test]
    fn a_gateway_hashes_like_the_coordinator_it_got_the_secret_from() {
        let coordinator = KeyHasher::from_ca_key("ca one");
        let gateway = KeyHasher::from_secret(coordinator.secret()).expect("32 bytes");
        assert_eq!(gateway.hash("sk-1"), coordinator.hash("sk-1"));
        assert!(KeyHasher::from_secret(&[1, 2, 3]).is_none());
    }
}
