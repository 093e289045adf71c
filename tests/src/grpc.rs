//! gRPC for the tests, with real tonic on both ends and no protoc: messages are raw
//! bytes ([`RawCodec`]), so the test service needs no generated code.
//!
//! [`GrpcBackend`] is the test service `test.Echo`, served as h2c (prior knowledge) by hyper
//! directly, without tonic's `transport::Server` and its `grpc-timeout` layer, so `Sleep` really
//! ignores the client's deadline and only a proxy in between can enforce it. Its methods:
//! - `Unary`: answers the request bytes; request metadata `x-echo` comes back as response metadata;
//! - `ServerStream`: request = count N (u32 BE) + payload; answers N copies of the payload;
//! - `ClientStream`: answers the total length (u64 BE) of the messages received;
//! - `Bidi`: echoes each message as it arrives;
//! - `Sleep`: request = milliseconds (u64 BE); sleeps that long whatever the deadline, then answers;
//! - `Fail`: request = code byte + message; answers that status at once (a trailers-only response),
//!   with request metadata `x-echo` copied into the status's metadata;
//! - `FailAfter`: server-streaming: one message, then the status `Fail` would answer, which then
//!   travels in real HTTP/2 trailers after the data.
//!
//! [`GrpcClient`] is tonic's client (`tonic::client::Grpc`) over a `Channel` that connects with
//! TLS to the sidecar (ALPN `h2`, required as real gRPC clients require it), or over h2c straight
//! to a backend for comparisons. [`GrpcClient::connect_no_client_deadline`] uses hyper's HTTP/2
//! connection instead of a `Channel`, because a `Channel` enforces `grpc-timeout` on its own side
//! and reports its expiry as `Cancelled` (see its docs).
//!
//! [`HttpTrailerBackend`] is a plain HTTP backend (HTTP/1.1 and h2c, or h2c only) that echoes the
//! request body and trailers, for the HTTP-level trailer tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::stream::{self, BoxStream, StreamExt};
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tower::util::BoxCloneService;
use tower::ServiceExt;

use crate::client::{self, Trust};
use crate::wait::{within, STEP};

/// Error type of the client transports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client transport's error: a concrete type (not a `BoxError`), so the futures of calls are
/// `Send` for every lifetime and calls can be spawned.
#[derive(Debug)]
pub struct TransportError(BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Largest message either end accepts or sends: room for the 4 MiB tests (tonic's default
/// decoding limit is exactly 4 MiB, which a 4 MiB payload plus nothing else would just hit).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The service's path prefix; a method's path is `/test.Echo/<Name>`.
pub const SERVICE: &str = "test.Echo";

/// A gRPC codec whose messages are the raw bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The path of method `name` of [`SERVICE`].
pub fn path(name: &str) -> http::uri::PathAndQuery {
    format!("/{SERVICE}/{name}")
        .parse()
        .expect("valid gRPC method path")
}

/// A `ServerStream` request: `count` messages of `payload`.
pub fn server_stream_request(count: u32, payload: &[u8]) -> Bytes {
    let mut buf = count.to_be_bytes().to_vec();
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// A `Fail` / `FailAfter` request: answer status `code` with `message`.
pub fn fail_request(code: Code, message: &str) -> Bytes {
    let mut buf = vec![code as i32 as u8];
    buf.extend_from_slice(message.as_bytes());
    Bytes::from(buf)
}

/// The test gRPC service on `127.0.0.1:0`, h2c only. Stops accepting when dropped.
pub struct GrpcBackend {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl GrpcBackend {
    /// Binds and starts serving.
    pub async fn start() -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gRPC backend");
        let addr = listener.local_addr().expect("gRPC backend address");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        // Not the limit under test: the sidecar's own stream limit is.
                        .max_concurrent_streams(1000)
                        .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(route))
                        .await;
                });
            }
        });
        GrpcBackend { addr, accept }
    }

    /// The address to give the sidecar as `--backend`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn server() -> tonic::server::Grpc<RawCodec> {
    tonic::server::Grpc::new(RawCodec)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;

/// Dispatches one HTTP/2 request to its method of the test service (also what the demo app
/// answers gRPC requests with).
pub async fn route(
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let method = req
        .uri()
        .path()
        .strip_prefix(&format!("/{SERVICE}/"))
        .unwrap_or_default()
        .to_string();
    let resp = match method.as_str() {
        "Unary" => server().unary(tower::service_fn(unary), req).await,
        "ServerStream" => {
            server()
                .server_streaming(tower::service_fn(server_stream), req)
                .await
        }
        "ClientStream" => {
            server()
                .client_streaming(tower::service_fn(client_stream), req)
                .await
        }
        "Bidi" => server().streaming(tower::service_fn(bidi), req).await,
        "Sleep" => server().unary(tower::service_fn(sleep), req).await,
        "Fail" => server().unary(tower::service_fn(fail), req).await,
        "FailAfter" => {
            server()
                .server_streaming(tower::service_fn(fail_after), req)
                .await
        }
        "StreamThenStall" => {
            server()
                .server_streaming(tower::service_fn(stream_then_stall), req)
                .await
        }
        _ => Status::unimplemented(format!("no method {method:?}")).into_http(),
    };
    Ok(resp)
}

