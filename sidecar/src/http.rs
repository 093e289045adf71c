//! HTTP mode: one TLS connection served with hyper (HTTP/2 or HTTP/1.1, as ALPN chose), every
//! request forwarded to the backend over pooled HTTP/1.1 keep-alive connections or, for gRPC
//! (and everything with `--backend-protocol h2c`), over a few shared HTTP/2 cleartext
//! connections ([`crate::h2pool`]); bodies and trailers streamed both ways, upgrades (WebSocket)
//! relayed as raw bytes. gRPC rules (routing, deadlines, status answers) are in [`crate::grpc`].
//!
//! The request rewriting rules (hop-by-hop headers, forwarding headers, smuggling checks) are
//! pure functions at the bottom of this file, with unit tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::access_log;
use crate::activity::{tick_period, Activity, Tracked, Verdict};
use crate::admission::{Phase, Ticket};
use crate::config::Config;
use crate::grpc::{self, Guarded, Route};
use crate::h2pool::{H2Error, H2Pool};
use crate::metrics::{BackendError, Metrics, Refusal};
use crate::mtls::ClientIdentity;
use crate::throttle::{Throttle, LOG_INTERVAL};

mod h1;

/// Most request headers accepted (hyper's limit; more gets `431`).
const MAX_HEADERS: usize = 100;
/// Largest request head accepted, in bytes (more gets `431`). Matches common proxy limits
/// (nginx's large_client_header_buffers is 4 x 8 KiB; Go's default is 1 MiB): generous for
/// cookies, small enough that a flood of heads costs little memory.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Idle pooled backend connections are closed after this long; the backend's own keep-alive
/// timeout is often shorter, and a stale pooled connection costs a retry.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled backend connections kept at most, over all serving threads: enough for bursts,
/// bounded so an idle sidecar does not hold hundreds of sockets on the app.
pub const POOL_MAX_IDLE: usize = 256;

/// Once a connection is asked to close (idle, shutdown, eviction), how long a client may take
/// to finish the goodbye (for HTTP/2: answer the GOAWAY's PING) once nothing is in flight,
/// before the connection is closed hard. One round trip is enough for a real client; never
/// more than the idle timeout itself.
const GOODBYE_MAX: Duration = Duration::from_secs(5);
/// What a response the client no longer wants may cost to drain, so its backend connection
/// goes back to the pool instead of being closed (and re-opened by the next request).
const DRAIN_MAX_BYTES: usize = 256 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);
/// Cancelled exchanges finished in the background at once, at most: past it a cancelled
/// exchange is dropped (its backend connection closed), so cancelling cannot pile up work on
/// the backend. Each waits at most [`DRAIN_MAX_TIME`] for its response.
const ORPHANS_MAX: usize = 256;
static ORPHANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

static BACKEND_CONNECT_LOG: Throttle = Throttle::new(LOG_INTERVAL);
static BACKEND_REQUEST_LOG: Throttle = Throttle::new(LOG_INTERVAL);
static RESET_LOG: Throttle = Throttle::new(LOG_INTERVAL);

/// Headers that describe one hop and never cross a proxy (RFC 9110 section 7.6.1), plus the
/// legacy ones proxies traditionally drop too, and `HTTP2-Settings`, which belongs to the h2c
/// upgrade that is never passed. `Trailer` is not among them: it announces end-to-end trailer
/// fields (RFC 9110 section 6.6.2), and HTTP/1.1 carries only announced ones. `TE` is, and is
/// put back as `TE: trailers` when the client accepts trailers.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

type BackendClient = Client<HttpConnector, Incoming>;

/// The response body the sidecar sends: the backend's streamed body or a short local one.
pub type ProxyBody = Logged<Either<Guarded<Incoming>, Full<Bytes>>>;

/// Shared state of HTTP mode, one per sidecar.
pub struct Proxy {
    client: BackendClient,
    /// HTTP/2 cleartext connections, unless `--backend-protocol http1`: one set shared by every
    /// serving thread, so the sidecar holds at most [`crate::h2pool`]'s few connections in all.
    h2: Option<Arc<H2Pool>>,
    backend_authority: String,
    listen_port: u16,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    /// `Strict-Transport-Security` for responses that lack it (`--hsts`).
    hsts: Option<HeaderValue>,
    /// Backend connections of the HTTP/1.1 fast path ([`h1`]).
    fast_pool: h1::Pool,
}

impl Proxy {
    /// The HTTP/2 backend pool for [`Proxy::new`], unless `--backend-protocol http1`: made once
    /// and shared by the serving threads.
    pub fn h2_pool(config: &Config) -> Option<Arc<H2Pool>> {
        (config.backend_protocol != shared::proto::BackendProtocol::Http1)
            .then(|| Arc::new(H2Pool::new(config.backend.clone(), config.connect_timeout)))
    }

    /// One serving thread's proxy: its own HTTP/1.1 backend pools (at most `max_idle` idle
    /// connections each), the shared HTTP/2 one.
    pub fn new(
        config: Arc<Config>,
        listen_port: u16,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        h2: Option<Arc<H2Pool>>,
        max_idle: usize,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        let hsts = config
            .hsts
            .and_then(|h| HeaderValue::from_str(&h.header_value()).ok());
        Arc::new(Self {
            client,
            h2,
            backend_authority: config.backend.authority(),
            listen_port,
            config,
            metrics,
            tracker,
            hsts,
            fast_pool: h1::Pool::new(max_idle),
        })
    }

