//! Issuing access tokens: short-lived EdDSA JWTs that any service holding our
//! public keys verifies on its own (`docs/contract.md`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header};

use shared::{
    time::{Clock, Timestamp},
    verify::{ACCESS_TOKEN_TYPE, Claims},
};

use crate::{error::Result, keys::Keys};

/// Signs access tokens for sessions.
pub struct AccessTokens {
    /// Signing key and published keys.
    keys: Arc<Keys>,
    /// `iss` of every token.
    issuer: String,
    /// `aud` of every token.
    audience: String,
    /// How long a token lives.
    ttl: Duration,
    /// Where the time comes from.
    clock: Clock,
}

/// A signed access token.
#[derive(Debug)]
pub struct AccessToken {
    /// The compact JWT.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

impl AccessTokens {
    /// An issuer signing with `keys`.
    pub fn new(
        keys: Arc<Keys>,
        issuer: String,
        audience: String,
        ttl: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            keys,
            issuer,
            audience,
            ttl,
            clock,
        }
    }

    /// A token for `user_id` in `session_id`, expiring after the configured
    /// lifetime or when the session ends, whichever comes first.
    pub fn issue(
        &self,
        user_id: i64,
        username: &str,
        session_id: &str,
        session_end: Timestamp,
    ) -> Result<AccessToken> {
        // JWT times are whole seconds since the epoch.
        let now = self.clock.now().unix_seconds();
        let exp = (now + self.ttl.as_secs() as i64).min(session_end.unix_seconds());
        let ring = self.keys.ring();
        let (kid, key) = ring.signer(self.clock.now());
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(kid.into());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            sid: session_id.into(),
            preferred_username: username.into(),
            iat: now,
            nbf: now,
            exp,
            jti: URL_SAFE_NO_PAD.encode(shared::secret::random_bytes::<16>()),
        };
        let token =
            jsonwebtoken::encode(&header, &claims, key).context("signing an access token")?;
        Ok(AccessToken {
            token,
            expires_in: exp - now,
        })
    }

    /// The signing keys, to share with a task.
    pub fn keys_handle(&self) -> Arc<Keys> {
        self.keys.clone()
    }

    /// The signing keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}
