//! The account fields, parsed once at the edge into types that cannot hold a
//! bad value (the rules are in `docs/contract.md`). Lengths count Unicode
//! characters; no text field may hold NUL.

use std::{collections::HashSet, fmt, sync::LazyLock};

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// The most characters a login name (a username or an email) may have.
pub const MAX_LOGIN_CHARS: usize = 120;

/// A username: NFKC-normalized and trimmed, 1-50 characters, made of
/// letters, marks, numbers, punctuation and symbols only (no control,
/// format or separator characters, so nothing invisible and no spaces), not
/// starting with a combining mark, and without `@` (so that a login name is
/// never both a username and an email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Normalizes and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.contains('\0') {
            return Err("must not contain NUL");
        }
        let name: String = raw.nfkc().collect();
        let name = name.trim();
        let len = name.chars().count();
        if !(1..=50).contains(&len) {
            return Err("must be 1-50 characters");
        }
        let invisible = |c: char| {
            matches!(
                c.general_category_group(),
                GeneralCategoryGroup::Other | GeneralCategoryGroup::Separator
            )
        };
        if name.chars().any(invisible) {
            return Err("must not contain spaces, control or invisible characters");
        }
        if name.chars().next().is_some_and(is_combining_mark) {
            return Err("must not start with a combining mark");
        }
        if name.contains('@') {
            return Err("must not contain '@'");
        }
        Ok(Self(name.to_owned()))
    }

    /// The username as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form case-insensitive lookups use: lowercased.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    /// The form uniqueness is enforced on: the UTS #39 confusable skeleton
    /// of the lowercased name, so names that differ only in case or that
    /// look alike (Cyrillic "а" for Latin "a", "rn" for "m") collide.
    pub fn skeleton(&self) -> String {
        skeleton(&self.0)
    }
}

/// The uniqueness form of a stored username (see [`Username::skeleton`]).
pub fn skeleton(username: &str) -> String {
    unicode_security::skeleton(&username.to_lowercase()).collect()
}

/// A name presented at login: a username or an email, trimmed, at most
/// [`MAX_LOGIN_CHARS`] characters, compared NFKC-normalized and lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginName(String);

impl LoginName {
    /// Checks `raw` before anything else is done with it.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.chars().nth(MAX_LOGIN_CHARS + 16).is_some() {
            // Refused before normalizing: that costs time in the input's size.
            return Err("must be at most 120 characters");
        }
        if raw.contains('\0') {
            return Err("must not contain NUL");
        }
        let name: String = raw.nfkc().collect::<String>().trim().to_lowercase();
        if name.is_empty() {
            return Err("must not be empty");
        }
        if name.chars().count() > MAX_LOGIN_CHARS {
            return Err("must be at most 120 characters");
        }
        Ok(Self(name))
    }

    /// The normalized name, as compared with usernames' keys and emails.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: trimmed, lowercased, valid, at most 120 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, lowercases and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.contains('\0') {
            return Err("must not contain NUL");
        }
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("must not be empty");
        }
        if email.chars().count() > 120 {
            return Err("must be at most 120 characters");
        }
        // RFC 5322 also allows quoted local parts, display names and IP
        // literals; no real sign-up needs them, so only plain addresses with a
        // dotted domain pass.
        let options = email_address::Options {
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            allow_display_text: false,
            allow_long_local_parts: false,
        };
        let valid = email_address::EmailAddress::parse_with_options(&email, options).is_ok();
        if !valid
            || email
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            return Err("must be a valid email address");
        }
        Ok(Self(email))
    }

    /// The address as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The most common passwords of 8 characters or more, lowercased.
static COMMON_PASSWORDS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_lowercase)
        .collect()
});

/// A password: 8-128 characters, used exactly as given, never logged.
pub struct Password(SecretString);