/// Copies request metadata `x-echo` into `into`.
fn copy_echo(from: &MetadataMap, into: &mut MetadataMap) {
    if let Some(v) = from.get("x-echo") {
        into.insert("x-echo", v.clone());
    }
}

async fn unary(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let (meta, _, body) = req.into_parts();
    let mut resp = Response::new(body);
    copy_echo(&meta, resp.metadata_mut());
    Ok(resp)
}

async fn server_stream(req: Request<Bytes>) -> Result<Response<ResponseStream>, Status> {
    let mut body = req.into_inner();
    if body.len() < 4 {
        return Err(Status::invalid_argument("ServerStream wants a u32 count"));
    }
    let count = body.get_u32();
    let items = (0..count).map(move |_| Ok(body.clone()));
    Ok(Response::new(stream::iter(items).boxed()))
}

async fn client_stream(req: Request<Streaming<Bytes>>) -> Result<Response<Bytes>, Status> {
    let mut incoming = req.into_inner();
    let mut total = 0u64;
    while let Some(msg) = incoming.message().await? {
        total += msg.len() as u64;
    }
    Ok(Response::new(Bytes::copy_from_slice(&total.to_be_bytes())))
}

async fn bidi(req: Request<Streaming<Bytes>>) -> Result<Response<ResponseStream>, Status> {
    Ok(Response::new(req.into_inner().boxed()))
}

async fn sleep(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let mut body = req.into_inner();
    if body.len() < 8 {
        return Err(Status::invalid_argument("Sleep wants u64 milliseconds"));
    }
    let millis = body.get_u64();
    // The deadline (`grpc-timeout`) is ignored on purpose: only a proxy can enforce it here.
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(Response::new(Bytes::from_static(b"slept")))
}

/// The status a `Fail` request asks for, with `x-echo` copied into its metadata.
fn requested_status(req: Request<Bytes>) -> Status {
    let (meta, _, body) = req.into_parts();
    let Some((&code, message)) = body.split_first() else {
        return Status::invalid_argument("Fail wants a code byte");
    };
    let mut trailers = MetadataMap::new();
    copy_echo(&meta, &mut trailers);
    Status::with_metadata(
        Code::from(i32::from(code)),
        String::from_utf8_lossy(message),
        trailers,
    )
}

async fn fail(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    Err(requested_status(req))
}

async fn fail_after(req: Request<Bytes>) -> Result<Response<ResponseStream>, Status> {
    let status = requested_status(req);
    let items = vec![Ok(Bytes::from_static(b"before the failure")), Err(status)];
    Ok(Response::new(stream::iter(items).boxed()))
}

/// One message, then nothing, ever: a stream that ignores its deadline after its head.
async fn stream_then_stall(_req: Request<Bytes>) -> Result<Response<ResponseStream>, Status> {
    let first = stream::iter([Ok(Bytes::from_static(b"first"))]);
    Ok(Response::new(first.chain(stream::pending()).boxed()))
}

/// What a [`GrpcClient`] sends requests through.
type Transport = BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A gRPC client of `test.Echo` (tonic's `client::Grpc` with [`RawCodec`]). Cheap to clone; the
/// clones share the one connection.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Transport>,
    connects: Arc<AtomicUsize>,
}

/// A TLS client config for gRPC: trusts `trust` and offers only `h2`.
pub fn tls_config(trust: Trust) -> Arc<ClientConfig> {
    client::config(trust, &["h2"])
}

/// TLS to `addr` with SNI `localhost`, failing unless ALPN chose `h2`: a gRPC client does not
/// speak HTTP/2 on a connection that did not agree to it (grpc-go refuses the same way).
async fn tls_h2(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tls = client::try_tls_connect(addr, "localhost", config).await?;
    if client::alpn(&tls).as_deref() != Some("h2") {
        return Err(std::io::Error::other(format!(
            "the server at {addr} did not negotiate h2 with ALPN (got {:?})",
            client::alpn(&tls)
        )));
    }
    Ok(TokioIo::new(tls))
}

