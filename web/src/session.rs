//! The browser's session: one cookie, sealed (AES-256-GCM) with a key every
//! replica shares, so any replica can read any visitor's session and none
//! keeps state. It holds the CSRF secret of the visitor and, once logged in,
//! the access and refresh tokens: `HttpOnly`, so page scripts never see
//! them, and sealed, so a copy of the cookie jar or a proxy log does not
//! show a usable token without the key.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    constant_time,
    rand::{SecureRandom, SystemRandom},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// The sealed session cookie's name over plain HTTP.
pub const COOKIE: &str = "blog_session";
/// Its name over HTTPS: the `__Host-` prefix pins it to this host and path.
pub const SECURE_COOKIE: &str = "__Host-blog_session";
/// Longest a session cookie is kept by the browser: the refresh token's
/// lifetime bounds the session anyway.
const MAX_AGE_SECS: u64 = 30 * 24 * 3600;
/// Cookies longer than this are not ours (browsers cap a cookie at 4 KiB).
const MAX_COOKIE_LEN: usize = 4096;

/// The tokens of a logged-in visitor.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The access token (JWT).
    pub access: String,
    /// When it expires, seconds since the epoch.
    pub access_expires: u64,
    /// The refresh token.
    pub refresh: String,
    /// The user's id.
    pub user_id: i64,
    /// The user's name, for the header.
    pub username: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("user_id", &self.user_id)
            .field("access_expires", &self.access_expires)
            .finish_non_exhaustive()
    }
}

/// What a visitor's cookie holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The secret every form of this visitor carries back.
    pub csrf: String,
    /// The tokens, once logged in.
    pub tokens: Option<Tokens>,
}

impl Session {
    /// A visitor not yet seen: a fresh CSRF secret, not logged in.
    pub fn new() -> Self {
        Self {
            csrf: random_token(),
            tokens: None,
        }
    }

    /// A visitor not yet seen, before their CSRF secret is drawn: it
    /// matches no form until it is.
    pub(crate) fn blank() -> Self {
        Self {
            csrf: String::new(),
            tokens: None,
        }
    }

    /// Whether `presented` (a form's `csrf_token`) is this session's. An
    /// empty token is refused, so an empty secret (one not drawn yet)
    /// matches nothing.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty()
            && constant_time::verify_slices_are_equal(self.csrf.as_bytes(), presented.as_bytes())
                .is_ok()
    }

    fn encode(&self) -> String {
        let mut out = self.csrf.clone();
        if let Some(t) = &self.tokens {
            // Tokens and numbers hold no newline; the username comes last,
            // so whatever it holds cannot shift another field.
            for field in [
                t.access.as_str(),
                &t.access_expires.to_string(),
                &t.refresh,
                &t.user_id.to_string(),
                &t.username,
            ] {
                out.push('\n');
                out.push_str(field);
            }
        }
        out
    }

    fn decode(text: &str) -> Option<Self> {
        let mut fields = text.splitn(6, '\n');
        let csrf = fields.next()?.to_owned();
        let tokens = match fields.next() {
            None => None,
            Some(access) => Some(Tokens {
                access: access.to_owned(),
                access_expires: fields.next()?.parse().ok()?,
                refresh: fields.next()?.to_owned(),
                user_id: fields.next()?.parse().ok()?,
                username: fields.next()?.to_owned(),
            }),
        };
        Some(Self { csrf, tokens })
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// Seals and opens session cookies.
pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
    /// Whether the site is served over HTTPS (then `Secure`, `__Host-`).
    secure: bool,
}

impl Sealer {
    /// A sealer with this 32-byte key.
    pub fn new(key: &[u8; 32], secure: bool) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
            secure,
        }
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure { SECURE_COOKIE } else { COOKIE }
    }

    /// `nonce || ciphertext || tag`, base64url.
    pub fn seal(&self, session: &Session) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("system randomness");
        let mut data = session.encode().into_bytes();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.cookie_name().as_bytes()),
                &mut data,
            )
            .expect("sealing a session");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The session in a sealed cookie value, or `None` if it was not sealed
    /// with our key (tampered, stale key, garbage).
    pub fn open(&self, value: &str) -> Option<Session> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.cookie_name().as_bytes()), &mut sealed)
            .ok()?;
        Session::decode(std::str::from_utf8(plain).ok()?)
    }

    /// The session in a request's `Cookie` headers, if one is ours.
    pub fn from_headers(&self, headers: &http::HeaderMap) -> Option<Session> {
        let name = self.cookie_name();
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(n, _)| *n == name)
            .find_map(|(_, value)| self.open(value))
    }

    /// The `Set-Cookie` value that stores `session`.
    pub fn set_cookie(&self, session: &Session) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={MAX_AGE_SECS}{secure}",
            self.cookie_name(),
            self.seal(session)
        )
    }
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged_in() -> Session {
        Session {
            csrf: random_token(),
            tokens: Some(Tokens {
                access: "a.b.c".into(),
                access_expires: 1_700_000_000,
                refresh: "r".into(),
                user_id: 7,
                username: "al\nice; =x".into(),
            }),
        }
    }

    #[test]
    fn sessions_survive_sealing_and_nothing_else_opens() {
        let sealer = Sealer::new(&[1; 32], false);
        for session in [Session::new(), logged_in()] {
            let sealed = sealer.seal(&session);
            assert_eq!(sealer.open(&sealed), Some(session));
        }
        let sealed = sealer.seal(&logged_in());
        let mut tampered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(&URL_SAFE_NO_PAD.encode(tampered)), None);
        assert_eq!(Sealer::new(&[2; 32], false).open(&sealed), None);
        // A cookie sealed for plain HTTP is not accepted under the HTTPS name.
        assert_eq!(Sealer::new(&[1; 32], true).open(&sealed), None);
        assert_eq!(sealer.open("garbage"), None);
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_https() {
        let plain = Sealer::new(&[1; 32], false).set_cookie(&Session::new());
        assert!(plain.starts_with("blog_session="));
        assert!(plain.contains("; HttpOnly; SameSite=Lax"));
        assert!(!plain.contains("Secure"));
        let secure = Sealer::new(&[1; 32], true).set_cookie(&Session::new());
        assert!(secure.starts_with("__Host-blog_session="));
        assert!(secure.ends_with("; Secure"));
    }

    #[test]
    fn only_the_sessions_own_csrf_token_matches() {
        let session = Session::new();
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&Session::new().csrf));
        assert!(!Session::blank().csrf_matches(""));
        assert!(!Session::blank().csrf_matches("x"));
    }
}
