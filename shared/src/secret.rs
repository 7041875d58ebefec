//! Secrets that are random strings: how they are made, stored and compared.
//!
//! Refresh tokens, reset tokens and the internal token are 256 random bits,
//! base64url. The database keeps only their SHA-256, so a leaked table grants
//! nothing; comparisons of presented secrets are constant-time.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing means the machine cannot do cryptography at
    // all; continuing with predictable bytes would be worse than stopping.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// A fresh 256-bit secret, base64url without padding (43 characters).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// The SHA-256 of a secret: what the database stores in its place.
pub fn sha256(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    // Hash first so that lengths leak nothing either.
    sha256(a).ct_eq(&sha256(b)).into()
}

/// The internal token: `configured` when set, else the one stored in
/// `data_dir/internal-token`, created on first use so that services of one
/// local stack agree without configuration.
pub fn internal_token(configured: Option<&str>, data_dir: &Path) -> io::Result<String> {
    if let Some(token) = configured.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(token.to_owned());
    }
    let path = data_dir.join("internal-token");
    crate::db::create_private_dir(data_dir)?;
    match create_private(&path) {
        Ok(mut file) => {
            let token = random_token();
            io::Write::write_all(&mut file, token.as_bytes())?;
            tracing::info!(path = %path.display(), "generated an internal token for the local stack");
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => Err(e),
    }
}

fn read_token(path: &PathBuf) -> io::Result<String> {
    // Another process may have created the file and not written it yet.
    for _ in 0..50 {
        let token = fs::read_to_string(path)?.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is empty", path.display()),
    ))
}

fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_256_bits_and_distinct() {
        let a = random_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_token());
    }

    #[test]
    fn constant_time_eq_compares_contents() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
        assert!(!constant_time_eq("secret", "secret2"));
    }

    #[test]
    fn internal_token_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("blog-secret-{}", random_token()));
        let first = internal_token(None, &dir).unwrap();
        assert_eq!(internal_token(None, &dir).unwrap(), first);
        assert_eq!(internal_token(Some("given"), &dir).unwrap(), "given");
        fs::remove_dir_all(dir).unwrap();
    }
}
