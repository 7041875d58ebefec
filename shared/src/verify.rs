//! Access-token verification, shared by both services so that one set of rules
//! decides who a caller is.
//!
//! The rules (`docs/contract.md`): the algorithm is pinned to EdDSA, the header must say
//! `typ: at+jwt` and carry no `crit`, the key is found by `kid` in an in-memory
//! set only (`jku`, `jwk` and `x5u` are never followed), every claim is
//! required, leeway is bounded and oversized tokens are refused before any
//! parsing.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use proto::auth::Jwk;

use crate::{current_user::CurrentUser, time::Clock};

/// The largest token accepted, in bytes. Ours are about 500.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The most clock skew tolerated, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 30;
/// The `typ` header of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Verified tokens remembered; beyond it the cache starts over.
pub const VERIFIED_CACHE_SIZE: usize = 16 * 1024;
/// The longest `kid` looked up; ours are 16 characters.
const MAX_KID_LEN: usize = 64;

/// The claims of an access token, all of them required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (`TOKEN_ISSUER`).
    pub iss: String,
    /// Audience (`TOKEN_AUDIENCE`).
    pub aud: String,
    /// The user id, as a decimal string.
    pub sub: String,
    /// The session the token belongs to.
    pub sid: String,
    /// The username when the token was issued.
    pub preferred_username: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not valid before, seconds since the epoch.
    pub nbf: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// Why a token was refused. Every variant but [`VerifyError::NoKeys`] means the
/// caller's credentials are bad; the detail is for logs and metrics only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No public key has been loaded yet: we cannot tell good from bad.
    #[error("no verification keys loaded")]
    NoKeys,
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("token too large")]
    TooLarge,
    /// Not three base64url parts, or a header that is not valid JSON.
    #[error("malformed token")]
    Malformed,
    /// A header this verifier refuses (`alg`, `typ`, `crit`, `kid`).
    #[error("unacceptable header: {0}")]
    Header(&'static str),
    /// The `kid` names no key we hold.
    #[error("unknown key id")]
    UnknownKey,
    /// Bad signature.
    #[error("bad signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`, or issued in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// A claim is missing, of the wrong type, or has the wrong value.
    #[error("bad claims: {0}")]
    Claims(String),
}

impl VerifyError {
    /// A short, fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoKeys => "no_keys",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Header(_) => "header",
            Self::UnknownKey => "unknown_kid",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Claims(_) => "claims",
        }
    }
}

/// A JWK the verifier cannot use.
#[derive(Debug, thiserror::Error)]
#[error("unusable JWK {kid:?}: {reason}")]
pub struct BadJwk {
    /// The key's id.
    pub kid: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The keys and what was verified with them, kept under one lock so that a
/// token checked with a key that has just been removed can never be
/// remembered after the removal.
struct KeyState {
    /// Public keys by `kid`. A new set is a new `Arc`, which is also how a
    /// verification tells whether the set changed while it ran.
    keys: Arc<HashMap<String, DecodingKey>>,
    /// The `(kid, x)` pairs of those keys, sorted: tells a refetch of the
    /// same set from a real change.
    fingerprint: Vec<(String, String)>,
    /// Tokens already verified with these keys, by SHA-256: a hit skips the
    /// signature check but not the expiry check. Emptied with every key
    /// change; bounded by [`VERIFIED_CACHE_SIZE`].
    verified: HashMap<[u8; 32], CurrentUser>,
}

/// Verifies access tokens against a replaceable set of Ed25519 public keys.
///
/// Cheap to share: clone the `Arc` it usually lives in. Key replacement is a
/// pointer swap, so verification never waits on a refresh.
pub struct Verifier {
    /// The keys and the tokens verified with them.
    state: RwLock<KeyState>,
    /// Whether any key is loaded, for whoever waits on it (readiness).
    loaded: tokio::sync::watch::Sender<bool>,
    /// The pinned validation rules, built once.
    validation: Validation,
    /// Tolerated clock skew, seconds.
    leeway: i64,
    /// Where the time checked against `exp` and `nbf` comes from.
    clock: Clock,
}

impl Verifier {
    /// A verifier for tokens from `issuer` to `audience`, with no keys yet.
    /// `leeway` is capped at [`MAX_LEEWAY_SECS`].
    pub fn new(issuer: &str, audience: &str, leeway: Duration) -> Self {
        let leeway = leeway.as_secs().min(MAX_LEEWAY_SECS);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = leeway;
        Self {
            state: RwLock::new(KeyState {
                keys: Arc::new(HashMap::new()),
                fingerprint: Vec::new(),
                verified: HashMap::new(),
            }),
            loaded: tokio::sync::watch::Sender::new(false),
            validation,
            leeway: leeway as i64,
            clock: Clock::system(),
        }
    }

