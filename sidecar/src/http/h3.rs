//! HTTP/3 (`--http3`): QUIC on UDP at the TLS listener's address and port, served by quinn and
//! the h3 crate, every request through the same [`Proxy::handle`] as HTTP/1.1 and HTTP/2.
//!
//! - **TLS**: the listener's own rustls configuration (certificates by SNI, reloads, client
//!   authentication and allow-lists), with ALPN `h3`; TLS 1.3 only, as QUIC is. No 0-RTT
//!   (replayable requests), no session tickets when client certificates are verified.
//! - **Limits**: a QUIC connection takes a slot of the same [`Admission`] as a TCP one
//!   (`--max-connections`, `--max-connections-per-ip`, `--max-handshakes`). QUIC has no listen
//!   backlog: a connection that finds every slot taken is refused at once (the client falls
//!   back to TCP, which waits). While the handshakes in flight are half the budget or more, an
//!   unvalidated client address is answered with a Retry ([`needs_retry`]): a flood of Initials
//!   from spoofed addresses then costs one stateless packet each, not a handshake.
//! - **Per connection**: at most [`MAX_STREAMS`] request streams at once (more wait for
//!   credit), flow-control windows as for HTTP/2, a request head within
//!   `--header-read-timeout` (else the stream is ended), `--idle-timeout` without a request
//!   (then GOAWAY), `--handshake-timeout` for the handshake.
//! - **Shutdown**: GOAWAY, in-flight requests finish within the grace period, then the
//!   connection is closed.

mod rejecting;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::Response;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::body::{H3Body, RequestBody};
use super::headers::add_hsts;
use super::{ConnInfo, Proxy, ProxyBody, GOODBYE_MAX, MAX_HEAD_BYTES};
use crate::config::Config;
use crate::connection::activity::{tick_period, Activity, Verdict};
use crate::connection::admission::{Admission, Phase, Ticket};
use crate::metrics::{Metrics, Protocol, Refusal};
use crate::throttle::{Throttle, LOG_INTERVAL};
use crate::tls::client_auth::ClientIdentity;

/// Request streams a connection may have open at once; more wait for credit (QUIC's stream
/// limit is a credit, not a refusal). quic-go's and so Caddy's default; RFC 9113 asks HTTP/2
/// servers for at least 100 too (hyper's HTTP/2 server allows 200).
pub(crate) const MAX_STREAMS: u32 = 100;
/// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder and
/// decoder); a few more for extensions the sidecar ignores.
const MAX_UNI_STREAMS: u32 = 8;
/// Flow control, as hyper's HTTP/2 server gives: a stream, and a connection in all, may have
/// this much request body unread in flight (what one client can make the sidecar buffer).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = STREAM_WINDOW;
/// Response bytes a connection may have sent and not yet acknowledged: enough for a fast
/// download over a long round trip, bounded per connection.
const SEND_WINDOW: u64 = 4 * 1024 * 1024;
/// How much longer than `--idle-timeout` and the goodbye the transport waits for a packet
/// before it drops a connection silently.
const TRANSPORT_IDLE_MARGIN: Duration = Duration::from_secs(1);
/// How long an address-validation token (Retry) stays good.
const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(15);
/// HTTP/3's "no error" code (RFC 9114 section 8.1), for connections closed cleanly.
const H3_NO_ERROR: u32 = 0x100;
/// The least a gracefully ended connection waits for its last packets to be acknowledged before
/// it is closed (four round trips, at most the goodbye deadline, unless the client closes first).
const CLOSE_LINGER_MIN: Duration = Duration::from_millis(100);
/// How long the endpoint waits at exit for its last packets (CONNECTION_CLOSE) to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

static REFUSED_LOG: Throttle = Throttle::new(LOG_INTERVAL);

/// Whether a new QUIC connection attempt must first prove it owns its address (a Retry): it
/// has not yet (no Retry token), it can, and `handshaking` connections (TCP and QUIC) are in
/// their handshake, half of `max_handshakes` or more. Asked before anything else about the
/// attempt, so under pressure a spoofed address can neither spend the handshake budget nor be
/// refused in a real client's name (its per-address cap).
pub(crate) fn needs_retry(
    validated: bool,
    may_retry: bool,
    handshaking: usize,
    max_handshakes: usize,
) -> bool {
    !validated && may_retry && handshaking.saturating_mul(2) >= max_handshakes
}

