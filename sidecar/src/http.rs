//! HTTP mode: one TLS connection served with hyper (HTTP/2 or HTTP/1.1, as ALPN chose), every
//! request forwarded to the backend over pooled HTTP/1.1 keep-alive connections or, for gRPC
//! (and everything with `--backend-protocol h2c`), over a few shared HTTP/2 cleartext
//! connections ([`h2pool`]); bodies and trailers streamed both ways, upgrades (WebSocket)
//! relayed as raw bytes. The common HTTP/1.1 request, and the HTTP/2 stream without a request
//! body, take a faster path of their own ([`fast_path`]); gRPC rules (routing, deadlines, status answers) are in [`grpc`], and the
//! header rules both paths follow in [`headers`].
//!
//! This file holds the service and what the paths share: the limits on request heads, the
//! backend pool's bounds, the connection watchdog ([`drive`]) and the access-log record of a
//! request.

mod body;
mod fast_path;
mod grpc;
pub(crate) mod h2pool;
pub(crate) mod h3;
mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::access_log;
use crate::config::Config;
use crate::connection::activity::{tick_period, Activity, Tracked, Verdict};
use crate::connection::admission::{Phase, Ticket};
use crate::error::chain;
use crate::metrics::{BackendError, Metrics, Protocol, Refusal};
use crate::throttle::{Throttle, LOG_INTERVAL};
use crate::tls::client_auth::ClientIdentity;
use body::RequestBody;
use grpc::{Guarded, Route};
use h2pool::{H2Error, H2Pool};
use headers::{
    accepts_trailers, add_hsts, check_framing, forward_headers, request_host, strip_hop_by_hop,
    upgrade_request, Forward, UpgradeAsk,
};

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
pub(crate) const POOL_MAX_IDLE: usize = 256;

/// Once a connection is asked to close (idle, shutdown, eviction), how long a client may take
/// to finish the goodbye (for HTTP/2: answer the GOAWAY's PING) once nothing is in flight,
/// before the connection is closed hard. One round trip is enough for a real client; never
/// more than the idle timeout itself.
const GOODBYE_MAX: Duration = Duration::from_secs(5);
/// While the sidecar drains, an HTTP/1.1 connection with nothing in flight is closed only once
/// its client has been quiet this long (never longer than the idle timeout): a client that sends
/// its next request just as the drain begins gets an answer with `Connection: close`, not a
/// connection closed under its request. A request follows its previous response within a round
/// trip or it is not coming soon.
const DRAIN_LINGER: Duration = Duration::from_secs(1);
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

type BackendClient = Client<HttpConnector, RequestBody>;

/// The response body the sidecar sends: the backend's streamed body or a short local one.
pub(crate) type ProxyBody =
    Logged<Either<Guarded<Incoming>, Either<Full<Bytes>, fast_path::Direct>>>;

/// Shared state of HTTP mode, one per sidecar.
pub(crate) struct Proxy {
    client: BackendClient,
    /// HTTP/2 cleartext connections, unless `--backend-protocol http1`: one set shared by every
    /// serving thread, so the sidecar holds at most [`h2pool`]'s few connections in all.
    h2: Option<Arc<H2Pool>>,
    backend_authority: String,
    listen_port: u16,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    /// `Strict-Transport-Security` for responses that lack it (`--hsts`).
    hsts: Option<HeaderValue>,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 responses that lack it (`--http3`).
    alt_svc: Option<HeaderValue>,
    /// Backend connections of the fast paths ([`fast_path`]): pooled HTTP/1.1 connections of
    /// this serving thread.
    fast_pool: Arc<fast_path::Pool>,
    /// Requests that are not gRPC go to the backend over HTTP/1.1 (the fast paths' backend).
    fast_h2_backend: bool,
    /// The listener's port as `X-Forwarded-Port` says it, formatted once.
    listen_port_text: String,
}

impl Proxy {
    /// The HTTP/2 backend pool for [`Proxy::new`], unless `--backend-protocol http1`: made once
    /// and shared by the serving threads.
    pub(crate) fn h2_pool(config: &Config) -> Option<Arc<H2Pool>> {
        (config.backend_protocol != shared::proto::BackendProtocol::Http1)
            .then(|| Arc::new(H2Pool::new(config.backend.clone(), config.connect_timeout)))
    }

