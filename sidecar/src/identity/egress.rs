//! Egress relays (`--upstream LOCAL=[NAME@]HOST:PORT`): the app calls `LOCAL`, a loopback
//! address of its own namespace, in plain; each connection is relayed over mutual TLS to
//! `HOST:PORT`, presenting this sidecar's identity, to a server that must prove it is `NAME`
//! ([`super::IdentityVerifier`] decides that).
//!
//! One connection, in its own task: a relay slot (at most `--max-connections` relays at once,
//! over all upstreams; beyond, the app connection is closed at once), then the connect (the name
//! resolved now, so a service that moved is found) under `--connect-timeout`, the handshake under
//! `--handshake-timeout`, then bytes both ways until both ends close or nothing moves for
//! `--idle-timeout` ([`crate::tcp::relay`]). Whatever fails, the app sees its connection close,
//! with no byte from the server: the log line says why (one line per upstream and cause per
//! [`LOG_INTERVAL`], an app retrying in a loop costs no more).
//!
//! Shutdown: the listeners stop accepting when the shutdown token is cancelled; relays in flight
//! get the shutdown grace, as the TLS listener's connections do, then are closed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::CertificateError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::{Clients, Refused};
use crate::config::Config;
use crate::error::ConfigError;
use crate::metrics::{Metrics, UpstreamOutcome, UpstreamStats};
use crate::throttle::{Throttle, LOG_INTERVAL};
use shared::accept::{self, Accepted};
use shared::service_identity::Upstream;

/// One `--upstream`, validated for TLS: its SNI.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub upstream: Upstream,
    /// The identity's name as SNI: it picks the server's identity certificate, and is the DNS
    /// name that certificate is verified for.
    server_name: ServerName<'static>,
}

impl Route {
    /// Every configured upstream, before anything is bound: a name rustls cannot send as SNI is a
    /// configuration error.
    pub(crate) fn all(upstreams: &[Upstream]) -> Result<Vec<Route>, ConfigError> {
        upstreams
            .iter()
            .map(|u| {
                let server_name =
                    ServerName::try_from(u.identity.as_str().to_string()).map_err(|e| {
                        ConfigError::Invalid {
                            flag: "--upstream",
                            value: u.to_string(),
                            reason: format!("{} cannot be sent as SNI: {e}", u.identity),
                        }
                    })?;
                Ok(Route {
                    upstream: u.clone(),
                    server_name,
                })
            })
            .collect()
    }
}

/// Where a call failed, as the log line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    Handshake,
    Verify,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Handshake => "handshake",
            Step::Verify => "verify",
        }
    }

    fn outcome(self) -> UpstreamOutcome {
        match self {
            Step::Connect => UpstreamOutcome::ConnectFailed,
            Step::Handshake => UpstreamOutcome::HandshakeFailed,
            Step::Verify => UpstreamOutcome::VerifyFailed,
        }
    }
}

/// A failed call: the step and the reason for the log.
#[derive(Debug)]
struct Failure {
    step: Step,
    reason: String,
}

/// What an error from rustls (inside the `io::Error` tokio-rustls returns) says about the call:
/// a refusal by our verifier is a `verify` failure with its own words; an alert about
/// certificates is the server refusing ours (with TLS 1.3 it arrives after the handshake, on the
/// first read); anything else is the handshake's.
fn classify(error: &io::Error) -> Failure {
    match tls_error(error) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => Failure {
            step: Step::Verify,
            reason: match other.0.downcast_ref::<Refused>() {
                Some(refused) => refused.to_string(),
                None => other.0.to_string(),
            },
        },
        Some(rustls::Error::InvalidCertificate(e)) => Failure {
            step: Step::Verify,
            reason: format!("invalid server certificate: {e}"),
        },
        Some(rustls::Error::AlertReceived(alert)) if refuses_certificate(*alert) => Failure {
            step: Step::Handshake,
            reason: format!(
                "the server refused this sidecar's identity certificate (alert {alert:?})"
            ),
        },
        _ => Failure {
            step: Step::Handshake,
            reason: error.to_string(),
        },
    }
}

