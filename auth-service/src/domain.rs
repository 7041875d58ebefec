//! The account fields, parsed once at the edge into types that cannot hold a
//! bad value (DESIGN §3 "Rules"). Lengths count Unicode characters.

use std::{collections::HashSet, fmt, sync::LazyLock};

use secrecy::{ExposeSecret, SecretString};

/// A username: trimmed, 1-50 characters, no control characters and no `@`
/// (so that a login name is never both a username and an email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Trims and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        let len = name.chars().count();
        if !(1..=50).contains(&len) {
            return Err("must be 1-50 characters");
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters");
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

    /// The form uniqueness is enforced on: case folded.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// An email address: trimmed, lowercased, valid, at most 120 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, lowercases and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
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
        let secret = SecretString::from(raw);
        if !(8..=128).contains(&len) {
            return Err("must be 8-128 characters");
        }
        if COMMON_PASSWORDS.contains(secret.expose_secret().to_lowercase().as_str()) {
            return Err("is one of the most common passwords; choose one that is harder to guess");
        }
        Ok(Self(secret))
    }

    /// A password as presented at login or re-authentication: not length
    /// checked (a wrong password is answered as wrong, not as malformed), but
    /// bounded so that hashing it costs what hashing any password costs.
    pub fn presented(raw: String) -> Self {
        let mut raw = raw;
        if raw.len() > 1024 {
            raw.truncate(raw.floor_char_boundary(1024));
        }
        Self(SecretString::from(raw))
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
            format!("{:?}", Password::presented("secret".into())),
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
                prop_assert_eq!(name.as_str(), raw.trim());
                prop_assert!(!name.as_str().contains('@'));
            }
        }

        #[test]
        fn emails_parse_to_lowercase_bounded_addresses(raw in any::<String>()) {
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