    /// The same verifier, reading the time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the key set with `jwks`; `Ok(false)` when it is the set
    /// already held (then nothing is touched, and remembered tokens stay).
    /// Keys that are not Ed25519 signing keys are refused, and then nothing
    /// changes.
    pub fn set_keys(&self, jwks: &[Jwk]) -> Result<bool, BadJwk> {
        let mut fingerprint: Vec<(String, String)> =
            jwks.iter().map(|k| (k.kid.clone(), k.x.clone())).collect();
        fingerprint.sort();
        if self.read().fingerprint == fingerprint {
            return Ok(false);
        }
        let mut keys = HashMap::with_capacity(jwks.len());
        for jwk in jwks {
            let bad = |reason| BadJwk {
                kid: jwk.kid.clone(),
                reason,
            };
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                return Err(bad("not an Ed25519 key"));
            }
            if !jwk.alg.is_empty() && jwk.alg != "EdDSA" {
                return Err(bad("alg is not EdDSA"));
            }
            if !jwk.r#use.is_empty() && jwk.r#use != "sig" {
                return Err(bad("not a signing key"));
            }
            if jwk.kid.is_empty() || jwk.kid.len() > MAX_KID_LEN {
                return Err(bad("bad kid"));
            }
            // jsonwebtoken slices the first 32 bytes without checking the
            // length, so a short key must never reach it.
            let x = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|_| bad("x is not base64url"))?;
            if x.len() != 32 {
                return Err(bad("x is not a 32-byte key"));
            }
            let key = DecodingKey::from_ed_der(&x);
            keys.insert(jwk.kid.clone(), key);
        }
        let loaded = !keys.is_empty();
        {
            let mut state = self.write();
            state.keys = Arc::new(keys);
            state.fingerprint = fingerprint;
            // A token verified with a key that is gone must be checked again.
            state.verified.clear();
        }
        self.loaded.send_replace(loaded);
        Ok(true)
    }

    /// Follows whether any key is loaded.
    pub fn keys_loaded(&self) -> tokio::sync::watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Whether any key is loaded.
    pub fn has_keys(&self) -> bool {
        !self.current_keys().is_empty()
    }

    /// Whether a key with this id is loaded.
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.current_keys().contains_key(kid)
    }

    fn current_keys(&self) -> Arc<HashMap<String, DecodingKey>> {
        self.read().keys.clone()
    }

    /// Checks `token` and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<CurrentUser, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.read().verified.get(&digest).cloned();
        if let Some(identity) = cached {
            // The same bytes passed every check before; only time has moved.
            return if identity.expires_at + self.leeway < self.clock.now().unix_seconds() {
                Err(VerifyError::Expired)
            } else {
                Ok(identity)
            };
        }
        let keys = self.current_keys();
        let identity = self.verify_uncached(token, &keys)?;
        self.remember(&keys, digest, &identity);
        Ok(identity)
    }

    /// Remembers a token verified with `keys`, unless the key set has changed
    /// since: then the token is checked again next time, against the keys
    /// that are current.
    fn remember(
        &self,
        keys: &Arc<HashMap<String, DecodingKey>>,
        digest: [u8; 32],
        identity: &CurrentUser,
    ) {
        let mut state = self.write();
        if !Arc::ptr_eq(&state.keys, keys) {
            return;
        }
        if state.verified.len() >= VERIFIED_CACHE_SIZE {
            state.verified.clear();
        }
        state.verified.insert(digest, identity.clone());
    }

    fn verify_uncached(
        &self,
        token: &str,
        keys: &HashMap<String, DecodingKey>,
    ) -> Result<CurrentUser, VerifyError> {
        if keys.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        // Decoding an unknown `alg` (none, None, ...) fails here, before any key
        // is chosen.
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Header("alg"));
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE))
        {
            return Err(VerifyError::Header("typ"));
        }
        if header.crit.is_some() || header.extras.inner().contains_key("crit") {
            return Err(VerifyError::Header("crit"));
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::Header("kid"))?;
        if kid.len() > MAX_KID_LEN {
            return Err(VerifyError::Header("kid"));
        }
        let key = keys.get(kid).ok_or(VerifyError::UnknownKey)?;

        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::Signature,
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    VerifyError::Malformed
                }
                other => VerifyError::Claims(format!("{other:?}")),
            })?
            .claims;

        // jsonwebtoken has checked `exp` and `nbf`; repeat them on our typed
        // claims so the rule does not rest on one library's defaults, and add
        // the one it does not make (`iat` in the future).
        let now = self.clock.now().unix_seconds();
        if claims.exp + self.leeway < now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf - self.leeway > now || claims.iat - self.leeway > now {
            return Err(VerifyError::NotYetValid);
        }
        let user_id = claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0 && claims.sub == id.to_string())
            .ok_or_else(|| VerifyError::Claims("sub".into()))?;
        if claims.sid.is_empty() || claims.jti.is_empty() {
            return Err(VerifyError::Claims("sid/jti".into()));
        }
        Ok(CurrentUser {
            id: user_id,
            session_id: claims.sid,
            username: claims.preferred_username,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    /// A public key as published, and a token it verifies, for key `seed`.
    fn key_and_token(seed: u8, kid: &str) -> (Jwk, String) {
        let seed = [seed; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
            x: URL_SAFE_NO_PAD.encode(public),
        };
        let der = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            ed25519_dalek::SigningKey::from_bytes(&seed)
                .to_pkcs8_der()
                .unwrap()
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(kid.into());
        let now = crate::time::Timestamp::now().unix_seconds();
        let claims = Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "7".into(),
            sid: "s".into(),
            preferred_username: "u".into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: "j".into(),
        };
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes()))
                .unwrap();
        (jwk, token)
    }

    #[test]
    fn a_token_checked_while_its_key_was_removed_is_not_remembered() {
        let verifier = Verifier::new("iss", "aud", Duration::from_secs(5));
        let (old, token) = key_and_token(1, "old");
        let (new, _) = key_and_token(2, "new");
        verifier.set_keys(std::slice::from_ref(&old)).unwrap();

        // A verification that read the old keys, then lost the race with a
        // key change, tries to remember its result afterwards.
        let keys = verifier.current_keys();
        let identity = verifier.verify_uncached(&token, &keys).unwrap();
        verifier.set_keys(&[new]).unwrap();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        verifier.remember(&keys, digest, &identity);

        assert_eq!(verifier.verify(&token), Err(VerifyError::UnknownKey));
    }

    #[test]
    fn a_token_checked_with_the_current_keys_is_remembered() {
        let verifier = Verifier::new("iss", "aud", Duration::from_secs(5));
        let (key, token) = key_and_token(1, "k");
        verifier.set_keys(&[key]).unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert_eq!(verifier.read().verified.len(), 1);
    }
}