/// The rustls error inside an I/O error of a TLS stream, if it is one.
fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether a relay ended because the server refused this sidecar's certificate: with TLS 1.3 the
/// client's handshake is over before the server has checked it, so the verdict comes as an alert
/// on the first read.
fn refused_after_handshake(error: &io::Error) -> bool {
    matches!(tls_error(error), Some(rustls::Error::AlertReceived(alert)) if refuses_certificate(*alert))
}

/// Alerts a server sends when it does not accept the client's certificate.
fn refuses_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

/// The timeouts and limits of every relay, from the configuration.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connect: Duration,
    handshake: Duration,
    idle: Duration,
    grace: Duration,
}

/// The log throttle of refusals at the relay limit (after the three [`Step`]s').
const BUSY: usize = 3;

/// One upstream's listener-side state.
struct Lane {
    route: Route,
    /// `127.0.0.1:9001=b:8443`, as logs name it.
    name: String,
    stats: Arc<UpstreamStats>,
    /// One log line per cause per [`LOG_INTERVAL`]: a [`Step`]'s, then [`BUSY`].
    logs: [Throttle; 4],
}

impl Lane {
    fn failed(&self, failure: &Failure) {
        self.stats.count(failure.step.outcome());
        if let Some(suppressed) = self.logs[failure.step as usize].ready() {
            warn!(
                upstream = %self.name,
                step = %failure.step.as_str(),
                reason = %failure.reason,
                suppressed,
                "upstream call failed; closed the app connection"
            );
        }
    }
}

/// Everything the relays share.
pub(crate) struct Relays {
    lanes: Vec<Arc<Lane>>,
    clients: Clients,
    slots: Arc<Semaphore>,
    /// `--max-connections`: the slots.
    max: usize,
    limits: Limits,
}

impl Relays {
    pub(crate) fn new(
        routes: Vec<Route>,
        clients: Clients,
        config: &Config,
        metrics: &Metrics,
    ) -> Self {
        let lanes = routes
            .into_iter()
            .map(|route| {
                Arc::new(Lane {
                    name: route.upstream.to_string(),
                    stats: metrics.upstream(route.upstream.local),
                    route,
                    logs: std::array::from_fn(|_| Throttle::new(LOG_INTERVAL)),
                })
            })
            .collect();
        Self {
            lanes,
            clients,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            max: config.max_connections,
            limits: Limits {
                connect: config.connect_timeout,
                handshake: config.handshake_timeout,
                idle: config.idle_timeout,
                grace: config.shutdown_grace,
            },
        }
    }
}

/// Serves `listeners` (one per route, in order) until `shutdown`, then drains for up to the
/// shutdown grace.
pub(crate) async fn serve(
    listeners: Vec<TcpListener>,
    relays: Relays,
    shutdown: CancellationToken,
) {
    let relays = Arc::new(relays);
    let tracker = TaskTracker::new();
    // Closes the relays the drain did not see end within the grace period.
    let hard_stop = CancellationToken::new();
    let mut accepting = Vec::new();
    for (listener, lane) in listeners.into_iter().zip(relays.lanes.iter().cloned()) {
        let local = listener.local_addr().ok();
        info!(
            upstream = %lane.name,
            listen = %local.map_or_else(|| lane.route.upstream.local.to_string(), |a| a.to_string()),
            "relaying upstream calls"
        );
        accepting.push(tokio::spawn(accept_loop(
            listener,
            lane,
            relays.clone(),
            tracker.clone(),
            shutdown.clone(),
            hard_stop.clone(),
        )));
    }
    for task in accepting {
        let _ = task.await;
    }
    tracker.close();
    if !tracker.is_empty() {
        info!(relays = tracker.len(), "draining upstream relays");
    }
    if tokio::time::timeout(relays.limits.grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            relays = tracker.len(),
            "shutdown grace period over, closing remaining upstream relays"
        );
    }
    hard_stop.cancel();
    tracker.wait().await;
}

