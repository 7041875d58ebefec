//! The website's settings: where it listens, where the two services are,
//! and the key that seals session cookies.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// The website's own command-line settings (the services' addresses are
/// given separately: the launcher knows them).
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Where the website listens.
    #[arg(long, env = "WEB_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub web_http_addr: SocketAddr,
    /// The posts-service's gRPC address (when this process does not run it).
    #[arg(
        long,
        env = "POSTS_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub posts_service_url: String,
    /// The key sealing session cookies: 32 bytes, base64url. Every replica
    /// behind one balancer needs the same. When unset, one is generated once
    /// under the data directory, which suits a single machine only.
    #[arg(long, env = "WEB_SESSION_KEY", hide_env_values = true)]
    pub web_session_key: Option<String>,
    /// A file holding the session key (a mounted secret), used when
    /// `WEB_SESSION_KEY` is unset.
    #[arg(long, env = "WEB_SESSION_KEY_FILE")]
    pub web_session_key_file: Option<PathBuf>,
}

/// Everything the website needs to run.
#[derive(Clone)]
pub struct Config {
    /// Where it listens.
    pub http_addr: SocketAddr,
    /// The auth-service's gRPC address.
    pub auth_url: String,
    /// The posts-service's gRPC address.
    pub posts_url: String,
    /// The key sealing session cookies.
    pub session_key: [u8; 32],
    /// Whether browsers reach the site over HTTPS (its public URL starts
    /// with `https://`): then cookies are `Secure` and `__Host-`, and HSTS
    /// is sent.
    pub secure: bool,
    /// The deployment's internal token. With it the website tells the
    /// auth-service which visitor's address each call is for, so that
    /// per-address limits count visitors, not the website; without it they
    /// all share the website's address.
    pub internal_token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("auth_url", &self.auth_url)
            .field("posts_url", &self.posts_url)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Settings for tests: loopback services, a fixed key, plain HTTP.
    pub fn for_tests(auth_url: String, posts_url: String) -> Self {
        Self {
            http_addr: ([127, 0, 0, 1], 0).into(),
            auth_url,
            posts_url,
            session_key: [7; 32],
            secure: false,
            internal_token: None,
        }
    }
}

impl WebArgs {
    /// The session key: `WEB_SESSION_KEY`, else the contents of
    /// `WEB_SESSION_KEY_FILE`, else the one kept under `data_dir` (generated
    /// on first start, readable by this user only).
    pub fn session_key(&self, data_dir: &Path) -> anyhow::Result<[u8; 32]> {
        if let Some(raw) = &self.web_session_key {
            return parse_key(raw.trim())
                .ok_or_else(|| anyhow::anyhow!("WEB_SESSION_KEY is not 32 bytes of base64url"));
        }
        if let Some(path) = &self.web_session_key_file {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            return parse_key(raw.trim()).ok_or_else(|| {
                anyhow::anyhow!("{} does not hold 32 bytes of base64url", path.display())
            });
        }
        let path: PathBuf = data_dir.join("web-session.key");
        if let Ok(raw) = std::fs::read_to_string(&path) {
            return parse_key(raw.trim())
                .ok_or_else(|| anyhow::anyhow!("{} does not hold a session key", path.display()));
        }
        std::fs::create_dir_all(data_dir)?;
        let key = crate::session::random_token();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => file.write_all(key.as_bytes())?,
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return self.session_key(data_dir);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(parse_key(&key).expect("a fresh key parses"))
    }
}

fn parse_key(raw: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(raw).ok()?.try_into().ok()
}