    /// Serves one TLS connection until the client leaves, it idles out, it is asked to make
    /// room (through its `ticket`), or shutdown. `activity` is the connection's record, shared
    /// with the admission table; an upgraded connection keeps the ticket (its slot) until its
    /// relay ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve<S>(
        self: Arc<Self>,
        tls: S,
        peer: SocketAddr,
        h2: bool,
        client: Option<ClientIdentity>,
        activity: Arc<Activity>,
        ticket: Arc<Ticket>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let evict = ticket.evict_token();
        let conn_info = Arc::new(ConnInfo {
            peer,
            activity: activity.clone(),
            h2,
            client,
            ticket,
        });
        let watch = Watch {
            activity: &activity,
            idle: self.config.idle_timeout,
            head: None,
            shutdown: &shutdown,
            evict: &evict,
            metrics: &self.metrics,
        };
        let tracked = Tracked::new(tls, activity.clone());
        if h2 {
            let service = self.service(conn_info);
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .serve_connection(TokioIo::new(tracked), service);
            tokio::pin!(conn);
            let result = drive(conn.as_mut(), watch, |c| c.graceful_shutdown()).await;
            log_conn_end(peer, result.unwrap_or(Ok(())));
            return;
        }
        let watch = Watch {
            head: Some(self.config.header_read_timeout),
            ..watch
        };
        // The fast path first; hyper for the rest of the connection once a request needs it.
        let mut tracked = tracked;
        let mut buf = bytes::BytesMut::new();
        let closing = CancellationToken::new();
        activity.pause_scan();
        let end = {
            let fast = self.serve_fast(&mut tracked, &mut buf, &conn_info, &closing);
            tokio::pin!(fast);
            drive(fast.as_mut(), watch, |_| closing.cancel()).await
        };
        if !matches!(end, Some(h1::End::Fallback)) || closing.is_cancelled() {
            return;
        }
        activity.scan_handed_over(&buf);
        let service = self.service(conn_info);
        let io = TokioIo::new(h1::Prefixed::new(buf.freeze(), tracked));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES.max(8192) * 2)
            .max_header_size(MAX_HEAD_BYTES)
            // Our watchdog enforces both timeouts, counting the head from its first byte so
            // an idle keep-alive connection is governed by --idle-timeout alone.
            .header_read_timeout(None)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = drive(conn.as_mut(), watch, |c| c.graceful_shutdown()).await;
        log_conn_end(peer, result.unwrap_or(Ok(())));
    }

    /// hyper's service for one connection: every request through [`Proxy::handle`], HSTS added.
    fn service(
        self: &Arc<Self>,
        conn_info: Arc<ConnInfo>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
    > + Clone {
        let proxy = self.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = conn_info.clone();
            async move {
                let hsts = proxy.hsts.clone();
                let mut resp = proxy.handle(req, info).await;
                if let Some(value) = hsts {
                    add_hsts(resp.headers_mut(), value);
                }
                Ok::<_, Infallible>(resp)
            }
        })
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        info: Arc<ConnInfo>,
    ) -> Response<ProxyBody> {
        info.activity.request_started();
        let grpc = grpc::is_grpc(req.headers());
        let log = AccessLog {
            peer: info.peer,
            // Both are cheap clones (a known method is a tag; a path shares the URI's bytes):
            // nothing is formatted unless the access log is enabled.
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            status: 0,
            bytes: 0,
            grpc,
            grpc_status: None,
            finished: false,
            start: Instant::now(),
            activity: info.activity.clone(),
            metrics: self.metrics.clone(),
        };

        if info.activity.take_ambiguous() {
            debug!(peer = %info.peer, "refused request with both Content-Length and Transfer-Encoding");
            self.metrics.refused(Refusal::Framing);
            return local(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
                log,
            );
        }
        if let Err(reason) = check_framing(req.headers()) {
            debug!(peer = %info.peer, reason, "refused ambiguous request");
            self.metrics.refused(Refusal::Framing);
            return local(StatusCode::BAD_REQUEST, reason, log);
        }
        let host = match request_host(req.version(), req.uri(), req.headers()) {
            Ok(Some(host)) => host,
            Ok(None) => match HeaderValue::from_str(&self.backend_authority) {
                Ok(h) => h,
                Err(_) => return local(StatusCode::BAD_REQUEST, "invalid backend address", log),
            },
            Err(reason) => {
                debug!(peer = %info.peer, reason, "refused request for its host");
                self.metrics.refused(Refusal::Host);
                return local(StatusCode::BAD_REQUEST, reason, log);
            }
        };
        let upgrade = match upgrade_request(info.h2, req.headers(), &self.config.allow_upgrade) {
            UpgradeAsk::None => None,
            UpgradeAsk::Allowed(value) => Some(value),
            UpgradeAsk::Refused => {
                // Forwarded as a plain request: the Upgrade header is hop-by-hop and dropped.
                self.metrics.refused(Refusal::Upgrade);
                None
            }
        };
        // The client's deadline (gRPC only): it bounds the wait for the response head, and the
        // response body ends with DEADLINE_EXCEEDED when it passes mid-stream. A deadline too
        // far away to represent is no deadline.
        let deadline = if grpc {
            req.headers()
                .get(grpc::GRPC_TIMEOUT)
                .and_then(grpc::parse_timeout)
                .and_then(|d| log.start.checked_add(d))
        } else {
            None
        };
        let route = if upgrade.is_some() {
            Route::Http1
        } else {
            grpc::route(self.config.backend_protocol, grpc)
        };
        // HTTP/2 clients always take trailers; HTTP/1.1 ones when they say `TE: trailers`.
        let trailers = info.h2 || accepts_trailers(req.headers());
        let req = match self.rewrite(req, &info, host, upgrade.clone(), route, trailers) {
            Ok(req) => req,
            Err(reason) => return local(StatusCode::BAD_REQUEST, reason, log),
        };
        if upgrade.is_some() {
            return self.upgrade(req, &info, log).await;
        }
        let head_by = log.start + self.config.backend_timeout;
        let (head_by, late) = match deadline {
            Some(at) if at <= head_by => (at, Failure::Deadline),
            _ => (head_by, Failure::Backend(BackendError::Timeout)),
        };
        let resp = match route {
            Route::H2c => self.exchange_h2(req, &info, head_by, late).await,
            Route::Http1 => self.exchange_http1(req, &info, head_by, late).await,
        };
        let resp = match resp {
            Ok(resp) => resp,
            Err(failure) => return self.failed(failure, log),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if !info.h2 && grpc::is_grpc(&parts.headers) {
            // gRPC status travels in trailers, which HTTP/1.1 sends only when announced.
            parts
                .headers
                .entry(header::TRAILER)
                .or_insert(HeaderValue::from_static(grpc::TRAILER_NAMES));
        }
        respond(parts, Either::Left(Guarded::new(body, deadline)), log)
    }

    /// One exchange over pooled HTTP/1.1, waiting for the response head until `head_by`; a
    /// request the client cancels still finishes in the background ([`Exchange`]).
    async fn exchange_http1(
        &self,
        req: Request<Incoming>,
        info: &ConnInfo,
        head_by: Instant,
        late: Failure,
    ) -> Result<Response<Incoming>, Failure> {
        let wait = head_by.saturating_duration_since(Instant::now());
        let exchange = Exchange::new(self.client.request(req), wait);
        match tokio::time::timeout_at(head_by, exchange).await {
            Err(_) => Err(late),
            Ok(Err(error)) if error.is_connect() => {
                if let Some(suppressed) = BACKEND_CONNECT_LOG.ready() {
                    warn!(backend = %self.backend_authority, error = %error_chain(&error), suppressed, "backend connect failed");
                }
                Err(Failure::Backend(BackendError::Connect))
            }
            Ok(Err(error)) => Err(self.request_failed(info, &error, "HTTP/1.1")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// One exchange over the shared HTTP/2 connections. A cancelled request resets its stream
    /// only: the connection stays, so nothing needs finishing in the background.
    async fn exchange_h2(
        &self,
        req: Request<Incoming>,
        info: &ConnInfo,
        head_by: Instant,
        late: Failure,
    ) -> Result<Response<Incoming>, Failure> {
        let Some(pool) = self.h2.as_ref() else {
            return Err(Failure::Backend(BackendError::Protocol));
        };
        match tokio::time::timeout_at(head_by, pool.send(req)).await {
            Err(_) => Err(late),
            Ok(Err(H2Error::Connect(error))) => {
                if let Some(suppressed) = BACKEND_CONNECT_LOG.ready() {
                    warn!(backend = %self.backend_authority, %error, suppressed, "backend connect failed");
                }
                Err(Failure::Backend(BackendError::Connect))
            }
            Ok(Err(H2Error::Request(error))) => Err(self.request_failed(info, &error, "h2c")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// What a failed exchange (past the connect) was: the client's own body broke it (a
    /// malformed chunk, a reset: a client error, not the backend's), or the backend did.
    fn request_failed(
        &self,
        info: &ConnInfo,
        error: &(dyn std::error::Error + 'static),
        over: &str,
    ) -> Failure {
        if is_client_body_error(error) {
            debug!(peer = %info.peer, error = %error_chain(error), "request body failed");
            return Failure::ClientBody;
        }
        if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
            warn!(backend = %self.backend_authority, error = %error_chain(error), suppressed, over, "backend request failed");
        }
        Failure::Backend(BackendError::Protocol)
    }

    /// The sidecar's own answer to a request it could not get answered.
    fn failed(&self, failure: Failure, log: AccessLog) -> Response<ProxyBody> {
        match failure {
            Failure::Backend(kind) => self.backend_failed(kind, log),
            Failure::ClientBody => {
                self.metrics.refused(Refusal::Framing);
                local(StatusCode::BAD_REQUEST, "invalid request body", log)
            }
            // Only gRPC calls carry a deadline.
            Failure::Deadline => grpc_local(grpc::DEADLINE_EXCEEDED, "deadline exceeded", log),
        }
    }

    /// Turns the client's request into the backend's: origin on the backend, HTTP/1.1, `Host`
    /// set to the authority the client asked for, hop-by-hop headers dropped (an allowed
    /// `upgrade` put back), forwarding headers set.
    fn rewrite(
        &self,
        req: Request<Incoming>,
        info: &ConnInfo,
        host: HeaderValue,
        upgrade: Option<HeaderValue>,
        route: Route,
        trailers: bool,
    ) -> Result<Request<Incoming>, &'static str> {
        let (mut parts, body) = req.into_parts();
        let upgrading = upgrade.is_some();
        forward_headers(
            &mut parts.headers,
            &Forward {
                peer: info.peer,
                host: &host,
                listen_port: self.listen_port,
                client: info.client.as_ref(),
                trailers,
                upgrade,
            },
        );

        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = match route {
            // Sent on a dedicated connection: origin form.
            Route::Http1 if upgrading => Uri::try_from(path),
            // The pool's key: the backend (the Host header names the client's authority).
            Route::Http1 => Uri::try_from(format!("http://{}{}", self.backend_authority, path)),
            // HTTP/2 names the authority in `:authority`, taken from the URI; the pool
            // connects to the backend whatever it says, and no Host header goes along.
            Route::H2c => Uri::try_from(format!(
                "http://{}{}",
                host.to_str().map_err(|_| "invalid request authority")?,
                path
            )),
        };
        parts.uri = uri.map_err(|_| "invalid request target")?;
        match route {
            Route::Http1 => {
                parts.headers.insert(header::HOST, host);
                parts.version = Version::HTTP_11;
            }
            Route::H2c => {
                parts.headers.remove(header::HOST);
                parts.version = Version::HTTP_2;
            }
        }
        Ok(Request::from_parts(parts, body))
    }

    /// Forwards an upgrade request on a dedicated backend connection; on `101` relays raw bytes
    /// between the two upgraded connections.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        info: &ConnInfo,
        log: AccessLog,
    ) -> Response<ProxyBody> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stream = match crate::tcp::connect(&self.config.backend, self.config.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(error) => {
                if let Some(suppressed) = BACKEND_CONNECT_LOG.ready() {
                    warn!(backend = %self.backend_authority, %error, suppressed, "backend connect failed");
                }
                return self.backend_failed(BackendError::Connect, log);
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(error) => {
                    if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
                        warn!(%error, suppressed, "backend handshake failed");
                    }
                    return self.backend_failed(BackendError::Protocol, log);
                }
            };
        self.tracker.spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(%error, "backend upgrade connection error");
            }
        });
        let mut resp =
            match tokio::time::timeout(self.config.backend_timeout, sender.send_request(req)).await
            {
                Err(_) => return self.backend_failed(BackendError::Timeout, log),
                Ok(Err(error)) => {
                    if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
                        warn!(%error, suppressed, "backend upgrade request failed");
                    }
                    return self.backend_failed(BackendError::Protocol, log);
                }
                Ok(Ok(resp)) => resp,
            };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let idle = self.config.idle_timeout;
            let metrics = self.metrics.clone();
            // The relay holds the connection's slot: an upgraded connection counts against
            // the limits like any other, and is never closed to make room.
            let ticket = info.ticket.clone();
            ticket.set_phase(Phase::Pinned);
            self.tracker.spawn(async move {
                let _slot = ticket;
                match tokio::try_join!(client_upgrade, backend_upgrade) {
                    Ok((client, backend)) => {
                        crate::tcp::relay_upgraded(
                            TokioIo::new(client),
                            TokioIo::new(backend),
                            idle,
                            metrics,
                        )
                        .await
                    }
                    Err(error) => debug!(%error, "upgrade did not complete"),
                }
            });
            let upgrade_value = resp.headers().get(header::UPGRADE).cloned();
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(value) = upgrade_value {
                parts.headers.insert(header::UPGRADE, value);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return respond(parts, Either::Left(Guarded::new(body, None)), log);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        respond(parts, Either::Left(Guarded::new(body, None)), log)
    }

    /// 502 or 504, or for a gRPC call HTTP 200 with `grpc-status` 14 (UNAVAILABLE, gRPC's
    /// reading of 502, 503 and 504): gRPC clients expect a status, not an error page.
    fn backend_failed(&self, kind: BackendError, log: AccessLog) -> Response<ProxyBody> {
        self.metrics.backend_error(kind);
        let (status, message) = match kind {
            BackendError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "backend did not answer in time",
            ),
            BackendError::Connect => (StatusCode::BAD_GATEWAY, "backend unreachable"),
            BackendError::Protocol => (StatusCode::BAD_GATEWAY, "backend request failed"),
        };
        if log.grpc {
            return grpc_local(grpc::UNAVAILABLE, message, log);
        }
        local(status, message, log)
    }
}