impl GrpcClient {
    fn new(transport: Transport, origin: Uri, connects: Arc<AtomicUsize>) -> GrpcClient {
        let grpc = tonic::client::Grpc::with_origin(transport, origin)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        GrpcClient { grpc, connects }
    }

    /// How many connections this client (and its clones) opened so far.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// A `Channel` over TLS to the sidecar at `addr` (one connection); the error if the channel
    /// could not connect.
    pub async fn try_connect(
        addr: SocketAddr,
        trust: Trust,
    ) -> Result<GrpcClient, tonic::transport::Error> {
        let origin: Uri = format!("https://localhost:{}", addr.port())
            .parse()
            .expect("origin URI");
        let config = tls_config(trust);
        let connects = Arc::new(AtomicUsize::new(0));
        let counter = connects.clone();
        let connector = tower::service_fn(move |_: Uri| {
            counter.fetch_add(1, Ordering::SeqCst);
            tls_h2(addr, config.clone())
        });
        let channel = Endpoint::from(origin.clone())
            .connect_with_connector(connector)
            .await?;
        Ok(Self::over_channel(channel, origin, connects))
    }

    /// Like [`GrpcClient::try_connect`], panicking if it fails.
    pub async fn connect(addr: SocketAddr, trust: Trust) -> GrpcClient {
        within(
            STEP,
            "gRPC channel to the sidecar",
            Self::try_connect(addr, trust),
        )
        .await
        .unwrap_or_else(|e| panic!("gRPC channel to {addr}: {e:?}"))
    }

    /// A `Channel` speaking h2c (prior knowledge) straight to a backend.
    pub async fn connect_h2c(addr: SocketAddr) -> GrpcClient {
        let origin: Uri = format!("http://{addr}").parse().expect("origin URI");
        let channel = within(
            STEP,
            "h2c gRPC channel to the backend",
            Endpoint::from(origin.clone()).connect(),
        )
        .await
        .unwrap_or_else(|e| panic!("h2c gRPC channel to {addr}: {e:?}"));
        Self::over_channel(channel, origin, Arc::new(AtomicUsize::new(1)))
    }

    fn over_channel(channel: Channel, origin: Uri, connects: Arc<AtomicUsize>) -> GrpcClient {
        let transport = BoxCloneService::new(channel.map_err(|e| TransportError(e.into())));
        Self::new(transport, origin, connects)
    }

    /// HTTP/2 over TLS to the sidecar with hyper's client connection instead of a `Channel`:
    /// the same gRPC client, but the `grpc-timeout` a request carries is left to the server side
    /// (a `Channel` starts its own timer for it and reports `Cancelled` when that fires, racing
    /// the proxy's `DeadlineExceeded`).
    pub async fn connect_no_client_deadline(addr: SocketAddr, trust: Trust) -> GrpcClient {
        let io = within(STEP, "TLS to the sidecar", tls_h2(addr, tls_config(trust)))
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        let (sender, conn) = within(
            STEP,
            "HTTP/2 handshake with the sidecar",
            hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
                TokioExecutor::new(),
                io,
            ),
        )
        .await
        .expect("HTTP/2 handshake with the sidecar");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let mut sender = sender.clone();
            async move {
                let error = |e: hyper::Error| TransportError(e.into());
                sender.ready().await.map_err(error)?;
                let resp = sender.send_request(req).await.map_err(error)?;
                Ok(resp.map(tonic::body::Body::new))
            }
        });
        let origin = format!("https://localhost:{}", addr.port())
            .parse()
            .expect("origin URI");
        Self::new(
            BoxCloneService::new(svc),
            origin,
            Arc::new(AtomicUsize::new(1)),
        )
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("client transport not ready: {e}")))
    }

    /// A unary call of method `name`.
    pub async fn unary(
        &mut self,
        name: &str,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        self.ready().await?;
        self.grpc.unary(req, path(name), RawCodec).await
    }

    /// A server-streaming call of method `name`.
    pub async fn server_streaming(
        &mut self,
        name: &str,
        req: Request<Bytes>,
    ) -> Result<Response<Streaming<Bytes>>, Status> {
        self.ready().await?;
        self.grpc.server_streaming(req, path(name), RawCodec).await
    }

    /// A client-streaming call of method `name`.
    pub async fn client_streaming<S>(
        &mut self,
        name: &str,
        messages: S,
    ) -> Result<Response<Bytes>, Status>
    where
        S: futures_util::Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .client_streaming(Request::new(messages), path(name), RawCodec)
            .await
    }

    /// A bidirectional-streaming call of method `name`.
    pub async fn streaming<S>(
        &mut self,
        name: &str,
        messages: S,
    ) -> Result<Response<Streaming<Bytes>>, Status>
    where
        S: futures_util::Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .streaming(Request::new(messages), path(name), RawCodec)
            .await
    }

    /// `Unary` with `payload`: the bytes answered.
    pub async fn echo(&mut self, payload: impl Into<Bytes>) -> Result<Bytes, Status> {
        Ok(self
            .unary("Unary", Request::new(payload.into()))
            .await?
            .into_inner())
    }

    /// `Sleep` for `millis` with deadline `timeout` (sent as `grpc-timeout`).
    pub async fn sleep(&mut self, millis: u64, timeout: Duration) -> Result<Bytes, Status> {
        let mut req = Request::new(Bytes::copy_from_slice(&millis.to_be_bytes()));
        req.set_timeout(timeout);
        Ok(self.unary("Sleep", req).await?.into_inner())
    }

    /// `StreamThenStall` with deadline `timeout`: the stream's first message has come when
    /// this returns.
    pub async fn stream_then_stall(
        &mut self,
        timeout: Duration,
    ) -> Result<Streaming<Bytes>, Status> {
        let mut req = Request::new(Bytes::new());
        req.set_timeout(timeout);
        Ok(self
            .server_streaming("StreamThenStall", req)
            .await?
            .into_inner())
    }

    /// `Fail` asking for status `code` with `message`; the status the client got (a success
    /// becomes `Code::Ok`).
    pub async fn fail(&mut self, code: Code, message: &str) -> Status {
        match self
            .unary("Fail", Request::new(fail_request(code, message)))
            .await
        {
            Ok(_) => Status::ok("the call succeeded"),
            Err(status) => status,
        }
    }
}