async fn accept_loop(
    listener: TcpListener,
    lane: Arc<Lane>,
    relays: Arc<Relays>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let mut listener = accept::Listener::new(listener, "upstream", shutdown);
    while let Some(Accepted { stream, peer, .. }) = listener.accept().await {
        let Ok(slot) = relays.slots.clone().try_acquire_owned() else {
            lane.stats.count(UpstreamOutcome::RefusedBusy);
            if let Some(suppressed) = lane.logs[BUSY].ready() {
                warn!(
                    upstream = %lane.name,
                    limit = relays.max,
                    suppressed,
                    "upstream relays at --max-connections; closed the app connection"
                );
            }
            continue;
        };
        let (lane, relays, hard_stop) = (lane.clone(), relays.clone(), hard_stop.clone());
        let span = tracing::debug_span!("upstream", %peer, upstream = %lane.name);
        tracker.spawn(
            async move {
                tokio::select! {
                    () = relay(stream, &lane, &relays, slot) => {}
                    () = hard_stop.cancelled() => debug!("closed at the end of the shutdown grace"),
                }
            }
            .instrument(span),
        );
    }
}

/// One app connection: connect, handshake, relay; the slot is held until it ends.
async fn relay(app: TcpStream, lane: &Lane, relays: &Relays, _slot: OwnedSemaphorePermit) {
    let _active = lane.stats.opened();
    let limits = relays.limits;
    if let Err(error) = app.set_nodelay(true) {
        debug!(%error, "set_nodelay failed");
    }
    let remote = &lane.route.upstream.remote;
    let server = match crate::tcp::connect(remote, limits.connect).await {
        Ok(s) => s,
        Err(error) => {
            return lane.failed(&Failure {
                step: Step::Connect,
                reason: format!("{remote}: {error}"),
            })
        }
    };
    let config = match relays.clients.config(lane.route.upstream.alpn.as_ref()) {
        Ok(c) => c,
        Err(error) => {
            return lane.failed(&Failure {
                step: Step::Handshake,
                reason: error.to_string(),
            })
        }
    };
    let handshake = TlsConnector::from(config).connect(lane.route.server_name.clone(), server);
    let tls = match tokio::time::timeout(limits.handshake, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return lane.failed(&classify(&error)),
        Err(_) => {
            return lane.failed(&Failure {
                step: Step::Handshake,
                reason: format!("timed out after {:?}", limits.handshake),
            })
        }
    };
    match crate::tcp::relay(app, tls, limits.idle).await {
        Ok((from_app, to_app)) => {
            lane.stats.count(UpstreamOutcome::Ok);
            debug!(from_app, to_app, "upstream relay finished");
        }
        Err(error) if refused_after_handshake(&error) => lane.failed(&classify(&error)),
        Err(error) => {
            lane.stats.count(UpstreamOutcome::Ok);
            debug!(%error, "upstream relay ended with error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failures_name_their_step() {
        let refused = Refused {
            presented: "spiffe://d/b".into(),
            expected: "spiffe://d/x".into(),
            reason: "another identity".into(),
        };
        let e = io(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(refused)),
        )));
        let f = classify(&e);
        assert_eq!(f.step, Step::Verify);
        assert_eq!(
            f.reason,
            "the server presented spiffe://d/b, expected spiffe://d/x: another identity"
        );
        let f = classify(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::AccessDenied,
        )));
        assert_eq!(f.step, Step::Handshake);
        assert!(
            f.reason
                .contains("refused this sidecar's identity certificate"),
            "{f:?}"
        );
        let f = classify(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        )));
        assert_eq!(f.step, Step::Handshake);
        assert!(!f.reason.contains("identity certificate"), "{f:?}");
        let f = classify(&io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(f.step, Step::Handshake);
        assert!(refused_after_handshake(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
        ))));
        assert!(!refused_after_handshake(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }

    #[test]
    fn routes_send_the_identity_as_sni() {
        let list: shared::identity::List<Upstream> =
            "9001=b:8443,9002=pay@10.0.0.5:8443".parse().expect("list");
        let routes = Route::all(&list.0).expect("valid");
        assert_eq!(
            routes
                .iter()
                .map(|r| r.server_name.to_str().into_owned())
                .collect::<Vec<_>>(),
            ["b", "pay"]
        );
    }
}