    /// One serving thread's proxy: its own HTTP/1.1 backend pools (at most `max_idle` idle
    /// connections each), the shared HTTP/2 one.
    pub(crate) fn new(
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
        let alt_svc = config.http3.and_then(|h| {
            HeaderValue::from_str(&alt_svc(h.advertise_port.unwrap_or(listen_port))).ok()
        });
        Arc::new(Self {
            client,
            h2,
            alt_svc,
            backend_authority: config.backend.authority(),
            listen_port,
            metrics,
            tracker,
            hsts,
            fast_pool: Arc::new(fast_path::Pool::new(max_idle)),
            fast_h2_backend: grpc::route(config.backend_protocol, false) == Route::Http1,
            listen_port_text: listen_port.to_string(),
            config,
        })
    }

    /// Serves one TLS connection until the client leaves, it idles out, it is asked to make
    /// room (through its `ticket`), or shutdown. `activity` is the connection's record, shared
    /// with the admission table; an upgraded connection keeps the ticket (its slot) until its
    /// relay ends.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn serve<S>(
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
            client_ip: peer.ip().to_canonical().to_string(),
            activity: activity.clone(),
            h2,
            proto: if h2 { Protocol::H2 } else { Protocol::Http1 },
            client,
            ticket,
        });
        let watch = Watch {
            activity: &activity,
            idle: self.config.idle_timeout,
            head: None,
            linger: None,
            shutdown: &shutdown,
            evict: &evict,
            metrics: &self.metrics,
            streams: None,
        };
        let tracked = Tracked::new(tls, activity.clone());
        if h2 {
            let service = self.service(conn_info);
            let streams = Streams::default();
            let conn = hyper::server::conn::http2::Builder::new(streams.clone())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .serve_connection(TokioIo::new(tracked), service);
            tokio::pin!(conn);
            let watch = Watch {
                streams: Some(&streams),
                ..watch
            };
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
        // A request for hyper is answered even when the connection is closing (its answer then
        // says `Connection: close`).
        if !matches!(end, Some(fast_path::End::Fallback)) {
            return;
        }
        activity.scan_handed_over(&buf);
        self.serve_http1(tracked, buf, conn_info, watch).await;
    }

    /// The rest of an HTTP/1.1 connection, served by hyper from the request the fast path
    /// handed over (its bytes in `buf`). While draining, it is closed only once its client has
    /// been quiet for [`DRAIN_LINGER`].
    async fn serve_http1<S>(
        self: &Arc<Self>,
        tracked: Tracked<S>,
        buf: bytes::BytesMut,
        conn_info: Arc<ConnInfo>,
        watch: Watch<'_>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = conn_info.peer;
        let service = self.service(conn_info);
        let io = TokioIo::new(fast_path::Prefixed::new(buf.freeze(), tracked));
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
        let watch = Watch {
            linger: Some(DRAIN_LINGER.min(self.config.idle_timeout)),
            ..watch
        };
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
        service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let info = conn_info.clone();
            async move {
                let mut resp = proxy.handle(req.map(RequestBody::Hyper), &info).await;
                proxy.add_headers(resp.headers_mut());
                if !info.h2 && proxy.metrics.is_draining() {
                    last_response(&mut resp);
                }
                Ok::<_, Infallible>(resp)
            }
        })
    }

    /// What this hop adds to a response that lacks it: `Strict-Transport-Security` (`--hsts`)
    /// and, but on HTTP/3 itself, `Alt-Svc` (`--http3`).
    fn add_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(value) = &self.hsts {
            add_hsts(headers, value.clone());
        }
        if let Some(value) = &self.alt_svc {
            headers
                .entry(header::ALT_SVC)
                .or_insert_with(|| value.clone());
        }
    }

    async fn handle(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        info: &ConnInfo,
    ) -> Response<ProxyBody> {
        info.activity.request_started();
        let grpc = grpc::is_grpc(req.headers());
        let log = AccessLog {
            peer: info.peer,
            // Both are cheap clones (a known method is a tag; a path shares the URI's bytes):
            // nothing is formatted unless the access log is enabled.
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            proto: info.proto,
            status: 0,
            bytes: 0,
            grpc,
            grpc_status: None,
            finished: false,
            start: Instant::now(),
            activity: info.activity.clone(),
            metrics: self.metrics.clone(),
        };

        let host = match self.admit(&req, info) {
            Ok(host) => host,
            Err(reason) => return local(StatusCode::BAD_REQUEST, reason, log),
        };
        if info.h2 && self.h2_fast(&req, grpc) {
            let head_by = log.start + self.config.backend_timeout;
            match self.exchange_h2_fast(&req, info, &host, head_by).await {
                Some(Ok((parts, body))) => {
                    return respond(parts, Either::Right(Either::Right(body)), log)
                }
                Some(Err(kind)) => return self.backend_failed(kind, log),
                None => {}
            }
        }
        let Prepared {
            req,
            upgrading,
            route,
            deadline,
        } = match self.backend_request(req, info, host, grpc, log.start) {
            Ok(prepared) => prepared,
            Err(reason) => return local(StatusCode::BAD_REQUEST, reason, log),
        };
        // The rare and the large futures are boxed: hyper moves every stream's future (this one
        // inside it) a few times as it spawns it, so its size is paid on every request.
        if upgrading {
            return Box::pin(self.upgrade(req, info, log)).await;
        }
        let head_by = log.start + self.config.backend_timeout;
        let (head_by, late) = match deadline {
            Some(at) if at <= head_by => (at, Failure::Deadline),
            _ => (head_by, Failure::Backend(BackendError::Timeout)),
        };
        let resp = match route {
            Route::H2c => Box::pin(self.exchange_h2(req, info, head_by, late)).await,
            Route::Http1 => self.exchange_http1(req, info, head_by, late).await,
        };
        self.answer(resp, info, deadline, log)
    }

    /// The local refusals before anything is forwarded (ambiguous framing, a bad `Host`): the
    /// reason for a `400`, or the authority the backend request names.
    fn admit(
        &self,
        req: &Request<RequestBody>,
        info: &ConnInfo,
    ) -> Result<HeaderValue, &'static str> {
        if info.activity.take_ambiguous() {
            debug!(peer = %info.peer, "refused request with both Content-Length and Transfer-Encoding");
            self.metrics.refused(Refusal::Framing);
            return Err("both Content-Length and Transfer-Encoding");
        }
        if let Err(reason) = check_framing(req.headers()) {
            debug!(peer = %info.peer, reason, "refused ambiguous request");
            self.metrics.refused(Refusal::Framing);
            return Err(reason);
        }
        match request_host(req.version(), req.uri(), req.headers()) {
            Ok(Some(host)) => Ok(host),
            Ok(None) => HeaderValue::from_str(&self.backend_authority)
                .map_err(|_| "invalid backend address"),
            Err(reason) => {
                debug!(peer = %info.peer, reason, "refused request for its host");
                self.metrics.refused(Refusal::Host);
                Err(reason)
            }
        }
    }

    /// The backend's request ([`Proxy::rewrite`]), whether it is an allowed upgrade, its route,
    /// and the client's gRPC deadline; or the reason for a `400`.
    fn backend_request(
        &self,
        req: Request<RequestBody>,
        info: &ConnInfo,
        host: HeaderValue,
        grpc: bool,
        start: Instant,
    ) -> Result<Prepared, &'static str> {
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
                .and_then(|d| start.checked_add(d))
        } else {
            None
        };
        let upgrading = upgrade.is_some();
        let route = if upgrading {
            Route::Http1
        } else {
            grpc::route(self.config.backend_protocol, grpc)
        };
        // HTTP/2 clients always take trailers; HTTP/1.1 ones when they say `TE: trailers`.
        let trailers = info.h2 || accepts_trailers(req.headers());
        let req = self.rewrite(req, info, host, upgrade, route, trailers)?;
        Ok(Prepared {
            req,
            upgrading,
            route,
            deadline,
        })
    }

    /// The client's response from the backend's (hop-by-hop headers dropped, gRPC trailers
    /// announced to HTTP/1.1 clients), or the sidecar's own answer to a failed exchange.
    fn answer(
        &self,
        resp: Result<Response<Incoming>, Failure>,
        info: &ConnInfo,
        deadline: Option<Instant>,
        log: AccessLog,
    ) -> Response<ProxyBody> {
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
        req: Request<RequestBody>,
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
                    warn!(backend = %self.backend_authority, error = %chain(&error), suppressed, "backend connect failed");
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
        req: Request<RequestBody>,
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
            debug!(peer = %info.peer, error = %chain(error), "request body failed");
            return Failure::ClientBody;
        }
        if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
            warn!(backend = %self.backend_authority, error = %chain(error), suppressed, over, "backend request failed");
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
        req: Request<RequestBody>,
        info: &ConnInfo,
        host: HeaderValue,
        upgrade: Option<HeaderValue>,
        route: Route,
        trailers: bool,
    ) -> Result<Request<RequestBody>, &'static str> {
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
        mut req: Request<RequestBody>,
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

