//! HTTP mode: one TLS connection served with hyper (HTTP/2 or HTTP/1.1, as ALPN chose), every
//! request forwarded to the backend over pooled HTTP/1.1 keep-alive connections, bodies streamed
//! both ways, upgrades (WebSocket) relayed as raw bytes.
//!
//! The request rewriting rules (hop-by-hop headers, forwarding headers, smuggling checks) are
//! pure functions at the bottom of this file, with unit tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::activity::{tick_period, Activity, Tracked, Verdict};
use crate::config::Config;
use crate::metrics::{BackendError, Metrics};
use crate::mtls::ClientIdentity;

/// Most request headers accepted (hyper's limit; more gets `431`).
const MAX_HEADERS: usize = 100;
/// Largest request head accepted, in bytes (more gets `431`). Matches common proxy limits
/// (nginx's large_client_header_buffers is 4 x 8 KiB; Go's default is 1 MiB): generous for
/// cookies, small enough that a flood of heads costs little memory.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Idle pooled backend connections are closed after this long; the backend's own keep-alive
/// timeout is often shorter, and a stale pooled connection costs a retry.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled backend connections kept at most: enough for bursts, bounded so an idle sidecar
/// does not hold hundreds of sockets on the app.
const POOL_MAX_IDLE: usize = 256;

/// Headers that describe one hop and never cross a proxy (RFC 9110 section 7.6.1), plus the
/// legacy ones proxies traditionally drop too.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

type BackendClient = Client<HttpConnector, Incoming>;

/// The response body the sidecar sends: the backend's streamed body or a short local one.
pub type ProxyBody = Logged<Either<Incoming, Full<Bytes>>>;

/// Shared state of HTTP mode, one per sidecar.
pub struct Proxy {
    client: BackendClient,
    backend_authority: String,
    listen_port: u16,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    /// `Strict-Transport-Security` for responses that lack it (`--hsts`).
    hsts: Option<HeaderValue>,
}

impl Proxy {
    pub fn new(
        config: Arc<Config>,
        listen_port: u16,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(connector);
        let hsts = config
            .hsts
            .and_then(|h| HeaderValue::from_str(&h.header_value()).ok());
        Arc::new(Self {
            client,
            backend_authority: config.backend.authority(),
            listen_port,
            config,
            metrics,
            tracker,
            hsts,
        })
    }

    /// Serves one TLS connection until the client leaves, it idles out, or shutdown.
    pub async fn serve<S>(
        self: Arc<Self>,
        tls: S,
        peer: SocketAddr,
        h2: bool,
        client: Option<ClientIdentity>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = if h2 {
            Activity::new()
        } else {
            Activity::new_http1()
        };
        let io = TokioIo::new(Tracked::new(tls, activity.clone()));
        let conn_info = Arc::new(ConnInfo {
            peer,
            activity: activity.clone(),
            h2,
            client,
        });
        let proxy = self.clone();
        let service = service_fn(move |req| {
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
        });
        let idle = self.config.idle_timeout;
        if h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let result = drive(conn.as_mut(), &activity, idle, None, &shutdown, |c| {
                c.graceful_shutdown()
            })
            .await;
            log_conn_end(peer, result);
        } else {
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
            let head = Some(self.config.header_read_timeout);
            let result = drive(conn.as_mut(), &activity, idle, head, &shutdown, |c| {
                c.graceful_shutdown()
            })
            .await;
            log_conn_end(peer, result);
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        info: Arc<ConnInfo>,
    ) -> Response<ProxyBody> {
        info.activity.request_started();
        let log = AccessLog {
            peer: info.peer,
            // Both are cheap clones (a known method is a tag; a path shares the URI's bytes):
            // nothing is formatted unless the access log is enabled.
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            status: 0,
            bytes: 0,
            start: Instant::now(),
            activity: info.activity.clone(),
            metrics: self.metrics.clone(),
        };

        if info.activity.take_ambiguous() {
            debug!(peer = %info.peer, "refused request with both Content-Length and Transfer-Encoding");
            return local(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
                log,
            );
        }
        if let Err(reason) = check_framing(req.headers()) {
            debug!(peer = %info.peer, reason, "refused ambiguous request");
            return local(StatusCode::BAD_REQUEST, reason, log);
        }
        let upgrade = !info.h2 && is_upgrade(req.headers());
        let req = match self.rewrite(req, &info, upgrade) {
            Ok(req) => req,
            Err(reason) => return local(StatusCode::BAD_REQUEST, reason, log),
        };
        if upgrade {
            return self.upgrade(req, log).await;
        }
        match tokio::time::timeout(self.config.backend_timeout, self.client.request(req)).await {
            Err(_) => {
                self.backend_failed(BackendError::Timeout, "backend did not answer in time", log)
            }
            Ok(Err(error)) if error.is_connect() => {
                warn!(backend = %self.backend_authority, error = %error_chain(&error), "backend connect failed");
                self.backend_failed(BackendError::Connect, "backend unreachable", log)
            }
            Ok(Err(error)) => {
                warn!(backend = %self.backend_authority, error = %error_chain(&error), "backend request failed");
                self.backend_failed(BackendError::Protocol, "backend request failed", log)
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                respond(parts, Either::Left(body), log)
            }
        }
    }

