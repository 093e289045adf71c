//! The sidecar as a library: `main` parses and validates, then calls [`run`] with what a test
//! would want to control (bound listeners, a shutdown token).
//!
//! A folder per subsystem, each depending only on those below it:
//! - `server`: the TLS listener (accept, admit, handshake, dispatch, drain), and what runs beside
//!   it for the life of the process (the orphan watcher, the memory trim).
//! - `http` and `tcp`: the two modes, each serving one TLS connection; `identity`: the egress
//!   relays that call other services over mutual TLS.
//! - `tls`: the certificates served (chosen by SNI, reloaded on SIGHUP or file changes), client
//!   authentication and its reloads, the identity trust bundle, ACME TLS-ALPN-01 answers.
//! - `connection`: what the listener and the modes share about each connection, its admission
//!   slot and its activity.
//! - Around them: [`config`] (command line -> a validated [`config::Config`]), `error`,
//!   `metrics` and the `admin` listener that serves them, the plain-HTTP `redirect` listener,
//!   the [`access_log`] writer, and `throttle` for log lines a client can cause.

// Private by default: an item of a private module is `pub(crate)` at most, so what the library
// offers `main` and the tests is exactly what this file makes `pub`.
#![warn(unreachable_pub)]

pub mod access_log;
mod admin;
pub mod config;
mod connection;
mod error;
mod http;
mod identity;
mod metrics;
mod redirect;
mod server;
mod tcp;
mod throttle;
mod tls;

pub use error::{ConfigError, Error};
pub use server::bind;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::identity::egress;
use crate::metrics::Metrics;
use crate::server::{memory, orphan};
use crate::tls::certs::{CertSet, Entry};
use crate::tls::client_auth::ClientTrust;
use crate::tls::identity_trust::IdentityTrust;
use crate::tls::{client_trust_reload, reload, CertStore};

/// Start-up work that reads files: certificates, the client CA and the ACME webroot. Done before
/// binding so a bad file is a configuration error (exit 2) with nothing else started.
pub struct Prepared {
    certs: CertSet,
    self_signed: Option<Arc<Entry>>,
    client_trust: Option<Arc<ClientTrust>>,
    webroot: Option<redirect::Webroot>,
    /// The identity trust bundle (`--identity-ca`).
    trust: Option<Arc<IdentityTrust>>,
    routes: Vec<egress::Route>,
}

/// Loads every certificate, the client CA and the identity trust bundle the configuration names,
/// and opens the webroot.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigError> {
    // First: loading certificates may log (a generated self-signed one), and a bad webroot,
    // upstream or identity trust bundle should be the only line on stderr.
    let webroot = config
        .redirect
        .as_ref()
        .and_then(|r| r.acme_webroot.as_deref())
        .map(redirect::Webroot::open)
        .transpose()?;
    let routes = egress::Route::all(&config.upstreams)?;
    let trust = config
        .certs
        .identity
        .as_ref()
        .map(|id| IdentityTrust::load(&id.ca).map(Arc::new))
        .transpose()?;
    let (certs, self_signed) = reload::load_initial(&config.certs)?;
    let client_trust = config
        .client_auth
        .as_ref()
        .map(ClientTrust::load)
        .transpose()?;
    Ok(Prepared {
        certs,
        self_signed,
        client_trust,
        webroot,
        trust,
        routes,
    })
}

/// Entries listed one by one at start up to this many; more are summarised in one line.
const LOG_CERTS_MAX: usize = 20;

/// Serves until `shutdown` is cancelled and the drain is over. `upstreams` are the egress relays'
/// listeners, one per `config.upstreams` entry, in order.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    redirect: Option<TcpListener>,
    upstreams: Vec<TcpListener>,
    config: Config,
    prepared: Prepared,
    shutdown: CancellationToken,
) -> Result<(), ConfigError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    metrics.set_certificates(prepared.certs.expiries());
    let entries = prepared.certs.entries();
    for e in entries.iter().take(LOG_CERTS_MAX) {
        info!(name = %e.name, origin = %e.origin, sha256 = %e.fingerprint, "serving certificate");
    }
    if entries.len() > LOG_CERTS_MAX {
        info!(count = entries.len(), "serving certificates");
    }
    let store = Arc::new(CertStore::new(prepared.certs));
    let mtls = prepared.client_trust.is_some();
    let tls = tls::server_config(
        store.clone(),
        config.mode,
        &config.alpn,
        prepared.client_trust.as_ref().map(ClientTrust::tls),
    )?;
    if mtls {
        info!("client certificates verified (mutual TLS)");
    }
    let relays = match (&prepared.trust, &config.certs.identity) {
        (Some(trust), Some(id)) if !prepared.routes.is_empty() => {
            info!(domain = %id.domain, roots = trust.roots(), "upstream servers verified against the identity trust bundle");
            let verifier = Arc::new(identity::IdentityVerifier::new(
                trust.clone(),
                id.domain.clone(),
            ));
            identity::Clients::new(store.clone(), verifier)?
                .map(|clients| egress::Relays::new(prepared.routes, clients, &config, &metrics))
        }
        _ => None,
    };
    let upstream_task = relays.map(|r| tokio::spawn(egress::serve(upstreams, r, shutdown.clone())));
    let reload_task = tokio::spawn(reload::watch(
        config.certs.clone(),
        store,
        prepared.trust,
        metrics.clone(),
        prepared.self_signed,
        shutdown.clone(),
    ));
    let trust_task = prepared.client_trust.map(|trust| {
        tokio::spawn(client_trust_reload::watch(
            trust,
            config.certs.reload_interval,
            metrics.clone(),
            shutdown.clone(),
        ))
    });

    // Ends by itself once `shutdown` is cancelled, by a signal or by the watcher itself.
    let orphan_task = config.exit_when_orphaned.then(|| {
        tokio::spawn(orphan::watch(
            orphan::NET_DEV.into(),
            orphan::CHECK_INTERVAL,
            shutdown.clone(),
        ))
    });

    let admin_stop = CancellationToken::new();
    let admin_task =
        admin.map(|l| tokio::spawn(admin::serve(l, metrics.clone(), admin_stop.clone())));
    let redirect_task = match (redirect, &config.redirect) {
        (Some(l), Some(r)) => {
            let https_port = listener
                .local_addr()
                .map_or(config.listen.port(), |a| a.port());
            let redirect = redirect::Redirect {
                port: r.port.unwrap_or(https_port),
                webroot: prepared.webroot,
                header_read_timeout: config.header_read_timeout,
            };
            // Stops with the TLS listener: during the drain there is nothing to redirect to.
            Some(tokio::spawn(redirect::serve(l, redirect, shutdown.clone())))
        }
        _ => None,
    };

    let trim_task = tokio::spawn(memory::run(metrics.clone(), shutdown.clone()));
    server::serve(listener, config, tls, metrics, shutdown).await;
    let _ = trim_task.await;

    if let Some(task) = upstream_task {
        let _ = task.await;
    }
    let _ = reload_task.await;
    if let Some(task) = trust_task {
        let _ = task.await;
    }
    if let Some(task) = orphan_task {
        let _ = task.await;
    }
    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(task) = redirect_task {
        let _ = task.await;
    }
    Ok(())
}