/// Every message of `stream` until its end, or the status that ended it.
pub async fn collect(stream: &mut Streaming<Bytes>) -> Result<Vec<Bytes>, Status> {
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.push(msg);
    }
    Ok(out)
}

/// Which protocols an [`HttpTrailerBackend`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocols {
    /// HTTP/1.1 and h2c (prior knowledge), told apart by the connection preface.
    Http1AndH2c,
    /// h2c (prior knowledge) only: an HTTP/1.1 request is a protocol error.
    H2cOnly,
}

/// A plain HTTP backend on `127.0.0.1:0` that answers every request with 200, the request body,
/// header `x-request-version` (the request's HTTP version, `HTTP/1.1` or `HTTP/2.0`) and, as
/// response trailers, the request's trailers. Its response declares them with `Trailer:` (the
/// request's own `Trailer` header, else `x-checksum`), as HTTP/1.1 needs to send them at all.
pub struct HttpTrailerBackend {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

type TrailerBody = BoxBody<Bytes, Infallible>;

impl HttpTrailerBackend {
    /// Binds and starts serving `protocols`.
    pub async fn start(protocols: HttpProtocols) -> HttpTrailerBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the HTTP trailer backend");
        let addr = listener.local_addr().expect("HTTP trailer backend address");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let io = TokioIo::new(tcp);
                let svc = hyper::service::service_fn(echo_trailers);
                tokio::spawn(async move {
                    match protocols {
                        HttpProtocols::H2cOnly => {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        }
                        HttpProtocols::Http1AndH2c => {
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(io, svc)
                                    .await;
                        }
                    }
                });
            }
        });
        HttpTrailerBackend { addr, accept }
    }

    /// The address to give the sidecar as `--backend`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpTrailerBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn echo_trailers(
    req: http::Request<Incoming>,
) -> Result<http::Response<TrailerBody>, Infallible> {
    let version = format!("{:?}", req.version());
    let declared = req
        .headers()
        .get(http::header::TRAILER)
        .cloned()
        .unwrap_or(HeaderValue::from_static("x-checksum"));
    let (data, trailers) = match req.into_body().collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        }
        Err(e) => (Bytes::from(format!("reading the request body: {e}")), None),
    };
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(data))];
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let body = BodyExt::boxed(StreamBody::new(stream::iter(frames)));
    let resp = http::Response::builder()
        .header("x-request-version", version)
        .header(http::header::TRAILER, declared)
        .body(body)
        .expect("trailer echo response");
    Ok(resp)
}

/// The trailers of a response body (after reading all of it), with the body.
pub async fn body_and_trailers(body: Incoming) -> Result<(Bytes, Option<HeaderMap>), hyper::Error> {
    let collected = within(STEP, "response body and trailers", body.collect()).await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// A request body of `data` followed by `trailers`, for the hyper clients.
pub fn body_with_trailers(data: &'static [u8], trailers: HeaderMap) -> client::Body {
    let frames: Vec<Result<Frame<Bytes>, client::BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ];
    BodyExt::boxed(StreamBody::new(stream::iter(frames)))
}
