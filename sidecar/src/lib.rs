//! The sidecar as a library: `main` parses and validates, then calls [`run`] with what a test
//! would want to control (bound listeners, a shutdown token).
//!
//! Certificates: [`reload`] builds the [`certs::CertSet`] (SNI-indexed) served through
//! [`tls::CertStore`] and swaps it on SIGHUP or file changes; [`mtls`] verifies client
//! certificates against the CAs [`trust_reload`] keeps current; [`redirect`] is the plain-HTTP redirect listener beside the admin one.
//!
//! Service identity: the identity pair is one of the set's entries, chosen by its names;
//! [`upstream`] relays the app's plain calls to other services over mutual TLS, presenting it and
//! verifying theirs ([`service_identity`]).

pub mod access_log;
pub mod acme_alpn;
pub mod activity;
pub mod admin;
pub mod admission;
pub mod certs;
pub mod config;
pub mod error;
pub mod grpc;
pub mod h2pool;
pub mod http;
pub mod metrics;
pub mod mtls;
pub mod orphan;
pub mod proxy_protocol;
pub mod redirect;
pub mod reload;
pub mod server;
pub mod service_identity;
pub mod tcp;
pub mod throttle;
pub mod tls;
pub mod trim;
pub mod trust_reload;
pub mod upstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// Start-up work that reads files: certificates, the client CA and the ACME webroot. Done before
/// binding so a bad file is a configuration error (exit 2) with nothing else started.
pub struct Prepared {
    certs: certs::CertSet,
    self_signed: Option<Arc<certs::Entry>>,
    client_trust: Option<Arc<mtls::ClientTrust>>,
    webroot: Option<redirect::Webroot>,
    /// The identity trust bundle (`--identity-ca`).
    trust: Option<Arc<service_identity::Trust>>,
    routes: Vec<upstream::Route>,
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
    let routes = upstream::Route::all(&config.upstreams)?;
    let trust = config
        .certs
        .identity
        .as_ref()
        .map(|id| service_identity::Trust::load(&id.ca).map(Arc::new))
        .transpose()?;
    let (certs, self_signed) = reload::load_initial(&config.certs)?;
    let client_trust = config
        .client_auth
        .as_ref()
        .map(mtls::ClientTrust::load)
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
    metrics.set_certificates(prepared.certs.entries());
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
        prepared.client_trust.as_ref().map(mtls::ClientTrust::tls),
    )?;
    if mtls {
        info!("client certificates verified (mutual TLS)");
    }
    let relays = match (&prepared.trust, &config.certs.identity) {
        (Some(trust), Some(id)) if !prepared.routes.is_empty() => {
            info!(domain = %id.domain, roots = trust.roots(), "upstream servers verified against the identity trust bundle");
            let verifier = Arc::new(service_identity::IdentityVerifier::new(
                trust.clone(),
                id.domain.clone(),
            ));
            service_identity::Clients::new(store.clone(), verifier)?
                .map(|clients| upstream::Relays::new(prepared.routes, clients, &config, &metrics))
        }
        _ => None,
    };
    let upstream_task =
        relays.map(|r| tokio::spawn(upstream::serve(upstreams, r, shutdown.clone())));
    let reload_task = tokio::spawn(reload::watch(
        config.certs.clone(),
        store,
        prepared.trust,
        metrics.clone(),
        prepared.self_signed,
        shutdown.clone(),
    ));
    let trust_task = prepared.client_trust.map(|trust| {
        tokio::spawn(trust_reload::watch(
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

    let trim_task = tokio::spawn(trim::run(metrics.clone(), shutdown.clone()));
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
