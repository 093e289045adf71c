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
//! - `listeners`: the listening sockets, bound or taken over; `handover`: giving them to a new
//!   sidecar process and taking them from the running one (`--take-over`), for upgrades in place.
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
mod handover;
mod http;
mod identity;
mod listeners;
mod metrics;
mod redirect;
mod server;
mod tcp;
mod throttle;
mod tls;

pub use error::{ConfigError, Error, TakeOverError};
pub use handover::TakeOver;
pub use listeners::{bind, Listeners};

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::handover::offer::Offer;
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

/// With `--take-over`, asks the sidecar running on the same listen address for its listening
/// sockets (`None` without the flag, or when none runs: then everything is bound as usual).
/// Called before [`prepare`]: the running sidecar serves on while this one loads.
pub async fn take_over(config: &Config) -> Result<Option<TakeOver>, Error> {
    Ok(handover::start(config).await?)
}

/// Opens every listener the configuration names: the socket handed over by the sidecar taken
/// over from when it had one of that role and address, else bound as usual.
pub async fn listen(config: &Config, take_over: Option<&mut TakeOver>) -> Result<Listeners, Error> {
    let Some(take_over) = take_over else {
        return Ok(listeners::open(config, Vec::new()).await?.0);
    };
    let (listeners, used) = listeners::open(config, take_over.take_handed()).await?;
    take_over.set_used(used);
    Ok(listeners)
}

/// Serves `listeners` until `shutdown` is cancelled (by a signal, or by a successor taking the
/// listeners over) and the drain is over. After a take-over, the sidecar taken over from stops
/// accepting only once everything here is ready to accept.
pub async fn run(
    listeners: Listeners,
    config: Config,
    prepared: Prepared,
    take_over: Option<TakeOver>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Prepared {
        certs,
        self_signed,
        client_trust,
        webroot,
        trust,
        routes,
    } = prepared;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    metrics.set_certificates(certs.expiries());
    log_certificates(&certs);
    let store = Arc::new(CertStore::new(certs));
    let tls = server_tls(&store, &config, client_trust.as_ref())?;
    let relays = relays(trust.as_ref(), routes, &config, &store, &metrics)?;
    let admin_stop = CancellationToken::new();
    let offer = Offer::new(
        &listeners,
        config.take_over_timeout,
        metrics.clone(),
        shutdown.clone(),
        admin_stop.clone(),
    );
    // Everything that can fail is done: the sidecar taken over from may stop accepting now.
    let predecessor = match take_over {
        None => None,
        Some(t) => match t.ready(&shutdown).await? {
            Some(p) => Some(p),
            None => return Ok(()),
        },
    };
    let Listeners {
        tls: listener,
        admin,
        redirect,
        upstreams,
        quic,
    } = listeners;
    let beside = Beside {
        upstream: relays.map(|r| tokio::spawn(egress::serve(upstreams, r, shutdown.clone()))),
        watchers: spawn_watchers(&config, &metrics, store, trust, self_signed, &shutdown),
        client_trust: spawn_client_trust(client_trust, &config, &metrics, &shutdown),
        offer: tokio::spawn(handover::offer::serve(offer, predecessor)),
        admin: admin.map(|l| tokio::spawn(admin::serve(l, metrics.clone(), admin_stop.clone()))),
        admin_stop,
        redirect: spawn_redirect(redirect, &listener, &config, webroot, &shutdown),
    };
    let trim = tokio::spawn(memory::run(metrics.clone(), shutdown.clone()));
    server::serve(listener, quic, config, tls, metrics, shutdown).await;
    let _ = trim.await;
    beside.join().await;
    Ok(())
}

/// The certificate reloads and, with `--exit-when-orphaned`, the orphan watcher.
fn spawn_watchers(
    config: &Arc<Config>,
    metrics: &Arc<Metrics>,
    store: Arc<CertStore>,
    trust: Option<Arc<IdentityTrust>>,
    self_signed: Option<Arc<Entry>>,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(reload::watch(
        config.certs.clone(),
        store,
        trust,
        metrics.clone(),
        self_signed,
        shutdown.clone(),
    ))];
    // Ends by itself once `shutdown` is cancelled, by a signal or by the watcher itself.
    if config.exit_when_orphaned {
        tasks.push(tokio::spawn(orphan::watch(
            orphan::NET_DEV.into(),
            orphan::CHECK_INTERVAL,
            shutdown.clone(),
        )));
    }
    tasks
}

/// The reloads of `--client-ca` and `--client-crl`, with mutual TLS.
fn spawn_client_trust(
    trust: Option<Arc<ClientTrust>>,
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    trust.map(|trust| {
        tokio::spawn(client_trust_reload::watch(
            trust,
            config.certs.reload_interval,
            metrics.clone(),
            shutdown.clone(),
        ))
    })
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
        &config.tls_groups,
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
        thumbprint: r.acme_thumbprint.as_deref().map(Arc::from),
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
    let provider = tls::provider_for(&config.tls_groups);
    Ok(identity::Clients::new(store.clone(), verifier, provider)?
        .map(|clients| egress::Relays::new(routes, clients, config, metrics)))
}

/// The tasks that run beside the TLS listener: all end with `shutdown` but the admin
/// listener, which has a stop of its own.
struct Beside {
    upstream: Option<JoinHandle<()>>,
    /// Certificate reloads, the orphan watcher.
    watchers: Vec<JoinHandle<()>>,
    client_trust: Option<JoinHandle<()>>,
    /// The listeners offered for a take-over.
    offer: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    /// Stops the admin listener, which `shutdown` does not: metrics stay readable through the
    /// drain (unless the listeners were handed over: then the successor answers them).
    admin_stop: CancellationToken,
    redirect: Option<JoinHandle<()>>,
}

impl Beside {
    /// Waits for every task once the TLS listener has drained; the admin listener is stopped
    /// last of all.
    async fn join(self) {
        let tasks = self.watchers.into_iter().map(Some);
        for task in [self.upstream, self.client_trust, Some(self.offer)]
            .into_iter()
            .chain(tasks)
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
