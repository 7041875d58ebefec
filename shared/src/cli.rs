//! The command line every binary here shares: serve (the default), or
//! `healthcheck`, which asks the running service for its health so that a
//! container needs no extra tool.

use std::net::SocketAddr;

/// What a binary is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve until SIGTERM or SIGINT (the default).
    Serve,
    /// Exit 0 if the service reports SERVING, 1 otherwise.
    Healthcheck,
}

/// A command and the settings it runs with.
#[derive(Debug, clap::Parser)]
pub struct Cli<T: clap::Args> {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The settings.
    #[command(flatten)]
    pub settings: T,
}

impl<T: clap::Args> Cli<T> {
    /// The command line of the binary `name`, described by `about`.
    pub fn parse_as(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .name(name)
            .about(about)
            .version(env!("CARGO_PKG_VERSION"))
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Whether the command is `healthcheck`.
    pub fn is_healthcheck(&self) -> bool {
        self.command == Some(Command::Healthcheck)
    }
}

/// Asks each gRPC server at `addrs` for its health; exits the process with
/// 1 on the first that is not serving, and returns when all are.
pub async fn check_health(addrs: &[SocketAddr]) {
    for addr in addrs {
        if let Err(e) = crate::server::healthcheck(*addr).await {
            eprintln!("unhealthy: {e}");
            std::process::exit(1);
        }
    }
}