/// The QUIC side of the listener.
pub(crate) struct Quic {
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    /// Where connections are served, taken in turn: each serving thread's event loop (`None`:
    /// this one's) with that thread's proxy, so a QUIC connection, its requests and its backend
    /// connections stay on one thread, as a TCP connection's do.
    pub places: Vec<(Option<tokio::runtime::Handle>, Arc<Proxy>)>,
    pub shutdown: CancellationToken,
    pub hard_stop: CancellationToken,
    pub tracker: TaskTracker,
    /// Cancelled when [`serve`] ends, whichever way.
    pub done: CancellationToken,
}

/// The rustls configuration of QUIC connections: the listener's, with ALPN `h3` and no early
/// data. The certificate resolver and client verifier are the same objects, so reloads and
/// client authentication carry over.
pub(crate) fn quic_tls(tls: &rustls::ServerConfig) -> rustls::ServerConfig {
    let mut config = tls.clone();
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    config
}

/// quinn's server configuration from the sidecar's.
fn server_config(
    config: &Config,
    tls: &rustls::ServerConfig,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(quic_tls(tls)))
        .map_err(|e| e.to_string())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(SEND_WINDOW)
        // The watchdog of [`drive`] closes a connection without requests after
        // `--idle-timeout`, with a GOAWAY and a CONNECTION_CLOSE. The transport's own idle
        // timeout, which ends a connection silently (no packet at all: the client vanished),
        // comes after it and the goodbye, so it never pre-empts the clean close.
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(
                config
                    .idle_timeout
                    .saturating_add(GOODBYE_MAX)
                    .saturating_add(TRANSPORT_IDLE_MARGIN),
            )
            .ok(),
        );
    server.transport_config(Arc::new(transport));
    server
        .retry_token_lifetime(RETRY_TOKEN_LIFETIME)
        // Attempts waiting for a decision: the handshake budget and the slots bound the rest.
        .max_incoming(config.max_handshakes.max(64) * 2)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(16 * 1024 * 1024);
    Ok(server)
}

/// Serves HTTP/3 on `socket` until `shutdown`, then lets the connections drain (they are
/// tracked by `q.tracker`, which the listener's drain waits for) and closes the endpoint.
pub(crate) async fn serve(socket: UdpSocket, q: Quic) {
    let _done = q.done.clone().drop_guard();
    let local = socket.local_addr().ok();
    let server = match server_config(&q.config, &q.tls) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "HTTP/3 cannot use this TLS configuration; serving TCP only");
            return;
        }
    };
    let endpoint = match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(e) => e,
        Err(error) => {
            warn!(%error, "HTTP/3 endpoint did not start; serving TCP only");
            return;
        }
    };
    info!(listen = %local.map_or_else(String::new, |a| a.to_string()), "serving HTTP/3 (QUIC)");
    let q = Arc::new(q);
    let mut next = 0usize;
    loop {
        let incoming = tokio::select! {
            () = q.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let peer = incoming.remote_address();
        if needs_retry(
            incoming.remote_address_validated(),
            incoming.may_retry(),
            q.admission.handshaking(),
            q.config.max_handshakes,
        ) {
            q.metrics.quic_retry();
            if let Err(error) = incoming.retry() {
                // Cannot happen: `may_retry` said it could.
                error.into_incoming().refuse();
            }
            continue;
        }
        let ticket = match q.admission.admit_now(peer) {
            Ok(t) => t,
            Err(cause) => {
                if let Some(suppressed) = REFUSED_LOG.ready() {
                    // As for TCP: a client's address in a log line is escaped and throttled.
                    let client = crate::throttle::escape(peer.ip().to_string().as_bytes(), 64);
                    let why = match cause {
                        Refusal::PerIp => "its address is at --max-connections-per-ip",
                        _ => "every slot is taken (--max-connections); QUIC has no backlog to wait in",
                    };
                    warn!(%client, suppressed, "QUIC connection refused: {why}");
                }
                incoming.refuse();
                continue;
            }
        };
        let (place, proxy) = &q.places[next % q.places.len()];
        next = next.wrapping_add(1);
        let (q2, proxy) = (q.clone(), proxy.clone());
        let span = tracing::debug_span!("quic", %peer);
        // The handshake runs there too: quinn drives a connection on the event loop that
        // accepted it.
        let task = q.tracker.track_future(
            async move { connection(incoming, peer, &q2, &proxy, ticket).await }.instrument(span),
        );
        match place {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
    // No new connections; the open ones drain.
    endpoint.set_server_config(None);
    tokio::select! {
        () = q.tracker.wait() => {}
        () = q.hard_stop.cancelled() => {}
    }
    endpoint.close(H3_NO_ERROR.into(), b"");
    let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
}

/// One QUIC connection: handshake under the timeout, then HTTP/3 until it ends.
async fn connection(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    q: &Quic,
    proxy: &Arc<Proxy>,
    ticket: Ticket,
) {
    let _active = q.metrics.connection_opened();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(error) => {
            q.metrics.handshake_failed();
            debug!(%error, "QUIC handshake failed");
            return;
        }
    };
    let handshake = tokio::time::timeout(q.config.handshake_timeout, connecting);
    let conn = tokio::select! {
        () = crate::connection::drain_cut(&q.shutdown) => return,
        _ = ticket.evicted() => return,
        res = handshake => match res {
            Err(_) => {
                q.metrics.handshake_timed_out();
                debug!("QUIC handshake timed out");
                return;
            }
            Ok(Err(error)) => {
                q.metrics.handshake_failed();
                debug!(%error, "QUIC handshake failed");
                return;
            }
            Ok(Ok(conn)) => conn,
        },
    };
    // quinn does not tell the key-exchange group agreed.
    q.metrics.handshake_done(None);
    let client = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(ClientIdentity::from_leaf));
    let activity = Activity::new();
    ticket.set_phase(Phase::Http(activity.clone()));
    let evict = ticket.evict_token();
    let info = Arc::new(ConnInfo {
        peer,
        client_ip: peer.ip().to_canonical().to_string(),
        activity: activity.clone(),
        h2: true,
        proto: Protocol::H3,
        client,
        ticket: Arc::new(ticket),
    });
    let h3 = tokio::time::timeout(
        q.config.handshake_timeout,
        h3::server::builder()
            .max_field_section_size(MAX_HEAD_BYTES as u64)
            .build::<_, Bytes>(rejecting::Connection::new(conn.clone())),
    )
    .await;
    let mut h3 = match h3 {
        Ok(Ok(h3)) => h3,
        Ok(Err(error)) => {
            debug!(%error, "HTTP/3 connection setup failed");
            return;
        }
        Err(_) => {
            debug!("HTTP/3 connection setup timed out");
            return;
        }
    };
    if drive(&mut h3, q, proxy, &info, &evict).await == End::Graceful {
        // Closing the connection discards what the client has not acknowledged yet, such as the
        // end of the last response: let it arrive (a client done with a connection after a
        // GOAWAY closes it itself).
        let linger = (conn.rtt() * 4 + CLOSE_LINGER_MIN).min(GOODBYE_MAX);
        tokio::select! {
            _ = conn.closed() => {}
            () = tokio::time::sleep(linger) => {}
            () = q.hard_stop.cancelled() => {}
        }
    }
    // h3 closes the connection when its side is dropped (H3_NO_ERROR): only now.
    drop(h3);
    conn.close(H3_NO_ERROR.into(), b"");
}

