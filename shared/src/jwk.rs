//! Ed25519 public keys as JWKs (RFC 8037), in the two shapes they take: the
//! standard JSON document (jsonwebtoken's [`Jwk`], which also computes RFC
//! 7638 thumbprints) and the wire message `GetJwks` returns.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use serde_json::{Map, Value};

/// The JWK of an Ed25519 verifying key, for EdDSA signatures, with its RFC
/// 7638 thumbprint as `kid`.
pub fn ed25519(public_key: &[u8; 32]) -> Jwk {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(public_key),
        }),
    };
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .expect("an Ed25519 JWK has a thumbprint");
    jwk.common.key_id = Some(thumbprint);
    jwk
}

/// The wire form of `jwk`: its members as strings, absent ones empty.
pub fn to_wire(jwk: &Jwk) -> proto::auth::Jwk {
    let document = serde_json::to_value(jwk).unwrap_or_default();
    let member = |name: &str| {
        document
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    proto::auth::Jwk {
        kty: member("kty"),
        crv: member("crv"),
        kid: member("kid"),
        alg: member("alg"),
        r#use: member("use"),
        x: member("x"),
    }
}

/// The standard form of a wire JWK, or `None` when its members do not make
/// a JWK document. Keys of kinds jsonwebtoken does not know are kept as they
/// are (and refused later, by the verifier).
pub fn from_wire(wire: &proto::auth::Jwk) -> Option<Jwk> {
    let members = [
        ("kty", &wire.kty),
        ("crv", &wire.crv),
        ("kid", &wire.kid),
        ("alg", &wire.alg),
        ("use", &wire.r#use),
        ("x", &wire.x),
    ];
    let document: Map<String, Value> = members
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name.to_owned(), Value::String(value.clone())))
        .collect();
    serde_json::from_value(Value::Object(document)).ok()
}

/// A key set as a standard JWKS document (`{"keys": [...]}`); keys with no
/// standard form are left out.
pub fn to_document(keys: &[proto::auth::Jwk]) -> String {
    let set = JwkSet {
        keys: keys.iter().filter_map(from_wire).collect(),
    };
    serde_json::to_string(&set).expect("a JWK set serializes")
}

/// The keys of a JWKS document, or `None` when it is not one.
pub fn from_document(json: &str) -> Option<Vec<proto::auth::Jwk>> {
    let set: JwkSet = serde_json::from_str(json).ok()?;
    Some(set.keys.iter().map(to_wire).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let jwk = ed25519(&x.try_into().unwrap());
        assert_eq!(
            jwk.common.key_id.as_deref(),
            Some("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
        );
    }

    #[test]
    fn keys_survive_the_wire_form() {
        let jwk = ed25519(&[7; 32]);
        let wire = to_wire(&jwk);
        assert_eq!(
            (wire.kty.as_str(), wire.crv.as_str(), wire.alg.as_str()),
            ("OKP", "Ed25519", "EdDSA")
        );
        assert_eq!(wire.r#use, "sig");
        assert_eq!(from_wire(&wire), Some(jwk));
    }

    #[test]
    fn keys_of_unknown_kinds_are_kept_as_they_are() {
        let wire = proto::auth::Jwk {
            kty: "XYZ".into(),
            kid: "k".into(),
            ..Default::default()
        };
        let stored = to_document(std::slice::from_ref(&wire));
        assert_eq!(from_document(&stored), Some(vec![wire]));
    }
}
