//! Token signing keys: Ed25519 key pairs kept in the database, so that they
//! survive restarts (a restart must not log everybody out) and every replica
//! signs with the same key. The private half never leaves this service; the
//! public halves are published as a JWK set.
//!
//! Keys rotate by time alone, so replicas agree without talking: each key
//! has an activation time. At any moment the signing key is the newest
//! active one; a key not yet active is *next* (published, so verifiers have
//! it before the first token it signs); a key replaced by a newer active one
//! is *retired* (still published until every token it signed has expired),
//! then *expired* and deleted. `auth-service keys rotate` adds a next key
//! that activates after the posts-services' key refresh period; every
//! replica rereads the keys every [`RELOAD`].

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey},
};
use jsonwebtoken::EncodingKey;

use proto::auth::Jwk;
use shared::time::{Clock, Timestamp};

use crate::{
    error::Result,
    store::{KeyRecord, Store},
};

/// How often every replica rereads the keys from the database.
pub const RELOAD: Duration = Duration::from_secs(10);

/// How much longer than the verifiers' key refresh period a rotated key
/// waits before it signs.
pub const ACTIVATION_MARGIN: Duration = Duration::from_secs(30);

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// Signing new tokens.
    Signing,
    /// Published until the tokens it signed have expired.
    Retired,
    /// No token it signed is alive: no longer published, to be deleted.
    Expired,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            KeyState::Next => "next",
            KeyState::Signing => "signing",
            KeyState::Retired => "retired",
            KeyState::Expired => "expired",
        })
    }
}

/// One loaded key.
struct Loaded {
    kid: String,
    activate_time: Timestamp,
    signing: EncodingKey,
    jwk: Jwk,
}

/// The keys at one moment of loading, newest activation first.
pub struct KeyRing {
    keys: Vec<Loaded>,
    /// A key from `SIGNING_KEY_FILE` signs whatever the times say.
    pinned: Option<usize>,
    /// How long a token lives (with leeway): how long a retired key stays
    /// published.
    lifetime: Duration,
}

impl KeyRing {
    /// The keys of `records`; `pinned` names a key that always signs.
    pub(crate) fn new(
        records: &[KeyRecord],
        pinned: Option<&str>,
        lifetime: Duration,
    ) -> Result<Self> {
        let mut keys = records.iter().map(load).collect::<Result<Vec<_>>>()?;
        keys.sort_by(|a, b| (b.activate_time, &b.kid).cmp(&(a.activate_time, &a.kid)));
        if keys.is_empty() {
            return Err(anyhow::anyhow!("no signing key stored").into());
        }
        let pinned = pinned.and_then(|kid| keys.iter().position(|k| k.kid == kid));
        Ok(Self {
            keys,
            pinned,
            lifetime,
        })
    }

    /// Which key signs at `now`: the pinned one, else the newest active
    /// one, else (every key still to come) the first to activate.
    fn signing_index(&self, now: Timestamp) -> usize {
        self.pinned.unwrap_or_else(|| {
            self.keys
                .iter()
                .position(|k| k.activate_time <= now)
                .unwrap_or(self.keys.len() - 1)
        })
    }