impl Password {
    /// Checks the length of `raw` and that it is not one of the most common
    /// passwords (in any case); nothing is trimmed or altered. No
    /// composition rules: length and rarity are what resist guessing.
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        let len = raw.chars().count();
        let has_nul = raw.contains('\0');
        let secret = SecretString::from(raw);
        if !(8..=128).contains(&len) {
            return Err("must be 8-128 characters");
        }
        if has_nul {
            return Err("must not contain NUL");
        }
        if COMMON_PASSWORDS.contains(secret.expose_secret().to_lowercase().as_str()) {
            return Err("is one of the most common passwords; choose one that is harder to guess");
        }
        Ok(Self(secret))
    }

    /// A password as presented at login or re-authentication: not length
    /// checked (a wrong password is answered as wrong, not as malformed), but
    /// bounded so that hashing it costs what hashing any password costs.
    pub fn presented(raw: String) -> Result<Self, &'static str> {
        let mut raw = raw;
        if raw.len() > 1024 {
            raw.truncate(raw.floor_char_boundary(1024));
        }
        let secret = SecretString::from(raw);
        if secret.expose_secret().contains('\0') {
            return Err("must not contain NUL");
        }
        Ok(Self(secret))
    }

    /// The password's bytes, for hashing only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_is_trimmed_and_bounded_in_characters() {
        assert_eq!(Username::parse("  alice ").unwrap().as_str(), "alice");
        assert!(Username::parse("   ").is_err());
        assert!(Username::parse(&"é".repeat(50)).is_ok());
        assert!(Username::parse(&"é".repeat(51)).is_err());
        assert!(Username::parse("a@b").is_err());
        assert!(Username::parse("a\u{0}b").is_err());
        assert_eq!(Username::parse("ÅSA").unwrap().key(), "åsa");
    }

    #[test]
    fn usernames_are_nfkc_normalized_and_hold_nothing_invisible() {
        assert_eq!(Username::parse("ａｌｉｃｅ").unwrap().as_str(), "alice");
        assert_eq!(Username::parse("ﬁle").unwrap().as_str(), "file");
        for hidden in [
            "al\u{200B}ice",
            "al\u{200D}ice",
            "al\u{00AD}ice",
            "\u{202E}ecila",
            "al\u{2028}ice",
            "al ice",
            "\u{0301}alice",
            "al\u{FEFF}ice",
            "al\tice",
        ] {
            assert!(Username::parse(hidden).is_err(), "{hidden:?} accepted");
        }
        assert!(Username::parse("Zoë_Åström-42").is_ok());
        assert!(Username::parse("名前").is_ok());
    }

    #[test]
    fn look_alike_usernames_share_a_skeleton() {
        let skeleton = |name: &str| Username::parse(name).unwrap().skeleton();
        assert_eq!(skeleton("alice"), skeleton("ALICE"));
        // Cyrillic а and е.
        assert_eq!(skeleton("alice"), skeleton("\u{0430}lic\u{0435}"));
        assert_eq!(skeleton("alice"), skeleton("\u{0410}LICE"));
        assert_eq!(skeleton("modern"), skeleton("rnodern"));
        assert_ne!(skeleton("alice"), skeleton("alicia"));
    }

    #[test]
    fn login_names_are_bounded_before_anything_else() {
        assert_eq!(
            LoginName::parse(" Bob@Example.com ").unwrap().as_str(),
            "bob@example.com"
        );
        assert_eq!(LoginName::parse("ＡＬＩＣＥ").unwrap().as_str(), "alice");
        assert!(LoginName::parse(&"a".repeat(120)).is_ok());
        assert!(LoginName::parse(&"a".repeat(121)).is_err());
        assert!(LoginName::parse(&"a".repeat(4 * 1024 * 1024)).is_err());
        assert!(LoginName::parse("  ").is_err());
        assert!(LoginName::parse("al\0ice").is_err());
    }

    #[test]
    fn no_field_holds_nul() {
        assert!(Email::parse("a\0b@example.com").is_err());
        assert!(Password::parse("long enough\0password".into()).is_err());
    }

    #[test]
    fn email_is_trimmed_lowercased_and_validated() {
        assert_eq!(
            Email::parse(" Bob@Example.COM ").unwrap().as_str(),
            "bob@example.com"
        );
        for bad in [
            "",
            "bob",
            "bob@",
            "@example.com",
            "bob@example",
            "b ob@example.com",
            "Bob <bob@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@{}.com", "a".repeat(55), "b".repeat(60));
        assert_eq!(long.len(), 120);
        assert!(Email::parse(&long).is_ok());
        assert!(Email::parse(&format!("a{long}")).is_err());
    }

    #[test]
    fn the_most_common_passwords_are_refused_in_any_case() {
        assert!(COMMON_PASSWORDS.len() > 10_000);
        for common in [
            "password",
            "12345678",
            "iloveyou",
            "PassWord1",
            "QWERTYUIOP",
            "football1",
        ] {
            assert!(Password::parse(common.into()).is_err(), "{common} accepted");
        }
        assert!(Password::parse("correct horse battery".into()).is_ok());
    }

    #[test]
    fn password_is_bounded_in_characters_and_never_trimmed() {
        assert!(Password::parse("1234567".into()).is_err());
        assert_eq!(
            Password::parse(" 1234567".into()).unwrap().expose(),
            " 1234567"
        );
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("é".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::presented("secret".into()).unwrap()),
            "Password([REDACTED])"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn usernames_parse_to_trimmed_bounded_names(raw in any::<String>()) {
            if let Ok(name) = Username::parse(&raw) {
                let len = name.as_str().chars().count();
                prop_assert!((1..=50).contains(&len));
                let normalized: String = raw.nfkc().collect();
                prop_assert_eq!(name.as_str(), normalized.trim());
                prop_assert!(!name.as_str().contains('@'));
            }
        }

        #[test]
        fn emails_parse_to_lowercase_bounded_addresses(
            raw in "[ ]{0,2}[A-Za-z0-9_%+-]{1,20}(\\.[A-Za-z0-9_%+-]{1,15}){0,2}@[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\\.[A-Za-z]{2,10}){1,3}[ ]{0,2}"
        ) {
            // Plain addresses: every one of them must be accepted, as given
            // but trimmed and lowercased.
            let email = Email::parse(&raw);
            prop_assert!(email.is_ok(), "{raw:?}: {email:?}");
            let email = email.unwrap();
            prop_assert!(email.as_str().chars().count() <= 120);
            prop_assert_eq!(email.as_str(), raw.trim().to_lowercase());
        }

        #[test]
        fn emails_never_parse_to_anything_unbounded_or_unlowered(raw in any::<String>()) {
            if let Ok(email) = Email::parse(&raw) {
                prop_assert!(email.as_str().chars().count() <= 120);
                prop_assert_eq!(email.as_str(), raw.trim().to_lowercase());
                prop_assert!(email.as_str().contains('@'));
            }
        }

        #[test]
        fn passwords_are_kept_exactly(raw in any::<String>()) {
            if let Ok(password) = Password::parse(raw.clone()) {
                prop_assert_eq!(password.expose(), raw.as_str());
                prop_assert!((8..=128).contains(&raw.chars().count()));
            }
        }
    }
}
