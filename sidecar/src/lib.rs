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
use tokio::task::JoinHandle;
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
    log_certificates(&prepared.certs);
    let store = Arc::new(CertStore::new(prepared.certs));
    let tls = server_tls(&store, &config, prepared.client_trust.as_ref())?;
    let relays = relays(
        prepared.trust.as_ref(),
        prepared.routes,
        &config,
        &store,
        &metrics,
    )?;
    let upstream = relays.map(|r| tokio::spawn(egress::serve(upstreams, r, shutdown.clone())));
    let reload = tokio::spawn(reload::watch(
        config.certs.clone(),
        store,
        prepared.trust,
        metrics.clone(),
        prepared.self_signed,
        shutdown.clone(),
    ));
    let client_trust = prepared.client_trust.map(|trust| {
        tokio::spawn(client_trust_reload::watch(
            trust,
            config.certs.reload_interval,
            metrics.clone(),
            shutdown.clone(),
        ))
    });

    // Ends by itself once `shutdown` is cancelled, by a signal or by the watcher itself.
    let orphan = config.exit_when_orphaned.then(|| {
        tokio::spawn(orphan::watch(
            orphan::NET_DEV.into(),
            orphan::CHECK_INTERVAL,
            shutdown.clone(),
        ))
    });

    let admin_stop = CancellationToken::new();
    let admin = admin.map(|l| tokio::spawn(admin::serve(l, metrics.clone(), admin_stop.clone())));
    let redirect = spawn_redirect(redirect, &listener, &config, prepared.webroot, &shutdown);
    let beside = Beside {
        upstream,
        reload,
        client_trust,
        orphan,
        admin,
        admin_stop,
        redirect,
    };

    let trim = tokio::spawn(memory::run(metrics.clone(), shutdown.clone()));
    server::serve(listener, config, tls, metrics, shutdown).await;
    let _ = trim.await;
    beside.join().await;
    Ok(())
}

/// Logs the certificates served at start: one line each, up to [`LOG_CERTS_MAX`].
fn log_certificates(certs: &CertSet) {
    let entries = certs.entries();
    for e in entries.iter().take(LOG_CERTS_MAX) {
        info!(name = %e.name, origin = %e.origin, sha256 = %e.fingerprint, "serving certificate");
    }
    if entries.len() > LOG_CERTS_MAX {
        info!(count = entries.len(), "serving certificates");
    }
}

/// The TLS configuration of the listener, with client certificates verified against
/// `client_trust` when there is one.
fn server_tls(
    store: &Arc<CertStore>,
    config: &Config,
    client_trust: Option<&Arc<ClientTrust>>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let tls = tls::server_config(
        store.clone(),
        config.mode,
        &config.alpn,
        client_trust.map(ClientTrust::tls),
    )?;
    if client_trust.is_some() {
        info!("client certificates verified (mutual TLS)");
    }
    Ok(tls)
}

/// The plain-HTTP redirect listener, when it is configured, sending clients to the port of
/// `https` (the TLS listener) unless the configuration names another.
fn spawn_redirect(
    listener: Option<TcpListener>,
    https: &TcpListener,
    config: &Config,
    webroot: Option<redirect::Webroot>,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let (Some(l), Some(r)) = (listener, &config.redirect) else {
        return None;
    };
    let https_port = https
        .local_addr()
        .map_or(config.listen.port(), |a| a.port());
    let redirect = redirect::Redirect {
        port: r.port.unwrap_or(https_port),
        webroot,
        header_read_timeout: config.header_read_timeout,
    };
    // Stops with the TLS listener: during the drain there is nothing to redirect to.
    Some(tokio::spawn(redirect::serve(l, redirect, shutdown.clone())))
}

/// The egress relays, when there are routes and an identity to call them with: upstream
/// servers are verified against the identity trust bundle, and the sidecar presents its
/// identity certificate from `store`.
fn relays(
    trust: Option<&Arc<IdentityTrust>>,
    routes: Vec<egress::Route>,
    config: &Arc<Config>,
    store: &Arc<CertStore>,
    metrics: &Arc<Metrics>,
) -> Result<Option<egress::Relays>, ConfigError> {
    let (Some(trust), Some(id)) = (trust, &config.certs.identity) else {
        return Ok(None);
    };
    if routes.is_empty() {
        return Ok(None);
    }
    info!(domain = %id.domain, roots = trust.roots(), "upstream servers verified against the identity trust bundle");
    let verifier = Arc::new(identity::IdentityVerifier::new(
        trust.clone(),
        id.domain.clone(),
    ));
    Ok(identity::Clients::new(store.clone(), verifier)?
        .map(|clients| egress::Relays::new(routes, clients, config, metrics)))
}

/// The tasks that run beside the TLS listener: all end with `shutdown` but the admin
/// listener, which has a stop of its own.
struct Beside {
    upstream: Option<JoinHandle<()>>,
    reload: JoinHandle<()>,
    client_trust: Option<JoinHandle<()>>,
    orphan: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    /// Stops the admin listener, which `shutdown` does not: metrics stay readable through the
    /// drain.
    admin_stop: CancellationToken,
    redirect: Option<JoinHandle<()>>,
}

impl Beside {
    /// Waits for every task once the TLS listener has drained; the admin listener is stopped
    /// last of all.
    async fn join(self) {
        for task in [
            self.upstream,
            Some(self.reload),
            self.client_trust,
            self.orphan,
        ]
        .into_iter()
        .flatten()
        {
            let _ = task.await;
        }
        self.admin_stop.cancel();
        for task in [self.admin, self.redirect].into_iter().flatten() {
            let _ = task.await;
        }
    }
}