    /// Each key's state at `now`, with the time it ends (when known).
    pub fn states(&self, now: Timestamp) -> Vec<(&str, KeyState, Timestamp)> {
        let signing = self.signing_index(now);
        self.keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let state = if i == signing {
                    KeyState::Signing
                } else if self.pinned.is_none() && key.activate_time > now {
                    KeyState::Next
                } else {
                    // Retired when the key after it took over; a key older
                    // than the signing one ended when its successor began.
                    let successor = if i > 0 {
                        self.keys[i - 1].activate_time
                    } else {
                        now
                    };
                    if successor + self.lifetime <= now && self.pinned.is_none() {
                        KeyState::Expired
                    } else {
                        KeyState::Retired
                    }
                };
                (key.kid.as_str(), state, key.activate_time)
            })
            .collect()
    }

    /// The `kid` and key that sign tokens at `now`.
    pub fn signer(&self, now: Timestamp) -> (&str, &EncodingKey) {
        let key = &self.keys[self.signing_index(now)];
        (&key.kid, &key.signing)
    }

    /// The keys published at `now` (every one but the expired), signing key
    /// first.
    pub fn jwks(&self, now: Timestamp) -> Vec<Jwk> {
        let states = self.states(now);
        let signing = self.signing_index(now);
        std::iter::once(self.keys[signing].jwk.clone())
            .chain(
                self.keys
                    .iter()
                    .zip(&states)
                    .enumerate()
                    .filter(|(i, (_, (_, state, _)))| *i != signing && *state != KeyState::Expired)
                    .map(|(_, (key, _))| key.jwk.clone()),
            )
            .collect()
    }
}

/// The keys as this replica knows them, reread from the database.
pub struct Keys {
    ring: RwLock<Arc<KeyRing>>,
    pinned: Option<KeyRecord>,
    lifetime: Duration,
    clock: Clock,
}

impl Keys {
    /// Loads the keys from `store`, creating the first one (active at once)
    /// if there is none, or, with `pem_file`, signing with that key while
    /// still publishing the stored ones so tokens they signed keep
    /// verifying. `lifetime`: how long a token lives, with leeway.
    pub async fn load(
        store: &dyn Store,
        pem_file: Option<&std::path::Path>,
        lifetime: Duration,
        clock: Clock,
    ) -> Result<Self> {
        let pinned = match pem_file {
            Some(path) => Some(from_pem_file(path)?),
            None => None,
        };
        if pinned.is_none() && store.signing_keys().await?.is_empty() {
            // Replicas starting together may each create one: all then
            // agree on the newest.
            store.add_signing_key(&generate(clock.now())).await?;
        }
        let ring = read_ring(store, pinned.as_ref(), lifetime).await?;
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
            pinned,
            lifetime,
            clock,
        })
    }

    /// Rereads the keys from `store`.
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        let ring = read_ring(store, self.pinned.as_ref(), self.lifetime).await?;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// The keys as last loaded.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `kid` and key that sign now.
    pub fn signer(&self) -> (String, EncodingKey) {
        let ring = self.ring();
        let (kid, key) = ring.signer(self.clock.now());
        (kid.to_owned(), key.clone())
    }

    /// The keys published now, as `GetJwks` serves them.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.ring().jwks(self.clock.now())
    }

    /// Deletes the keys no token alive was signed with.
    pub async fn delete_expired(&self, store: &dyn Store) -> Result<usize> {
        let ring = self.ring();
        let expired: Vec<String> = ring
            .states(self.clock.now())
            .into_iter()
            .filter(|(_, state, _)| *state == KeyState::Expired)
            .map(|(kid, _, _)| kid.to_owned())
            .collect();
        for kid in &expired {
            store.remove_signing_key(kid).await?;
        }
        Ok(expired.len())
    }
}

/// The stored keys, with the pinned one (from `SIGNING_KEY_FILE`) in place
/// of any stored copy of it.
async fn read_ring(
    store: &dyn Store,
    pinned: Option<&KeyRecord>,
    lifetime: Duration,
) -> Result<KeyRing> {
    let mut records = store.signing_keys().await?;
    if let Some(pinned) = pinned {
        records.retain(|r| r.kid != pinned.kid);
        records.push(pinned.clone());
    }
    KeyRing::new(&records, pinned.map(|p| p.kid.as_str()), lifetime)
}

/// Adds a key that starts signing after `delay` (longer than the verifiers'
/// key refresh period, so that every one has it by then). Returns it.
pub async fn rotate(store: &dyn Store, now: Timestamp, delay: Duration) -> Result<KeyRecord> {
    let key = generate(now + delay);
    store.add_signing_key(&key).await?;
    Ok(key)
}

