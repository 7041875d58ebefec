//! The verifier refuses every token the contract says it must, each case on its
//! own, and accepts a well-formed one.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use proto::auth::Jwk;
use shared::{
    time::Clock,
    verify::{Verifier, VerifyError},
};

fn unix_now() -> i64 {
    shared::time::Timestamp::now().unix_seconds()
}

const ISS: &str = "blog-auth";
const AUD: &str = "blog";
const KID: &str = "test-key-1";

/// The jsonwebtoken signing key for an Ed25519 seed.
fn signing_key(seed: &[u8; 32]) -> EncodingKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let der = ed25519_dalek::SigningKey::from_bytes(seed)
        .to_pkcs8_der()
        .unwrap();
    EncodingKey::from_ed_der(der.as_bytes())
}

struct Fixture {
    verifier: Verifier,
    signing: EncodingKey,
    public_x: String,
}

/// An Ed25519 signing key as the auth-service publishes it.
fn jwk(kid: &str, x: &str) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: kid.into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
        x: x.into(),
    }
}

fn fixture() -> Fixture {
    let seed = [7u8; 32];
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let public_x = URL_SAFE_NO_PAD.encode(public);
    let verifier = Verifier::new(ISS, AUD, std::time::Duration::from_secs(5));
    verifier.set_keys(&[jwk(KID, &public_x)]).unwrap();
    Fixture {
        verifier,
        signing: signing_key(&seed),
        public_x,
    }
}

fn claims() -> Value {
    let now = unix_now();
    json!({
        "iss": ISS, "aud": AUD, "sub": "42", "sid": "session-1",
        "preferred_username": "alice", "iat": now, "nbf": now, "exp": now + 900, "jti": "jti-1",
    })
}

fn header() -> Header {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(KID.into());
    header
}

impl Fixture {
    fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.signing).unwrap()
    }

    fn valid(&self) -> String {
        self.sign(&header(), &claims())
    }

    fn refuse(&self, token: &str) -> VerifyError {
        self.verifier
            .verify(token)
            .expect_err("token must be refused")
    }
}

/// A token from raw JSON parts and a raw signature.
fn raw(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Re-signs a token made of `header` and `claims` with the real key, so that
/// only the property under test is wrong.
fn signed_raw(f: &Fixture, header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &f.signing, Algorithm::EdDSA).unwrap();
    format!("{message}.{signature}")
}

fn std_header() -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": KID})
}

#[test]
fn a_well_formed_token_verifies() {
    let f = fixture();
    let identity = f.verifier.verify(&f.valid()).unwrap();
    assert_eq!(identity.id, 42);
    assert_eq!(identity.session_id, "session-1");
    assert_eq!(identity.username, "alice");
}

#[test]
fn the_raw_token_helper_produces_verifiable_tokens() {
    // Guards the tests below: their tokens differ from a good one only in
    // the property under test.
    let f = fixture();
    assert!(
        f.verifier
            .verify(&signed_raw(&f, &std_header(), &claims()))
            .is_ok()
    );
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let f = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = raw(
            &json!({"alg": alg, "typ": "at+jwt", "kid": KID}),
            &claims(),
            b"",
        );
        f.refuse(&token);
        let token = format!("{}.", token.trim_end_matches('.'));
        f.refuse(&token);
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let f = fixture();
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(KID.into());
    for secret in [
        f.public_x.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&f.public_x).unwrap(),
    ] {
        let token = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        assert_eq!(f.refuse(&token), VerifyError::Header("alg"));
    }
}

