//! The spawner: the tls-sidecar control plane. It watches the Docker engine and keeps exactly one
//! sidecar in the network namespace of every running container that opted in with a label, and
//! none anywhere else.
//!
//! `run` takes what a test must control (config, the admin listener, shutdown token); `main`
//! adds signals, binding and exit codes.

mod acme;
mod admin;
mod certs;
mod config;
mod control;
mod daemon;
mod engine;
mod error;
mod identity;
mod layout;
mod metrics;
mod plan;
mod status;

pub use config::{CaAction, Cli, Command, Config};
pub use error::Error;

// Used by the tests outside this crate: the ACME client and its store against a real CA, the
// identity CA's files, and the contract test's labels -> spec -> sidecar round trip.
pub use acme::client::{Client as AcmeClient, Http as AcmeHttp};
pub use acme::dns::{Dns, DnsError, Location, Provider, Step, TsigAlgorithm, TsigKey};
pub use acme::store::Store as AcmeStore;
pub use identity::ca::{Authority as IdentityCa, CA_CERT_FILE, CA_KEY_FILE};
pub use plan::container::sidecar_spec;
pub use plan::labels::{parse_target, ChallengeKind, Offered};

use std::io::Write as _;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the configured command until it finishes or `shutdown` is cancelled. `admin`: the bound
/// `--admin-listen` socket, served while the daemon runs.
pub async fn run(
    config: Config,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    match config.command {
        Command::Run => {
            let metrics = Arc::new(metrics::Metrics::default());
            // Stops with `shutdown`, or when the daemon ends on an error of its own.
            let admin_stop = shutdown.child_token();
            let admin_task = admin.map(|listener| {
                tokio::spawn(admin::serve(listener, metrics.clone(), admin_stop.clone()))
            });
            let result = daemon::run(config, metrics, shutdown).await;
            admin_stop.cancel();
            if let Some(task) = admin_task {
                // Answers in flight finish (within the admin listener's grace).
                let _ = task.await;
            }
            result
        }
        Command::Status { json } => status::run(&config, json).await,
        Command::Rollout { target, all } => {
            let ask = match (target, all) {
                (Some(name), _) => control::Ask::Target(name),
                (None, _) => control::Ask::All,
            };
            match control::rollout(&config.label_prefix, &ask).await? {
                Ok(answer) => {
                    println!("{answer}");
                    Ok(())
                }
                Err(refused) => Err(Error::RolloutRefused(refused)),
            }
        }
        Command::Ca {
            action: CaAction::Export,
        } => {
            let bundle =
                identity::ca::export(&config.identity_ca, config.identity_trust.as_deref())?;
            let mut out = std::io::stdout().lock();
            out.write_all(bundle.as_bytes())
                .and_then(|()| out.flush())
                .map_err(Error::WriteBundle)
        }
    }
}