/// How a connection's HTTP/3 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every accepted request was answered: what was sent may still be in flight.
    Graceful,
    /// Cut off: the client broke a rule or vanished, or the grace period is over.
    Hard,
}

type H3Conn = h3::server::Connection<rejecting::Connection, Bytes>;

/// Accepts and serves the connection's request streams until it ends, closing it gracefully
/// (GOAWAY) when it idles out, on shutdown and when it must make room, and hard once closing
/// when nothing has been in flight for the goodbye deadline, or when the grace period is over.
async fn drive(
    h3: &mut H3Conn,
    q: &Quic,
    proxy: &Arc<Proxy>,
    info: &Arc<ConnInfo>,
    evict: &CancellationToken,
) -> End {
    let activity = &info.activity;
    let idle = q.config.idle_timeout;
    let goodbye = GOODBYE_MAX.min(idle);
    let mut tick = tokio::time::interval(tick_period(idle.min(goodbye)));
    let mut streams = FuturesUnordered::new();
    let mut accepting = true;
    let mut closing: Option<Instant> = None;
    let aborted = activity.aborted();
    tokio::pin!(aborted);
    loop {
        let close = tokio::select! {
            biased;
            () = q.hard_stop.cancelled() => return End::Hard,
            () = &mut aborted => {
                q.metrics.refused(Refusal::StreamResets);
                return End::Hard;
            }
            res = h3.accept(), if accepting => match res {
                Ok(Some(resolver)) => {
                    streams.push(request(resolver, q, proxy, info.clone()));
                    false
                }
                // After our GOAWAY (or the client's), once every request is done.
                Ok(None) => {
                    accepting = false;
                    if streams.is_empty() {
                        return End::Graceful;
                    }
                    false
                }
                Err(error) => {
                    debug!(%error, "HTTP/3 connection ended");
                    return End::Hard;
                }
            },
            Some(()) = streams.next(), if !streams.is_empty() => {
                // Once our GOAWAY is out, no stream can come that is not here already: the
                // last one done ends the connection (h3's accept ends only on the client's).
                if (!accepting || closing.is_some()) && streams.is_empty() {
                    return End::Graceful;
                }
                false
            }
            () = q.shutdown.cancelled(), if closing.is_none() => true,
            () = evict.cancelled(), if closing.is_none() => {
                if !activity.busy() {
                    debug!("closing idle QUIC connection to make room");
                    return End::Hard;
                }
                true
            }
            _ = tick.tick() => {
                if let Some(since) = closing {
                    let quiet = activity.quiet_since().map(|q| q.max(since));
                    if quiet.is_some_and(|q| Instant::now() >= q + goodbye) {
                        q.metrics.refused(Refusal::CloseDeadline);
                        return End::Hard;
                    }
                }
                closing.is_none() && activity.verdict(idle, None) == Verdict::Idle
            }
        };
        if close {
            closing = Some(Instant::now());
            // GOAWAY naming the next stream: what was accepted finishes, nothing new starts.
            let goaway = tokio::time::timeout(GOODBYE_MAX, h3.shutdown(1)).await;
            if !matches!(goaway, Ok(Ok(()))) {
                return End::Hard;
            }
            if !activity.busy() && streams.is_empty() {
                // Nothing to finish: say goodbye now.
                return End::Graceful;
            }
        }
    }
}