/// Why a request got no answer from the backend.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Backend(BackendError),
    /// The client's request body broke (a malformed chunk, a reset).
    ClientBody,
    /// The client's gRPC deadline passed before the response head.
    Deadline,
}

/// Whether an HTTP/1.1 client accepts trailers in the response (`TE: trailers`, RFC 9110
/// section 10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// What the service needs to know about its connection.
struct ConnInfo {
    peer: SocketAddr,
    activity: Arc<Activity>,
    h2: bool,
    /// The verified client certificate's identity (mutual TLS).
    client: Option<ClientIdentity>,
    /// The connection's slot.
    ticket: Arc<Ticket>,
}

/// What the watchdog of one HTTP connection looks at.
#[derive(Clone, Copy)]
struct Watch<'a> {
    activity: &'a Activity,
    idle: Duration,
    /// The request-head timeout (HTTP/1 only).
    head: Option<Duration>,
    shutdown: &'a CancellationToken,
    /// Cancelled when the connection must make room for a new one.
    evict: &'a CancellationToken,
    metrics: &'a Metrics,
}

/// Drives a connection (hyper's, or the HTTP/1.1 fast path's) to its end, and ends it: gracefully when it idles out, on
/// shutdown and when it must make room; hard when a request head is too slow, when the client
/// cancels requests faster than its budget, and when, once closing, it has had nothing in
/// flight for the goodbye deadline (a client that ignores HTTP/2's GOAWAY and PING). Control
/// frames alone never keep a connection open: only requests count as activity. `Some` with the
/// connection's own result when it ended by itself, `None` when the watchdog ended it.
async fn drive<C, F, T>(mut conn: Pin<&mut C>, w: Watch<'_>, graceful: F) -> Option<T>
where
    C: std::future::Future<Output = T>,
    F: Fn(Pin<&mut C>),
{
    let goodbye = GOODBYE_MAX.min(w.idle);
    let shortest = w.head.map_or(w.idle, |h| h.min(w.idle)).min(goodbye);
    let mut tick = tokio::time::interval(tick_period(shortest));
    let mut closing: Option<Instant> = None;
    // Created once: a fresh `cancelled()` per wake-up would re-register with the token each time.
    let cancelled = w.shutdown.cancelled();
    let evicted = w.evict.cancelled();
    let aborted = w.activity.aborted();
    tokio::pin!(cancelled, evicted, aborted);
    let close = |conn: Pin<&mut C>, closing: &mut Option<Instant>| {
        if closing.is_none() {
            *closing = Some(Instant::now());
            graceful(conn);
        }
    };
    loop {
        tokio::select! {
            res = conn.as_mut() => return Some(res),
            () = &mut cancelled, if closing.is_none() => close(conn.as_mut(), &mut closing),
            () = &mut evicted, if closing.is_none() => {
                if !w.activity.busy() {
                    debug!("closing idle connection to make room");
                    return None;
                }
                close(conn.as_mut(), &mut closing);
            }
            () = &mut aborted => {
                w.metrics.refused(Refusal::StreamResets);
                if let Some(suppressed) = RESET_LOG.ready() {
                    warn!(suppressed, "closing a connection that cancels requests faster than its budget");
                }
                return None;
            }
            _ = tick.tick() => {
                match w.activity.verdict(w.idle, w.head) {
                    Verdict::Active => {}
                    Verdict::Idle => {
                        if closing.is_none() {
                            debug!("closing idle connection");
                        }
                        close(conn.as_mut(), &mut closing);
                    }
                    Verdict::HeadTimeout => {
                        debug!("request head not received in time, closing");
                        return None;
                    }
                }
                if let (Some(since), Some(quiet)) = (closing, w.activity.quiet_since()) {
                    if Instant::now() >= since.max(quiet) + goodbye {
                        w.metrics.refused(Refusal::CloseDeadline);
                        debug!("client did not finish closing in time, closing hard");
                        return None;
                    }
                }
            }
        }
    }
}

/// A backend exchange that, when the client cancels its request (hyper drops the service
/// future), still runs to its response in the background and drains a small body, so the
/// backend connection goes back to the pool instead of being closed and re-opened by the next
/// request. Bounded by [`ORPHANS_MAX`], the exchange's deadline, [`DRAIN_MAX_TIME`] and
/// [`DRAIN_MAX_BYTES`].
struct Exchange {
    future: Option<ResponseFuture>,
    deadline: Instant,
}

impl Exchange {
    fn new(future: ResponseFuture, timeout: Duration) -> Self {
        Self {
            future: Some(future),
            deadline: Instant::now() + timeout,
        }
    }
}

impl std::future::Future for Exchange {
    type Output = <ResponseFuture as std::future::Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending;
        };
        let res = Pin::new(future).poll(cx);
        if res.is_ready() {
            self.future = None;
        }
        res
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        use std::sync::atomic::Ordering;
        if ORPHANS.fetch_add(1, Ordering::Relaxed) >= ORPHANS_MAX {
            ORPHANS.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let deadline = self.deadline.min(Instant::now() + DRAIN_MAX_TIME);
        runtime.spawn(async move {
            if let Ok(Ok(resp)) = tokio::time::timeout_at(deadline, future).await {
                drain(resp.into_body()).await;
            }
            ORPHANS.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads a body nobody wants to its end, if it is small and quick, so its connection is reused.
async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_MAX_BYTES {
                return;
            }
        }
    })
    .await;
}

