//! The sidecar as a library: `main` parses and validates, then calls [`run`] with what a test
//! would want to control (bound listeners, a shutdown token).
//!
//! Where the next features slot in: certificate hot reload and SNI selection live behind
//! [`tls::CertStore`] (the resolver every handshake asks); mutual TLS is a client verifier in
//! [`tls::server_config`] plus identity headers in [`http`]'s request rewrite; an HTTP->HTTPS
//! redirect listener is one more listener started in [`run`] beside the admin one.

pub mod activity;
pub mod admin;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod server;
pub mod tcp;
pub mod tls;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::tls::{CertStore, LoadedCert};

/// Serves until `shutdown` is cancelled and the drain is over.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    cert: LoadedCert,
    shutdown: CancellationToken,
) -> Result<(), ConfigError> {
    let config = Arc::new(config);
    let store = Arc::new(CertStore::new(cert.key.clone()));
    let tls = tls::server_config(store, config.mode)?;
    info!(origin = %cert.origin, sha256 = %cert.fingerprint, "serving certificate");
    let metrics = Arc::new(Metrics::default());

    let admin_stop = CancellationToken::new();
    let admin_task = admin.map(|l| tokio::spawn(admin::serve(l, metrics.clone(), admin_stop.clone())));

    server::serve(listener, config, tls, metrics, shutdown).await;

    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    Ok(())
}