#[test]
fn a_null_signature_is_refused() {
    let f = fixture();
    let valid = f.valid();
    let unsigned = valid.rsplit_once('.').unwrap().0;
    f.refuse(&format!("{unsigned}."));
    f.refuse(&format!("{unsigned}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])));
    f.refuse(unsigned);
}

#[test]
fn a_bit_flipped_signature_is_refused() {
    let f = fixture();
    let valid = f.valid();
    let (message, signature) = valid.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[10] ^= 0x01;
    let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_eq!(f.refuse(&token), VerifyError::Signature);
}

#[test]
fn a_tampered_payload_is_refused() {
    let f = fixture();
    let valid = f.valid();
    let parts: Vec<&str> = valid.split('.').collect();
    let mut claims = claims();
    claims["sub"] = json!("1");
    let token = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(f.refuse(&token), VerifyError::Signature);
}

#[test]
fn an_expired_token_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["exp"] = json!(unix_now() - 60);
    assert_eq!(f.refuse(&f.sign(&header(), &claims)), VerifyError::Expired);
}

#[test]
fn a_token_not_yet_valid_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["nbf"] = json!(unix_now() + 120);
    assert_eq!(
        f.refuse(&f.sign(&header(), &claims)),
        VerifyError::NotYetValid
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["iat"] = json!(unix_now() + 120);
    assert_eq!(
        f.refuse(&f.sign(&header(), &claims)),
        VerifyError::NotYetValid
    );
}

#[test]
fn a_wrong_issuer_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["iss"] = json!("someone-else");
    assert!(matches!(
        f.refuse(&f.sign(&header(), &claims)),
        VerifyError::Claims(_)
    ));
}

#[test]
fn a_wrong_audience_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["aud"] = json!("other-api");
    assert!(matches!(
        f.refuse(&f.sign(&header(), &claims)),
        VerifyError::Claims(_)
    ));
}

#[test]
fn each_required_claim_missing_is_refused() {
    let f = fixture();
    for claim in [
        "iss",
        "aud",
        "sub",
        "sid",
        "preferred_username",
        "iat",
        "nbf",
        "exp",
        "jti",
    ] {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(claim);
        assert!(
            f.verifier.verify(&f.sign(&header(), &claims)).is_err(),
            "token without {claim} accepted"
        );
    }
}

#[test]
fn exp_as_a_string_is_refused() {
    let f = fixture();
    let mut claims = claims();
    claims["exp"] = json!((unix_now() + 900).to_string());
    f.refuse(&f.sign(&header(), &claims));
}

#[test]
fn a_non_numeric_or_non_positive_subject_is_refused() {
    let f = fixture();
    for sub in ["abc", "0", "-1", "042", " 42"] {
        let mut claims = claims();
        claims["sub"] = json!(sub);
        assert!(
            f.verifier.verify(&f.sign(&header(), &claims)).is_err(),
            "sub {sub:?} accepted"
        );
    }
}

#[test]
fn an_unknown_kid_is_refused() {
    let f = fixture();
    let mut header = header();
    header.kid = Some("some-other-key".into());
    assert_eq!(
        f.refuse(&f.sign(&header, &claims())),
        VerifyError::UnknownKey
    );
}

#[test]
fn a_missing_kid_is_refused() {
    let f = fixture();
    let mut header = header();
    header.kid = None;
    assert_eq!(
        f.refuse(&f.sign(&header, &claims())),
        VerifyError::Header("kid")
    );
}

#[test]
fn a_kid_holding_a_path_or_sql_is_refused() {
    let f = fixture();
    for kid in [
        "../../../../dev/null",
        "/etc/passwd",
        "' OR '1'='1",
        "x'; DROP TABLE signing_keys; --",
    ] {
        let mut header = header();
        header.kid = Some(kid.into());
        assert_eq!(
            f.refuse(&f.sign(&header, &claims())),
            VerifyError::UnknownKey,
            "kid {kid:?}"
        );
    }
    let mut header = header();
    header.kid = Some("k".repeat(1000));
    f.refuse(&f.sign(&header, &claims()));
}

#[test]
fn a_crit_header_is_refused() {
    let f = fixture();
    let mut header = std_header();
    header["crit"] = json!(["exp"]);
    header["exp"] = json!(1);
    f.refuse(&signed_raw(&f, &header, &claims()));
    let mut header = std_header();
    header["crit"] = json!([]);
    f.refuse(&signed_raw(&f, &header, &claims()));
}

#[test]
fn a_wrong_or_missing_typ_is_refused() {
    let f = fixture();
    for typ in [Some("JWT"), Some("refresh+jwt"), None] {
        let mut header = header();
        header.typ = typ.map(Into::into);
        assert_eq!(
            f.refuse(&f.sign(&header, &claims())),
            VerifyError::Header("typ")
        );
    }
}