fn log_conn_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Clients vanish all the time; that is not worth a warning.
        if error.is_incomplete_message() || error.is_canceled() || is_reset(&error) {
            debug!(%peer, %error, "connection ended");
        } else {
            debug!(%peer, error = %error_chain(&error), "connection error");
        }
    }
}

fn is_reset(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A short plain-text response made by the sidecar itself.
fn local(status: StatusCode, message: &str, log: AccessLog) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    respond(parts, Either::Right(Full::new(Bytes::from(body))), log)
}

/// The sidecar's own gRPC answer: a trailers-only response with `grpc-status` and
/// `grpc-message`.
fn grpc_local(code: u32, message: &'static str, log: AccessLog) -> Response<ProxyBody> {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.headers = grpc::failure_headers(code, message);
    respond(parts, Either::Right(Full::new(Bytes::new())), log)
}

/// The access-log record of one request, written when its response body is done (or dropped,
/// when the client goes away), so the byte count and duration are the real ones.
struct AccessLog {
    peer: SocketAddr,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    status: u16,
    bytes: u64,
    /// A gRPC call: its status (from the response head or trailers) is logged and counted.
    grpc: bool,
    grpc_status: Option<u32>,
    /// The response body was sent to its end.
    finished: bool,
    start: Instant,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
}

