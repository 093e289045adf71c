//! The spawner: the tls-sidecar control plane. It watches the Docker engine and keeps exactly one
//! sidecar in the network namespace of every running container that opted in with a label, and
//! none anywhere else.
//!
//! `run` takes what a test must control (config, shutdown token); `main` adds signals and exit codes.

pub mod config;
pub mod container;
pub mod daemon;
pub mod docker;
pub mod error;
pub mod events;
pub mod failure;
pub mod labels;
pub mod observe;
pub mod reconcile;
pub mod seen;
pub mod status;

pub use config::{Cli, Command, Config};
pub use error::Error;

use tokio_util::sync::CancellationToken;

/// Runs the configured command until it finishes or `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    match config.command {
        Command::Run => daemon::run(config, shutdown).await,
        Command::Status => status::run(&config).await,
    }
}