/// One request stream: its head within `--header-read-timeout`, then the exchange, then the
/// response sent with its body and trailers.
async fn request(
    resolver: h3::server::RequestResolver<rejecting::Connection, Bytes>,
    q: &Quic,
    proxy: &Arc<Proxy>,
    info: Arc<ConnInfo>,
) {
    let head = tokio::time::timeout(q.config.header_read_timeout, resolver.resolve_request());
    let (req, stream) = match head.await {
        Err(_) => {
            // Dropping the stream resets it with H3_REQUEST_REJECTED ([`rejecting`]): the
            // client learns it was not served, and may retry.
            q.metrics.refused(Refusal::HeadTimeout);
            debug!("HTTP/3 request head not received in time");
            return;
        }
        Ok(Err(error)) => {
            debug!(%error, "HTTP/3 request refused");
            return;
        }
        Ok(Ok(pair)) => pair,
    };
    let (mut send, recv) = stream.split();
    let req = req.map(|()| RequestBody::H3(H3Body::new(recv)));
    let mut resp = proxy.handle(req, &info).await;
    if let Some(value) = &proxy.hsts {
        add_hsts(resp.headers_mut(), value.clone());
    }
    if let Err(error) = respond(&mut send, resp).await {
        debug!(%error, "HTTP/3 response not sent");
    }
}

/// Sends `resp` on the stream: head, body, trailers.
async fn respond(
    send: &mut h3::server::RequestStream<rejecting::Send<Bytes>, Bytes>,
    resp: Response<ProxyBody>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = resp.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(error) => {
                // The backend's body broke: the client must not take a cut body for a whole one.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(error);
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_only_under_pressure_and_for_unvalidated_addresses() {
        // Quiet: no Retry.
        assert!(!needs_retry(false, true, 0, 64));
        assert!(!needs_retry(false, true, 31, 64));
        // Half the budget in use: prove the address first.
        assert!(needs_retry(false, true, 32, 64));
        assert!(needs_retry(false, true, 64, 64));
        // Validated (came back with a token), or a Retry is not possible (quinn allows one per
        // attempt): decided on by the admission.
        assert!(!needs_retry(true, false, 64, 64));
        assert!(!needs_retry(true, true, 64, 64));
        assert!(!needs_retry(false, false, 64, 64));
        // A budget of 1: one handshake in flight is pressure.
        assert!(needs_retry(false, true, 1, 1));
    }

    #[test]
    fn the_quic_tls_configuration_speaks_h3_only_without_early_data() {
        let names = vec!["localhost".parse().expect("name")];
        let loaded = Arc::new(crate::tls::self_signed(&names).expect("generate"));
        let store = Arc::new(crate::tls::CertStore::new(crate::tls::certs::CertSet::new(
            loaded,
            Vec::new(),
        )));
        let tls = crate::tls::server_config(
            store,
            crate::config::Mode::Http,
            &Default::default(),
            &Default::default(),
            None,
        )
        .expect("server config");
        let quic = quic_tls(&tls);
        assert_eq!(quic.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(quic.max_early_data_size, 0);
        assert!(quic.ignore_client_order);
        assert!(quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(quic)).is_ok());
    }
}