/// The status logged for a request the client cancelled before its response (nginx's "client
/// closed request"), so cancellations are visible in the access log and told from answers.
const STATUS_CLIENT_CLOSED: u16 = 499;
/// gRPC's CANCELLED: logged for a gRPC call that ended without a status.
const GRPC_CANCELLED: u32 = 1;

impl Drop for AccessLog {
    fn drop(&mut self) {
        if self.status == 0 {
            // Dropped before a response was made: the client cancelled (an HTTP/2 stream reset
            // or a vanished connection).
            self.status = STATUS_CLIENT_CLOSED;
            self.activity.request_cancelled();
        }
        self.metrics.response(self.status);
        if self.grpc && self.grpc_status.is_none() && !self.finished {
            // Cut short before its status: the client cancelled (or the stream broke).
            self.grpc_status = Some(GRPC_CANCELLED);
        }
        if let Some(code) = self.grpc_status {
            self.metrics.grpc_response(code);
        }
        // Only the line moves off this thread ([`access_log`]); the counts above and the
        // activity below stay here, exact and in order.
        if access_log::enabled() {
            access_log::write(access_log::Record {
                peer: self.peer,
                method: std::mem::take(&mut self.method),
                path: self.path.take(),
                status: self.status,
                grpc_status: self.grpc_status,
                bytes: self.bytes,
                duration: self.start.elapsed(),
                at: SystemTime::now(),
            });
        }
        self.activity.request_finished();
    }
}

