//! Token signing keys: Ed25519 key pairs kept in the database, so that they
//! survive restarts (a restart must not log everybody out) and every replica
//! signs with the same key. The private half never leaves this service; the
//! public halves are published as a JWK set.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use jsonwebtoken::EncodingKey;
use sha2::{Digest, Sha256};

use proto::auth::Jwk;

use crate::{
    error::Result,
    store::{KeyRecord, Store, now_micros},
};

/// DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410 §7); the 32-byte
/// seed follows it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The key that signs new tokens, and every public key that verifies them.
pub struct KeyRing {
    /// `kid` of the signing key.
    kid: String,
    /// The signing key, ready for jsonwebtoken.
    signing: EncodingKey,
    /// The published public keys, signing key first.
    jwks: Vec<Jwk>,
}

impl KeyRing {
    /// Loads the keys from `store`, creating the first one if there is none.
    /// Replicas starting together may each create one; all then agree on the
    /// newest as the signing key and publish both.
    pub async fn load_or_create(store: &dyn Store) -> Result<Self> {
        let mut records = store.signing_keys().await?;
        if records.is_empty() {
            store.add_signing_key(&generate()).await?;
            records = store.signing_keys().await?;
        }
        Self::from_records(&records)
    }

    /// Signs with the key in `pem_file`, and still publishes the keys in
    /// `store` so tokens they signed keep verifying.
    pub async fn from_file(pem_file: &std::path::Path, store: &dyn Store) -> Result<Self> {
        let pem = std::fs::read_to_string(pem_file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", pem_file.display()))?;
        let seed = seed_from_pem(&pem).ok_or_else(|| {
            anyhow::anyhow!("{} is not an Ed25519 PKCS#8 PEM key", pem_file.display())
        })?;
        let from_file = record(seed);
        let mut records = vec![from_file.clone()];
        records.extend(
            store
                .signing_keys()
                .await?
                .into_iter()
                .filter(|r| r.kid != from_file.kid),
        );
        Self::from_records(&records)
    }

    fn from_records(records: &[KeyRecord]) -> Result<Self> {
        let newest = records
            .first()
            .ok_or_else(|| anyhow::anyhow!("no signing key stored"))?;
        let seed: [u8; 32] = newest
            .private_key
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("signing key {} is not a 32-byte seed", newest.kid))?;
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(Self {
            kid: newest.kid.clone(),
            signing: EncodingKey::from_ed_der(&der),
            jwks: records.iter().map(|r| jwk(&r.kid, &r.public_key)).collect(),
        })
    }

    /// The `kid` and key that sign new tokens.
    pub fn signer(&self) -> (&str, &EncodingKey) {
        (&self.kid, &self.signing)
    }

    /// The public keys, as served by `GetJwks`.
    pub fn jwks(&self) -> &[Jwk] {
        &self.jwks
    }
}

/// A fresh key pair with its RFC 7638 thumbprint as `kid`.
pub fn generate() -> KeyRecord {
    record(shared::secret::random_bytes::<32>())
}

/// The 32-byte seed of a PKCS#8 v1 Ed25519 private key in PEM.
fn seed_from_pem(pem: &str) -> Option<[u8; 32]> {
    use base64::engine::general_purpose::STANDARD;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    let der = STANDARD.decode(body).ok()?;
    let seed = der.strip_prefix(&PKCS8_ED25519_PREFIX[..])?;
    seed.try_into().ok()
}

/// The key pair of `seed`.
fn record(seed: [u8; 32]) -> KeyRecord {
    let public_key = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    KeyRecord {
        kid: thumbprint(&public_key),
        private_key: seed.to_vec(),
        public_key: public_key.to_vec(),
        create_time: now_micros(),
    }
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 §2).
fn thumbprint(public_key: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public_key);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn jwk(kid: &str, public_key: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: kid.into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
        x: URL_SAFE_NO_PAD.encode(public_key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ring_signs_with_the_newest_key_and_publishes_all() {
        let mut old = generate();
        old.create_time -= 1;
        let new = generate();
        let ring = KeyRing::from_records(&[new.clone(), old.clone()]).unwrap();
        assert_eq!(ring.signer().0, new.kid);
        let kids: Vec<_> = ring.jwks().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [new.kid.as_str(), old.kid.as_str()]);
        assert_eq!(ring.jwks()[0].x.len(), 43);
    }

    #[test]
    fn pkcs8_pem_keys_are_read_and_anything_else_refused() {
        // RFC 8410 §10.3: the private key of the RFC 8032 test vector 1.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let seed = seed_from_pem(pem).unwrap();
        assert_eq!(seed[0], 0xd4);
        assert_eq!(seed[31], 0x42);
        assert!(
            seed_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_none()
        );
        assert!(seed_from_pem("not a key").is_none());
    }

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
