//! The server kit the two blog services share, so that they agree by
//! construction. The wire contract itself is the `proto` crate.
//!
//! - [`verify`]: access-token verification (EdDSA, pinned rules).
//! - [`current_user`]: the interceptor that verifies bearer tokens and the
//!   [`CurrentUser`](current_user::CurrentUser) helper handlers call.
//! - [`status`]: the fixed status messages and field-violation errors.
//! - [`cli`]: the command line every binary shares (serve, healthcheck).
//! - [`harness`]: how a service runs: routes, tasks, health, graceful stop.
//! - [`server`]: transport limits, health, reflection and shutdown.
//! - [`admission`]: which calls a server takes on, and what they may hold.
//! - [`conn`]: accepted connections, closed when silent too long.
//! - [`methods`]: the methods our servers answer, from the descriptors.
//! - [`limits`]: rate limits and guess throttles.
//! - [`observe`]: per-call spans, logs, metrics and request ids.
//! - [`http`]: the plain HTTP side's server and `/metrics` response.
//! - [`config`]: settings both services read, and logging setup.
//! - [`db`]: opening databases, classifying their errors, stored times.
//! - [`time`]: the one timestamp type, stored and sent.
//! - [`trace`]: W3C trace context, to follow work across both services.
//! - [`ids`]: ids for calls, traces and spans: unique, cheap, not secret.
//! - [`jwk`]: Ed25519 public keys as JWKs, with RFC 7638 thumbprints.
//! - [`secret`]: random tokens, hashing and constant-time comparison.

pub mod admission;
pub mod cli;
pub mod config;
pub mod conn;
pub mod current_user;
pub mod db;
pub mod harness;
pub mod http;
pub mod ids;
pub mod jwk;
pub mod limits;
pub mod methods;
pub mod observe;
pub mod secret;
pub mod server;
pub mod status;
pub mod time;
pub mod trace;
pub mod verify;

pub use current_user::{AuthInterceptor, CurrentUser};