/// A body that counts the bytes it yields and logs the request when it is done.
pub struct Logged<B> {
    inner: B,
    log: Option<AccessLog>,
}

/// Builds the response from its parts, recording the status in the access log.
fn respond<B>(parts: http::response::Parts, body: B, mut log: AccessLog) -> Response<Logged<B>> {
    log.status = parts.status.as_u16();
    if log.grpc {
        // A trailers-only response carries its status in the head.
        log.grpc_status = grpc::status_of(&parts.headers);
    }
    Response::from_parts(
        parts,
        Logged {
            inner: body,
            log: Some(log),
        },
    )
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(log)) = (&res, self.log.as_mut()) {
            if let Some(data) = frame.data_ref() {
                log.bytes += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref() {
                if log.grpc {
                    log.grpc_status = grpc::status_of(trailers).or(log.grpc_status);
                }
            }
        }
        if let Poll::Ready(None) = &res {
            // Finished: log now rather than whenever hyper drops the body.
            if let Some(mut log) = self.log.take() {
                log.finished = true;
            }
        }
        res.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- pure request rules ----

/// Refuses requests whose framing two parsers could read differently (request smuggling).
/// hyper already refuses differing duplicate `Content-Length` and invalid header bytes.
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err("both Content-Length and Transfer-Encoding");
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|other| other != first) {
            return Err("conflicting Content-Length headers");
        }
    }
    Ok(())
}

/// Whether an exchange failed because the client's request body did (a malformed chunk, a
/// reset mid-body): hyper reports the body it was given failing as a "user" error.
fn is_client_body_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// The authority a request is for, which becomes the backend's `Host` and
/// `X-Forwarded-Host`: `Ok(None)` when the request names none (HTTP/1.0 without `Host`).
///
/// - More than one `Host` header is refused (RFC 9112 section 3.2).
/// - A request-target with an authority (absolute form in HTTP/1.1, `:authority` in HTTP/2)
///   wins over `Host` (RFC 9112 section 3.2.2); in HTTP/2 a `Host` that names another
///   authority is refused (RFC 9113 section 8.3.1).
/// - The authority must be `host[:port]`: no user info, path or other characters.
pub fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(authority) = uri.authority() {
        valid_authority(authority.as_str().as_bytes()).ok_or("invalid request authority")?;
        if version == Version::HTTP_2 {
            if let Some(h) = host {
                if !h
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Err("Host differs from :authority");
                }
            }
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| "invalid request authority");
    }
    match host {
        Some(h) => {
            valid_authority(h.as_bytes()).ok_or("invalid Host header")?;
            Ok(Some(h.clone()))
        }
        None if version == Version::HTTP_11 => Err("missing Host header"),
        None => Ok(None),
    }
}