    /// Turns the client's request into the backend's: origin on the backend, HTTP/1.1, Host
    /// preserved, hop-by-hop headers dropped, forwarding headers set.
    fn rewrite(
        &self,
        req: Request<Incoming>,
        info: &ConnInfo,
        upgrade: bool,
    ) -> Result<Request<Incoming>, &'static str> {
        let (mut parts, body) = req.into_parts();
        let host = match parts.headers.get(header::HOST) {
            Some(h) => h.clone(),
            None => match parts.uri.authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).map_err(|_| "invalid :authority")?,
                None if parts.version == Version::HTTP_11 => return Err("missing Host header"),
                None => HeaderValue::from_str(&self.backend_authority)
                    .map_err(|_| "invalid backend address")?,
            },
        };
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if upgrade {
            if let Some(value) = upgrade_value {
                parts.headers.insert(header::UPGRADE, value);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
        }
        set_forwarded(&mut parts.headers, info.peer, &host, self.listen_port);
        set_client_identity(&mut parts.headers, info.client.as_ref());
        parts.headers.insert(header::HOST, host);

        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = if upgrade {
            // Sent on a dedicated connection: origin form.
            Uri::try_from(path)
        } else {
            Uri::try_from(format!("http://{}{}", self.backend_authority, path))
        };
        parts.uri = uri.map_err(|_| "invalid request target")?;
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }

    /// Forwards an upgrade request on a dedicated backend connection; on `101` relays raw bytes
    /// between the two upgraded connections.
    async fn upgrade(&self, mut req: Request<Incoming>, log: AccessLog) -> Response<ProxyBody> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stream =
            match crate::tcp::connect(&self.config.backend, self.config.connect_timeout).await {
                Ok(s) => s,
                Err(error) => {
                    warn!(backend = %self.backend_authority, %error, "backend connect failed");
                    return self.backend_failed(BackendError::Connect, "backend unreachable", log);
                }
            };
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
        {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "backend handshake failed");
                return self.backend_failed(BackendError::Protocol, "backend request failed", log);
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
                Err(_) => {
                    return self.backend_failed(
                        BackendError::Timeout,
                        "backend did not answer in time",
                        log,
                    )
                }
                Ok(Err(error)) => {
                    warn!(%error, "backend upgrade request failed");
                    return self.backend_failed(
                        BackendError::Protocol,
                        "backend request failed",
                        log,
                    );
                }
                Ok(Ok(resp)) => resp,
            };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let idle = self.config.idle_timeout;
            let metrics = self.metrics.clone();
            self.tracker.spawn(async move {
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
            return respond(parts, Either::Left(body), log);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        respond(parts, Either::Left(body), log)
    }

    fn backend_failed(
        &self,
        kind: BackendError,
        message: &'static str,
        log: AccessLog,
    ) -> Response<ProxyBody> {
        self.metrics.backend_error(kind);
        let status = match kind {
            BackendError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            BackendError::Connect | BackendError::Protocol => StatusCode::BAD_GATEWAY,
        };
        local(status, message, log)
    }
}

/// What the service needs to know about its connection.
struct ConnInfo {
    peer: SocketAddr,
    activity: Arc<Activity>,
    h2: bool,
    /// The verified client certificate's identity (mutual TLS).
    client: Option<ClientIdentity>,
}

/// A hyper connection future that can be asked to finish gracefully.
async fn drive<C, F>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    idle: Duration,
    head: Option<Duration>,
    shutdown: &CancellationToken,
    graceful: F,
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
    F: Fn(Pin<&mut C>),
{
    let mut tick = tokio::time::interval(tick_period(head.map_or(idle, |h| h.min(idle))));
    let mut closing = false;
    // Created once: a fresh `cancelled()` per wake-up would re-register with the token each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            res = conn.as_mut() => return res,
            () = &mut cancelled, if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
            _ = tick.tick() => match activity.verdict(idle, head) {
                Verdict::Active => {}
                Verdict::Idle if !closing => {
                    debug!("closing idle connection");
                    closing = true;
                    graceful(conn.as_mut());
                }
                Verdict::Idle => {}
                Verdict::HeadTimeout => {
                    debug!("request head not received in time, closing");
                    return Ok(());
                }
            },
        }
    }
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

/// The access-log record of one request, written when its response body is done (or dropped,
/// when the client goes away), so the byte count and duration are the real ones.
struct AccessLog {
    peer: SocketAddr,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    status: u16,
    bytes: u64,
    start: Instant,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.metrics.response(self.status);
        info!(
            client = %self.peer,
            method = %self.method,
            path = %self.path.as_ref().map_or("/", |p| p.as_str()),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.start.elapsed().as_millis() as u64,
            "request"
        );
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
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let (Some(data), Some(log)) = (frame.data_ref(), self.log.as_mut()) {
                log.bytes += data.len() as u64;
            }
        }
        if let Poll::Ready(None) = &res {
            // Finished: log now rather than whenever hyper drops the body.
            self.log.take();
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

/// Removes any client-certificate headers the client sent (always: they cannot be trusted) and
/// sets them from the certificate the handshake verified, if any.
pub fn set_client_identity(headers: &mut HeaderMap, identity: Option<&ClientIdentity>) {
    for name in CLIENT_CERT_HEADERS {
        headers.remove(name);
    }
    let Some(id) = identity else { return };
    for (name, value) in
        CLIENT_CERT_HEADERS
            .into_iter()
            .zip([&id.subject, &id.san, &id.fingerprint])
    {
        if value.is_empty() {
            continue;
        }
        // Certificates may hold control characters; a header value may not.
        let clean: Vec<u8> = value
            .bytes()
            .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
            .collect();
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
