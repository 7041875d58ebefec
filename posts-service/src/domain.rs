//! Post fields and list parameters, parsed once at the edge (the rules are
//! in `docs/contract.md`). Lengths count Unicode characters; text is stored
//! exactly as given, and never holds NUL.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use shared::time::Timestamp;

/// A post title: 1-100 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    /// Checks `raw`, keeping it as given.
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        not_blank_within(&raw, 100)?;
        Ok(Self(raw))
    }

    /// The title.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A post body: 1-20000 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    /// Checks `raw`, keeping it as given.
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        not_blank_within(&raw, 20_000)?;
        Ok(Self(raw))
    }

    /// The body.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn not_blank_within(raw: &str, max: usize) -> Result<(), &'static str> {
    if raw.contains('\0') {
        return Err("must not contain NUL");
    }
    if raw.trim().is_empty() {
        return Err("must not be blank");
    }
    if raw.chars().count() > max {
        return Err(if max == 100 {
            "must be at most 100 characters"
        } else {
            "must be at most 20000 characters"
        });
    }
    Ok(())
}

/// Posts per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: i64 = 10;
/// The most posts one page holds.
pub const MAX_PAGE_SIZE: i64 = 100;
/// The most bytes one page's response may take: gRPC clients refuse
/// messages over 4 MiB by default, so a page stays below that, with room
/// for the envelope, and holds fewer posts when they are large.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024 - 16 * 1024;

/// `page_size`: 0 means the default, above the maximum means the maximum.
pub fn page_size(raw: i32) -> Result<i64, &'static str> {
    match raw {
        ..0 => Err("must not be negative"),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// Where a page starts: after the post with this `(create_time, id)`, in a
/// listing filtered by `author_id` (0 = everyone). Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    /// Creation time of the last post of the previous page.
    pub create_time: Timestamp,
    /// Id of the last post of the previous page.
    pub id: i64,
    /// The filter the token was issued for.
    pub author_id: i64,
}

/// Version tag of the token layout, so it can change without misreading old
/// tokens.
const PAGE_TOKEN_VERSION: u8 = 1;
const PAGE_TOKEN_LEN: usize = 1 + 3 * 8;

impl PageToken {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(PAGE_TOKEN_LEN);
        bytes.push(PAGE_TOKEN_VERSION);
        bytes.extend_from_slice(&self.create_time.as_micros().to_be_bytes());
        bytes.extend_from_slice(&self.id.to_be_bytes());
        bytes.extend_from_slice(&self.author_id.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a client's token for a listing filtered by `author_id`. A token
    /// from another listing, or anything we did not issue, is refused.
    pub fn decode(raw: &str, author_id: i64) -> Result<Self, &'static str> {
        const BAD: &str = "is not a page token from this listing";
        if raw.len() > 64 {
            return Err(BAD);
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| BAD)?;
        if bytes.len() != PAGE_TOKEN_LEN || bytes[0] != PAGE_TOKEN_VERSION {
            return Err(BAD);
        }
        let field = |i: usize| {
            let start = 1 + 8 * i;
            i64::from_be_bytes(bytes[start..start + 8].try_into().expect("8 bytes"))
        };
        let token = Self {
            create_time: Timestamp::from_micros(field(0)),
            id: field(1),
            author_id: field(2),
        };
        if token.author_id != author_id || token.id <= 0 || token.create_time < Timestamp::EPOCH {
            return Err(BAD);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_and_contents_are_bounded_in_characters_and_not_blank() {
        assert!(Title::parse("é".repeat(100)).is_ok());
        assert!(Title::parse("é".repeat(101)).is_err());
        assert!(Title::parse("  \t\n".into()).is_err());
        assert!(Title::parse(String::new()).is_err());
        assert_eq!(
            Title::parse(" padded ".into()).unwrap().as_str(),
            " padded "
        );
        assert!(Content::parse("x".repeat(20_000)).is_ok());
        assert!(Content::parse("x".repeat(20_001)).is_err());
        assert!(Content::parse("   ".into()).is_err());
    }

    #[test]
    fn page_size_defaults_caps_and_refuses_negatives() {
        assert_eq!(page_size(0), Ok(10));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(101), Ok(100));
        assert_eq!(page_size(i32::MAX), Ok(100));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_filter() {
        let token = PageToken {
            create_time: Timestamp::from_micros(1_700_000_000_123_456),
            id: 42,
            author_id: 7,
        };
        assert_eq!(PageToken::decode(&token.encode(), 7), Ok(token));
        assert!(PageToken::decode(&token.encode(), 0).is_err());
        for garbage in [
            "",
            "x",
            "!!!!",
            "AAAA",
            &"A".repeat(500),
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(PageToken::decode(garbage, 7).is_err(), "{garbage:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn page_tokens_decode_arbitrary_input_without_panicking(raw in any::<String>(), author in any::<i64>()) {
            let _ = PageToken::decode(&raw, author);
        }

        #[test]
        fn page_tokens_round_trip(create_time in 0i64.., id in 1i64.., author_id in 0i64..) {
            let token = PageToken { create_time: Timestamp::from_micros(create_time), id, author_id };
            prop_assert_eq!(PageToken::decode(&token.encode(), author_id), Ok(token));
        }

        #[test]
        fn titles_and_contents_hold_their_rules(raw in any::<String>()) {
            if let Ok(title) = Title::parse(raw.clone()) {
                prop_assert!(title.as_str().chars().count() <= 100 && !title.as_str().trim().is_empty());
                prop_assert_eq!(title.as_str(), raw.as_str());
            }
            if let Ok(content) = Content::parse(raw.clone()) {
                prop_assert!(content.as_str().chars().count() <= 20_000 && !content.as_str().trim().is_empty());
            }
        }

        #[test]
        fn page_sizes_are_within_bounds(raw in any::<i32>()) {
            match page_size(raw) {
                Ok(size) => prop_assert!((1..=MAX_PAGE_SIZE).contains(&size)),
                Err(_) => prop_assert!(raw < 0),
            }
        }
    }
}