/// `host[:port]` with a DNS name, an IPv4 address or a bracketed IPv6 address (the one rule for
/// request authorities, `shared::addr::authority_host`, which the redirect listener uses too).
fn valid_authority(bytes: &[u8]) -> Option<()> {
    shared::addr::authority_host(std::str::from_utf8(bytes).ok()?).map(|_| ())
}

/// What to do with an HTTP/1.1 request's `Upgrade`.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeAsk {
    /// Not an upgrade request.
    None,
    /// Pass the upgrade, offering the backend only these allowed protocols.
    Allowed(HeaderValue),
    /// None of the offered protocols is allowed: forward as a plain request.
    Refused,
}

/// Applies `--allow-upgrade` to a request: only listed protocols (compared by name, before any
/// `/version`) are offered to the backend. HTTP/2 requests never upgrade.
pub fn upgrade_request(h2: bool, headers: &HeaderMap, allowed: &[String]) -> UpgradeAsk {
    if h2 || !is_upgrade(headers) {
        return UpgradeAsk::None;
    }
    let offered: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('/').next().unwrap_or(p);
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p) || a.eq_ignore_ascii_case(name))
        })
        .collect();
    if offered.is_empty() {
        return UpgradeAsk::Refused;
    }
    match HeaderValue::from_str(&offered.join(", ")) {
        Ok(v) => UpgradeAsk::Allowed(v),
        Err(_) => UpgradeAsk::Refused,
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers: the fixed list and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers present instead of a hashed remove per known name: this
    // runs twice per request.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    if doomed.contains(&header::CONNECTION) {
        for value in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for token in value.split(',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    doomed.push(name);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// What the backend's request headers are made from besides the client's.
pub struct Forward<'a> {
    pub peer: SocketAddr,
    /// The authority the client asked for ([`request_host`]).
    pub host: &'a HeaderValue,
    pub listen_port: u16,
    pub client: Option<&'a ClientIdentity>,
    /// The client accepts trailers: `TE: trailers` goes along.
    pub trailers: bool,
    /// An allowed upgrade, offered to the backend.
    pub upgrade: Option<HeaderValue>,
}

/// The header rules of every forwarded request (both paths: the HTTP/1.1 fast path writes the
/// same set, which its differential test checks against this): hop-by-hop headers dropped,
/// `TE: trailers` and an allowed upgrade put back, forwarding and client-certificate headers set.
/// `Host` is the caller's (HTTP/2 backends take `:authority` instead).
pub fn forward_headers(headers: &mut HeaderMap, f: &Forward<'_>) {
    strip_hop_by_hop(headers);
    if f.trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(value) = f.upgrade.clone() {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded(headers, f.peer, f.host, f.listen_port);
    set_client_identity(headers, f.client);
}

/// Adds the HSTS header unless the backend set its own: the app's policy wins, and a second
/// `Strict-Transport-Security` header would be ignored anyway (browsers honour only the first,
/// RFC 6797 section 8.1).
pub fn add_hsts(headers: &mut HeaderMap, value: HeaderValue) {
    headers
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(value);
}

/// Sets the de-facto forwarding headers. `X-Forwarded-For` is appended to (the client may be
/// behind other proxies); the others describe this hop and are overwritten so a client cannot
/// claim another scheme, host or port.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: &HeaderValue,
    listen_port: u16,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<&str> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client_ip = peer.ip().to_canonical().to_string();
    let value = if prior.is_empty() {
        client_ip
    } else {
        format!("{}, {}", prior.join(", "), client_ip)
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    headers.insert(
        HeaderName::from_static("x-forwarded-port"),
        HeaderValue::from(listen_port),
    );
}

/// Headers carrying the verified client certificate to the backend.
const CLIENT_CERT_HEADERS: [&str; 3] = [
    "x-client-cert-subject",
    "x-client-cert-san",
    "x-client-cert-fingerprint",
];

/// A certificate field as a header value: certificates may hold control characters, a header
/// value may not (each becomes `?`). Both request paths write client identities through it.
fn header_safe(value: &str) -> impl Iterator<Item = u8> + '_ {
    value
        .bytes()
        .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
}

/// The client-certificate headers an identity sets: (name, raw value), empty fields left out.
/// Both request paths write them from here.
fn identity_headers(id: &ClientIdentity) -> impl Iterator<Item = (&'static str, &str)> {
    CLIENT_CERT_HEADERS
        .into_iter()
        .zip([
            id.subject.as_str(),
            id.san.as_str(),
            id.fingerprint.as_str(),
        ])
        .filter(|(_, v)| !v.is_empty())
}

/// Removes any client-certificate headers the client sent (always: they cannot be trusted) and
/// sets them from the certificate the handshake verified, if any.
pub fn set_client_identity(headers: &mut HeaderMap, identity: Option<&ClientIdentity>) {
    for name in CLIENT_CERT_HEADERS {
        headers.remove(name);
    }
    let Some(id) = identity else { return };
    for (name, value) in identity_headers(id) {
        let clean: Vec<u8> = header_safe(value).collect();
        if let Ok(v) = HeaderValue::from_bytes(&clean) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn client_identity_headers_are_replaced_never_forwarded() {
        let mut h = headers(&[
            ("x-client-cert-subject", "CN=forged"),
            ("X-Client-Cert-Fingerprint", "00"),
        ]);
        set_client_identity(&mut h, None);
        assert!(h.is_empty());
        let id = ClientIdentity {
            subject: "CN=web\n".into(),
            san: "DNS:web.example".into(),
            fingerprint: "ab".into(),
        };
        let mut h = headers(&[("x-client-cert-subject", "CN=forged")]);
        set_client_identity(&mut h, Some(&id));
        assert_eq!(h["x-client-cert-subject"], "CN=web?");
        assert_eq!(h["x-client-cert-san"], "DNS:web.example");
        assert_eq!(h["x-client-cert-fingerprint"], "ab");
    }

    #[test]
    fn framing_conflicts_are_refused() {
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "6")
        ]))
        .is_err());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "5")
        ]))
        .is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")])).is_ok());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn host_rules_follow_rfc_9112_and_9113() {
        let v11 = Version::HTTP_11;
        let host = |h: &[(&str, &str)], u: &str, v| request_host(v, &uri(u), &headers(h));
        assert_eq!(
            host(&[("host", "app.example:8443")], "/", v11),
            Ok(Some(HeaderValue::from_static("app.example:8443")))
        );
        assert_eq!(
            host(&[("host", "a.example"), ("host", "a.example")], "/", v11),
            Err("more than one Host header")
        );
        assert_eq!(
            host(&[("host", "evil.example/x@good")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(
            host(&[("host", "user@good")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(
            host(&[("host", "good:99999x")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(host(&[], "/", v11), Err("missing Host header"));
        assert_eq!(host(&[], "/", Version::HTTP_10), Ok(None));
        assert_eq!(
            host(&[("host", "[::1]:8443")], "/", v11),
            Ok(Some(HeaderValue::from_static("[::1]:8443")))
        );
        assert_eq!(
            host(&[("host", "[nope]")], "/", v11),
            Err("invalid Host header")
        );
        // Absolute form: the target's authority wins over Host.
        assert_eq!(
            host(
                &[("host", "good.example")],
                "http://other.example/admin",
                v11
            ),
            Ok(Some(HeaderValue::from_static("other.example")))
        );
        assert_eq!(
            host(&[], "http://u@other.example/", v11),
            Err("invalid request authority")
        );
        // HTTP/2: :authority is the host; a different Host header is refused.
        let v2 = Version::HTTP_2;
        assert_eq!(
            host(&[], "https://a.example/", v2),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        assert_eq!(
            host(&[("host", "A.example")], "https://a.example/", v2),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        assert_eq!(
            host(&[("host", "b.example")], "https://a.example/", v2),
            Err("Host differs from :authority")
        );
    }

    #[test]
    fn only_allowed_upgrades_pass() {
        let allowed = vec!["websocket".to_string()];
        let ask = |h: &[(&str, &str)]| upgrade_request(false, &headers(h), &allowed);
        assert_eq!(
            ask(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]),
            UpgradeAsk::Allowed(HeaderValue::from_static("WebSocket"))
        );
        assert_eq!(
            ask(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c")
            ]),
            UpgradeAsk::Refused
        );
        assert_eq!(
            ask(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]),
            UpgradeAsk::Allowed(HeaderValue::from_static("websocket"))
        );
        assert_eq!(ask(&[("upgrade", "websocket")]), UpgradeAsk::None);
        assert_eq!(
            upgrade_request(
                true,
                &headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
                &allowed
            ),
            UpgradeAsk::None
        );
        assert_eq!(
            upgrade_request(
                false,
                &headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
                &[]
            ),
            UpgradeAsk::Refused
        );
        let mut h = headers(&[("http2-settings", "AAMAAABkAAQAAP__"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("http2-settings").is_none());
    }

    #[test]
    fn trailers_are_accepted_only_when_te_says_so() {
        assert!(accepts_trailers(&headers(&[("te", "trailers")])));
        assert!(accepts_trailers(&headers(&[("te", "gzip, Trailers")])));
        assert!(accepts_trailers(&headers(&[
            ("te", "deflate;q=0.5"),
            ("te", "trailers;q=1")
        ])));
        assert!(!accepts_trailers(&headers(&[("te", "gzip")])));
        assert!(!accepts_trailers(&headers(&[("te", "trailersx")])));
        assert!(!accepts_trailers(&headers(&[])));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(is_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn hsts_is_added_once_and_never_over_the_backends() {
        let value = HeaderValue::from_static("max-age=60");
        let mut h = headers(&[("content-type", "text/plain")]);
        add_hsts(&mut h, value.clone());
        add_hsts(&mut h, value.clone());
        assert_eq!(
            h.get_all("strict-transport-security")
                .iter()
                .collect::<Vec<_>>(),
            vec!["max-age=60"]
        );

        let mut h = headers(&[("strict-transport-security", "max-age=5; preload")]);
        add_hsts(&mut h, value);
        assert_eq!(
            h.get_all("strict-transport-security")
                .iter()
                .collect::<Vec<_>>(),
            vec!["max-age=5; preload"]
        );
    }

    #[test]
    fn forwarded_headers_append_for_and_overwrite_the_rest() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "1"),
        ]);
        let peer: SocketAddr = "[::ffff:192.0.2.7]:5555".parse().expect("addr");
        set_forwarded(&mut h, peer, &HeaderValue::from_static("app.example"), 8443);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-port"], "8443");
    }
}
