//! Token signing keys: Ed25519 key pairs kept in the database, so that they
//! survive restarts (a restart must not log everybody out) and every replica
//! signs with the same key. The private half never leaves this service; the
//! public halves are published as a JWK set.

use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey},
};
use jsonwebtoken::EncodingKey;

use proto::auth::Jwk;

use crate::{
    error::Result,
    store::{KeyRecord, Store},
};

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
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an Ed25519 PKCS#8 PEM key: {e}",
                pem_file.display()
            )
        })?;
        let from_file = record(key.to_bytes());
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
        let der = SigningKey::from_bytes(&seed)
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding signing key {}: {e}", newest.kid))?;
        Ok(Self {
            kid: newest.kid.clone(),
            signing: EncodingKey::from_ed_der(der.as_bytes()),
            jwks: records.iter().map(published).collect::<Result<_>>()?,
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

/// The key pair of `seed`.
fn record(seed: [u8; 32]) -> KeyRecord {
    let public_key = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let kid = shared::jwk::ed25519(&public_key).common.key_id;
    KeyRecord {
        kid: kid.expect("a key's JWK has its thumbprint as kid"),
        private_key: seed.to_vec(),
        public_key: public_key.to_vec(),
        create_time: shared::time::Timestamp::now(),
    }
}

/// The published JWK of a stored key, under its stored `kid`.
fn published(record: &KeyRecord) -> Result<Jwk> {
    let public_key: &[u8; 32] = record
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("public key {} is not 32 bytes", record.kid))?;
    let mut jwk = shared::jwk::ed25519(public_key);
    jwk.common.key_id = Some(record.kid.clone());
    Ok(shared::jwk::to_wire(&jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ring_signs_with_the_newest_key_and_publishes_all() {
        let mut old = generate();
        old.create_time = old.create_time - std::time::Duration::from_micros(1);
        let new = generate();
        let ring = KeyRing::from_records(&[new.clone(), old.clone()]).unwrap();
        assert_eq!(ring.signer().0, new.kid);
        let kids: Vec<_> = ring.jwks().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [new.kid.as_str(), old.kid.as_str()]);
        assert_eq!(ring.jwks()[0].x.len(), 43);
    }

    #[test]
    fn pkcs8_pem_keys_are_read_and_anything_else_refused() {
        // The example private key of RFC 8410 §10.3.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let seed = SigningKey::from_pkcs8_pem(pem).unwrap().to_bytes();
        assert_eq!(seed[0], 0xd4);
        assert_eq!(seed[31], 0x42);
        assert_eq!(record(seed).kid.len(), 43);
        assert!(
            SigningKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
            )
            .is_err()
        );
        assert!(SigningKey::from_pkcs8_pem("not a key").is_err());
    }
}