/// A fresh key pair with its RFC 7638 thumbprint as `kid`, active from
/// `activate_time`.
pub fn generate(activate_time: Timestamp) -> KeyRecord {
    record(shared::secret::random_bytes::<32>(), activate_time)
}

fn from_pem_file(path: &std::path::Path) -> Result<KeyRecord> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 PEM key: {e}", path.display()))?;
    Ok(record(key.to_bytes(), Timestamp::EPOCH))
}

/// The key pair of `seed`.
fn record(seed: [u8; 32], activate_time: Timestamp) -> KeyRecord {
    let public_key = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let kid = shared::jwk::ed25519(&public_key).common.key_id;
    KeyRecord {
        kid: kid.expect("a key's JWK has its thumbprint as kid"),
        private_key: seed.to_vec(),
        public_key: public_key.to_vec(),
        create_time: Timestamp::now(),
        activate_time,
    }
}

fn load(record: &KeyRecord) -> Result<Loaded> {
    let seed: [u8; 32] = record
        .private_key
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("signing key {} is not a 32-byte seed", record.kid))?;
    let der = SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding signing key {}: {e}", record.kid))?;
    let public_key: &[u8; 32] = record
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("public key {} is not 32 bytes", record.kid))?;
    let mut jwk = shared::jwk::ed25519(public_key);
    jwk.common.key_id = Some(record.kid.clone());
    Ok(Loaded {
        kid: record.kid.clone(),
        activate_time: record.activate_time,
        signing: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: shared::jwk::to_wire(&jwk),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME: Duration = Duration::from_secs(900);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000)
    }

    #[test]
    fn keys_go_from_next_to_signing_to_retired_to_expired() {
        let old = generate(at(0));
        let new = generate(at(100));
        let ring = KeyRing::new(&[old.clone(), new.clone()], None, LIFETIME).unwrap();
        let kids = |now| -> Vec<String> { ring.jwks(at(now)).into_iter().map(|k| k.kid).collect() };
        // Before the new key activates: the old one signs, both published.
        assert_eq!(ring.signer(at(50)).0, old.kid);
        assert_eq!(kids(50), [old.kid.clone(), new.kid.clone()]);
        // After: the new one signs, the old one is retired but published.
        assert_eq!(ring.signer(at(100)).0, new.kid);
        assert_eq!(kids(100), [new.kid.clone(), old.kid.clone()]);
        let states: Vec<_> = ring
            .states(at(100))
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(states, [KeyState::Signing, KeyState::Retired]);
        // Once every token the old key signed has expired: gone.
        assert_eq!(kids(100 + 900), std::slice::from_ref(&new.kid));
        let states: Vec<_> = ring
            .states(at(1000))
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(states, [KeyState::Signing, KeyState::Expired]);
        assert_eq!(ring.jwks(at(50))[0].x.len(), 43);
    }

    #[test]
    fn a_key_from_a_file_signs_whatever_the_times_say() {
        let stored = generate(at(100));
        let pinned = record([9; 32], Timestamp::EPOCH);
        let ring = KeyRing::new(
            &[stored.clone(), pinned.clone()],
            Some(&pinned.kid),
            LIFETIME,
        )
        .unwrap();
        assert_eq!(ring.signer(at(200)).0, pinned.kid);
        assert_eq!(ring.jwks(at(5000)).len(), 2, "stored keys stay published");
    }

    #[test]
    fn pkcs8_pem_keys_are_read_and_anything_else_refused() {
        // The example private key of RFC 8410 §10.3.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let seed = SigningKey::from_pkcs8_pem(pem).unwrap().to_bytes();
        assert_eq!(seed[0], 0xd4);
        assert_eq!(seed[31], 0x42);
        assert_eq!(record(seed, at(0)).kid.len(), 43);
        assert!(
            SigningKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
            )
            .is_err()
        );
        assert!(SigningKey::from_pkcs8_pem("not a key").is_err());
    }
}
