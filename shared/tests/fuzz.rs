//! Property tests ("fuzzing" that runs with `cargo test`): the verifier and
//! the bearer parsing never panic, whatever bytes arrive, and accept nothing
//! they should not. `PROPTEST_CASES=100000 cargo test --test fuzz` runs a
//! longer campaign.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::prelude::*;
use proto::auth::Jwk;
use shared::{AuthInterceptor, verify::Verifier};
use tonic::metadata::MetadataMap;

fn verifier() -> Verifier {
    let verifier = Verifier::new("blog-auth", "blog", std::time::Duration::from_secs(5));
    let x = URL_SAFE_NO_PAD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[3u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    verifier
        .set_keys(&[Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
            x,
        }])
        .unwrap();
    verifier
}

/// JSON-ish fragments that exercise the header and claims parsers.
fn json_part() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1"}"#.to_owned()),
        Just(r#"{"alg":"none"}"#.to_owned()),
        "\\{\"[a-z]{1,5}\":(\"[ -~]{0,10}\"|[0-9]{1,12}|null|true|\\[\\])\\}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_strings_never_verify_or_panic(token in any::<String>()) {
        prop_assert!(verifier().verify(&token).is_err());
    }

    #[test]
    fn arbitrary_three_part_tokens_never_verify_or_panic(
        header in json_part(),
        claims in json_part(),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(signature),
        );
        prop_assert!(verifier().verify(&token).is_err());
    }

    #[test]
    fn arbitrary_authorization_headers_never_panic(value in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_bytes(&value) {
            headers.insert("authorization", value);
        }
        let interceptor = AuthInterceptor::new(std::sync::Arc::new(verifier()));
        // Whatever it is, it is not a valid token: refused or absent.
        let result = interceptor.authenticate(&MetadataMap::from_headers(headers));
        prop_assert!(!matches!(result, Ok(Some(_))));
    }
}