#[test]
fn jku_and_jwk_headers_are_never_followed() {
    let f = fixture();
    // An attacker's own key, advertised in the header: signatures made with it
    // must not verify, whatever the header says.
    let attacker_seed = [9u8; 32];
    let attacker_x = URL_SAFE_NO_PAD.encode(
        SigningKey::from_bytes(&attacker_seed)
            .verifying_key()
            .to_bytes(),
    );
    let attacker = signing_key(&attacker_seed);
    let mut header = std_header();
    header["jku"] = json!("http://127.0.0.1:1/jwks.json");
    header["jwk"] = json!({"kty": "OKP", "crv": "Ed25519", "x": attacker_x, "kid": KID});
    header["x5u"] = json!("http://127.0.0.1:1/cert.pem");
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &attacker, Algorithm::EdDSA).unwrap();
    assert_eq!(
        f.refuse(&format!("{message}.{signature}")),
        VerifyError::Signature
    );
}

#[test]
fn a_refresh_token_presented_as_an_access_token_is_refused() {
    let f = fixture();
    // Refresh tokens are 256 random bits, base64url: not a JWT at all.
    assert_eq!(
        f.refuse(&shared::secret::random_token()),
        VerifyError::Malformed
    );
}

#[test]
fn a_token_over_8_kib_is_refused_before_parsing() {
    let f = fixture();
    let mut claims = claims();
    claims["padding"] = json!("x".repeat(8 * 1024));
    assert_eq!(f.refuse(&f.sign(&header(), &claims)), VerifyError::TooLarge);
}

#[test]
fn garbage_is_refused_without_panicking() {
    let f = fixture();
    for token in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b",
        "é.é.é",
        "eyJ.eyJ.sig",
        ".....",
    ] {
        f.refuse(token);
    }
}

#[test]
fn without_keys_tokens_are_unverifiable_not_invalid() {
    let verifier = Verifier::new(ISS, AUD, std::time::Duration::ZERO);
    assert_eq!(
        verifier.verify(&fixture().valid()),
        Err(VerifyError::NoKeys)
    );
}

#[test]
fn jwks_that_are_not_ed25519_signing_keys_are_refused() {
    let verifier = Verifier::new(ISS, AUD, std::time::Duration::ZERO);
    let good = jwk(KID, &fixture().public_x);
    let bad = [
        Jwk {
            kty: "RSA".into(),
            ..good.clone()
        },
        Jwk {
            crv: "X25519".into(),
            ..good.clone()
        },
        Jwk {
            alg: "HS256".into(),
            ..good.clone()
        },
        Jwk {
            r#use: "enc".into(),
            ..good.clone()
        },
        Jwk {
            x: "AAAA".into(),
            ..good.clone()
        },
        Jwk {
            kid: String::new(),
            ..good.clone()
        },
    ];
    for jwk in bad {
        assert!(
            verifier.set_keys(std::slice::from_ref(&jwk)).is_err(),
            "{jwk:?} accepted"
        );
    }
    assert!(!verifier.has_keys());
    verifier.set_keys(&[good]).unwrap();
    assert!(verifier.knows_kid(KID));
}

#[test]
fn a_remembered_token_is_refused_once_its_key_is_withdrawn() {
    let f = fixture();
    let token = f.valid();
    assert!(f.verifier.verify(&token).is_ok());
    assert!(f.verifier.verify(&token).is_ok(), "served from the cache");
    let other = URL_SAFE_NO_PAD.encode(
        SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    f.verifier.set_keys(&[jwk("another-key", &other)]).unwrap();
    assert_eq!(f.refuse(&token), VerifyError::UnknownKey);
}

#[test]
fn refetching_the_same_keys_changes_nothing_and_keeps_remembered_tokens() {
    let f = fixture();
    let same = jwk(KID, &f.public_x);
    assert!(!f.verifier.set_keys(std::slice::from_ref(&same)).unwrap());
    let token = f.valid();
    assert!(f.verifier.verify(&token).is_ok());
    assert!(!f.verifier.set_keys(&[same]).unwrap());
    assert!(f.verifier.verify(&token).is_ok());
}

#[test]
fn a_remembered_token_still_expires() {
    let f = fixture();
    let clock = Clock::adjustable();
    let verifier = Verifier::new(ISS, AUD, std::time::Duration::ZERO).with_clock(clock.clone());
    verifier.set_keys(&[jwk(KID, &f.public_x)]).unwrap();
    let mut claims = claims();
    claims["exp"] = json!(unix_now() + 60);
    let token = f.sign(&header(), &claims);
    assert!(verifier.verify(&token).is_ok());
    clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(verifier.verify(&token), Err(VerifyError::Expired));
}