/// The `Alt-Svc` value that announces HTTP/3 on `port` (of the host the client reached), for a
/// day: what Caddy and Cloudflare send.
fn alt_svc(port: u16) -> String {
    format!("h3=\":{port}\"; ma=86400")
}

/// A request made ready for the backend ([`Proxy::backend_request`]).
struct Prepared {
    req: Request<RequestBody>,
    /// An allowed upgrade: forwarded on a dedicated connection.
    upgrading: bool,
    route: Route,
    /// The client's gRPC deadline.
    deadline: Option<Instant>,
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

/// What the service needs to know about its connection.
struct ConnInfo {
    peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` names it, formatted once.
    client_ip: String,
    activity: Arc<Activity>,
    /// HTTP/2 or HTTP/3: streams on one connection, trailers always, no upgrades.
    h2: bool,
    proto: Protocol,
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
    /// HTTP/1.1 served by hyper: on shutdown, close only once the client was quiet this long
    /// ([`DRAIN_LINGER`]); `None` closes at once (HTTP/2's GOAWAY lets streams finish; the fast
    /// path lingers by itself).
    linger: Option<Duration>,
    shutdown: &'a CancellationToken,
    /// Cancelled when the connection must make room for a new one.
    evict: &'a CancellationToken,
    metrics: &'a Metrics,
    /// HTTP/2: the connection's streams, polled beside it ([`Streams`]).
    streams: Option<&'a Streams>,
}

/// hyper's executor for the streams of one HTTP/2 connection: each stream runs inside the
/// connection's own task, polled by [`drive`] right after the connection, instead of in a task
/// of its own (an aligned allocation, a trip through the scheduler and moves of the stream's
/// future per request). A connection's streams share its task as they share its socket; h2's
/// `max_concurrent_streams` bounds how many there are. They end with the connection (hyper's
/// connection ends once its streams have, or when the client is gone).
#[derive(Clone, Default)]
struct Streams {
    set: Arc<std::sync::Mutex<StreamSet>>,
}

type StreamSet =
    futures_util::stream::FuturesUnordered<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

impl<F> hyper::rt::Executor<F> for Streams
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::pin(stream));
    }
}

impl Streams {
    /// Polls every stream that can make progress; never completes (an empty set waits for the
    /// connection to add one).
    fn poll_streams(&self, cx: &mut Context<'_>) -> Poll<()> {
        use futures_util::StreamExt;
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        while let Poll::Ready(Some(())) = set.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

/// Drives a connection (hyper's, or the HTTP/1.1 fast path's) to its end, and ends it: gracefully
/// when it idles out, on shutdown and when it must make room; hard when a request head is too
/// slow, when the client cancels requests faster than its budget, and when, once closing, it has
/// had nothing in flight for the goodbye deadline (a client that ignores HTTP/2's GOAWAY and
/// PING). Control frames alone never keep a connection open: only requests count as activity.
/// `Some` with the connection's own result when it ended by itself, `None` when the watchdog
/// ended it.
async fn drive<C, F, T>(mut conn: Pin<&mut C>, w: Watch<'_>, graceful: F) -> Option<T>
where
    C: std::future::Future<Output = T>,
    F: Fn(Pin<&mut C>),
{
    let goodbye = GOODBYE_MAX.min(w.idle);
    let shortest = w.head.map_or(w.idle, |h| h.min(w.idle)).min(goodbye);
    let mut tick = tokio::time::interval(tick_period(shortest));
    let mut closing: Option<Instant> = None;
    // Draining with a linger: when to look again whether the client is quiet.
    let mut lingering: Option<Pin<Box<Sleep>>> = None;
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
            // The connection first, then its streams: a stream the connection just received
            // is polled in the same pass.
            biased;
            res = conn.as_mut() => return Some(res),
            () = std::future::poll_fn(|cx| w.streams.map_or(Poll::Pending, |s| s.poll_streams(cx))), if w.streams.is_some() => {}
            () = &mut cancelled, if closing.is_none() && lingering.is_none() => {
                lingering = w.linger.map(|l| Box::pin(sleep_until(w.activity.last_io() + l)));
                if lingering.is_none() {
                    close(conn.as_mut(), &mut closing);
                }
            }
            () = lingered(&mut lingering), if closing.is_none() && lingering.is_some() => {
                match (quiet_for(w), lingering.as_mut()) {
                    (Some(at), Some(timer)) => timer.as_mut().reset(at),
                    _ => close(conn.as_mut(), &mut closing),
                }
            }
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
                if watch_tick(w, &mut closing, goodbye, |c| close(conn.as_mut(), c)) {
                    return None;
                }
            }
        }
    }
}

/// One look of the watchdog: closes an idle connection gracefully; `true` when the connection
/// must be dropped now (a request head too slow, or a goodbye the client does not finish).
fn watch_tick(
    w: Watch<'_>,
    closing: &mut Option<Instant>,
    goodbye: Duration,
    mut close: impl FnMut(&mut Option<Instant>),
) -> bool {
    match w.activity.verdict(w.idle, w.head) {
        Verdict::Active => {}
        Verdict::Idle => {
            if closing.is_none() {
                debug!("closing idle connection");
            }
            close(closing);
        }
        Verdict::HeadTimeout => {
            debug!("request head not received in time, closing");
            return true;
        }
    }
    if let (Some(since), Some(quiet)) = (*closing, w.activity.quiet_since()) {
        if Instant::now() >= since.max(quiet) + goodbye {
            w.metrics.refused(Refusal::CloseDeadline);
            debug!("client did not finish closing in time, closing hard");
            return true;
        }
    }
    false
}

/// While draining with a linger: `None` once the connection has nothing in flight and its client
/// has been quiet for the linger (time to close), else when to look again.
fn quiet_for(w: Watch<'_>) -> Option<Instant> {
    let linger = w.linger.unwrap_or_default();
    let until = w.activity.last_io() + linger;
    let now = Instant::now();
    let idle = !w.activity.busy() && w.activity.quiet_since().is_some();
    if idle && now >= until {
        return None;
    }
    Some(if until > now { until } else { now + linger })
}

/// Completes when the linger timer does; never without one.
async fn lingered(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A backend exchange that, when the client cancels its request (hyper drops the service
/// future), still runs to its response in the background and drains a small body, so the
/// backend connection goes back to the pool instead of being closed and re-opened by the next
/// request. Bounded by [`ORPHANS_MAX`], the exchange's deadline, [`DRAIN_MAX_TIME`] and
/// [`DRAIN_MAX_BYTES`]. Both paths use it: hyper-util's client's exchanges and the HTTP/2 fast
/// path's.
struct Exchange<F: Orphanable> {
    future: Option<Pin<Box<F>>>,
    deadline: Instant,
}

/// A response an orphaned [`Exchange`] got: what reading its body to the end means.
pub(super) trait Drain: Send + 'static {
    fn drain(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Drain for Response<Incoming> {
    fn drain(self) -> impl std::future::Future<Output = ()> + Send {
        drain(self.into_body())
    }
}

/// An exchange that can finish in the background: it ends in a response to drain, or an error.
trait Orphanable: std::future::Future<Output: Send> + Send + 'static {
    fn settle(output: Self::Output) -> impl std::future::Future<Output = ()> + Send;
}

impl<F, T, E> Orphanable for F
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Drain,
    E: Send + 'static,
{
    async fn settle(output: Result<T, E>) {
        if let Ok(resp) = output {
            resp.drain().await;
        }
    }
}

impl<F: Orphanable> Exchange<F> {
    fn new(future: F, timeout: Duration) -> Self {
        Self {
            future: Some(Box::pin(future)),
            deadline: Instant::now() + timeout,
        }
    }
}

impl<F: Orphanable> std::future::Future for Exchange<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending;
        };
        let res = future.as_mut().poll(cx);
        if res.is_ready() {
            self.future = None;
        }
        res
    }
}

impl<F: Orphanable> Drop for Exchange<F> {
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
            if let Ok(output) = tokio::time::timeout_at(deadline, future).await {
                F::settle(output).await;
            }
            ORPHANS.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads a body nobody wants to its end, if it is small and quick, so its connection is reused.
pub(super) async fn drain<B>(body: B)
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
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
            debug!(%peer, error = %chain(&error), "connection error");
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

/// Makes `resp` the connection's last (HTTP/1.1, while draining): `Connection: close`, which
/// hyper honours by closing once it is sent. Not on a `101`: that connection goes on upgraded.
fn last_response<B>(resp: &mut Response<B>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
    respond(
        parts,
        Either::Right(Either::Left(Full::new(Bytes::from(body)))),
        log,
    )
}

/// The sidecar's own gRPC answer: a trailers-only response with `grpc-status` and
/// `grpc-message`.
fn grpc_local(code: u32, message: &'static str, log: AccessLog) -> Response<ProxyBody> {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.headers = grpc::failure_headers(code, message);
    respond(
        parts,
        Either::Right(Either::Left(Full::new(Bytes::new()))),
        log,
    )
}

/// The access-log record of one request, written when its response body is done (or dropped,
/// when the client goes away), so the byte count and duration are the real ones.
struct AccessLog {
    peer: SocketAddr,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    proto: Protocol,
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
        self.metrics.response(self.status, self.proto);
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
                proto: self.proto.as_str(),
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
pub(crate) struct Logged<B> {
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
