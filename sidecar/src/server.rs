//! The TLS listener: every connection taken from the shared accept loop ([`accept::Listener`]),
//! admitted through [`Admission`] (connection limit, per-address cap, handshake budget), TLS
//! handshakes under a timeout inside each connection's task, dispatch to the mode's handler
//! ([`crate::http`] or [`crate::tcp`]), and graceful shutdown (stop accepting, drain within the
//! grace period).
//!
//! Beside it, for the life of the process: [`orphan`] ends the sidecar once the container whose
//! network namespace it shares is gone, and [`memory`] gives the memory of closed connections
//! back to the system after load.

pub(crate) mod memory;
pub(crate) mod orphan;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{Config, Mode, ProxyProtocol};
use crate::connection::activity::Activity;
use crate::connection::admission::{Admission, Limits, Phase, Ticket};
use crate::connection::drain_cut;
use crate::http::h2pool::H2Pool;
use crate::http::h3;
use crate::http::Proxy;
use crate::metrics::Metrics;
use crate::tcp::proxy_protocol;
use crate::tls;
use crate::tls::acme_alpn::{self, Challenges};
use crate::tls::client_auth::ClientIdentity;
use shared::accept::{self, Accepted};

/// The backlog the kernel grants for a requested one: capped by net.core.somaxconn of this
/// network namespace (when readable).
pub(crate) fn effective_backlog(requested: u32) -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or(requested, |max| requested.min(max))
}

/// Everything a connection task needs; one per serving thread (its own backend pools).
struct Shared {
    config: Arc<Config>,
    /// The normal configuration: the sidecar chooses the cipher suite.
    tls: Arc<rustls::ServerConfig>,
    /// The same, following the client's order of cipher suites ([`tls::prefers_chacha`]).
    tls_client_order: Arc<rustls::ServerConfig>,
    /// TLS-ALPN-01 challenges answered on this listener (`--acme-tls-alpn-dir`).
    challenges: Option<Challenges>,
    metrics: Arc<Metrics>,
    proxy: Option<Arc<Proxy>>,
}

impl Shared {
    fn new(
        config: &Arc<Config>,
        tls: &Arc<rustls::ServerConfig>,
        metrics: &Arc<Metrics>,
        listen_port: u16,
        tracker: &TaskTracker,
        h2: &Option<Arc<H2Pool>>,
    ) -> Arc<Self> {
        let proxy = match config.mode {
            Mode::Http => Some(Proxy::new(
                config.clone(),
                listen_port,
                metrics.clone(),
                tracker.clone(),
                h2.clone(),
                // The idle-connection bound is the sidecar's, split over its threads.
                crate::http::POOL_MAX_IDLE.div_ceil(config.workers.max(1)),
            )),
            Mode::Tcp => None,
        };
        Arc::new(Self {
            config: config.clone(),
            tls: tls.clone(),
            tls_client_order: tls::following_client_order(tls),
            challenges: config.acme_tls_alpn_dir.clone().map(Challenges::new),
            metrics: metrics.clone(),
            proxy,
        })
    }
}

/// Accepts TLS connections on `listener` until `shutdown` is cancelled, then drains for up to
/// the configured grace period.
///
/// With `--workers N` above 1 (the default: one per CPU), N threads each run their own
/// single-threaded event loop and accept from the same listening socket (whichever is free
/// takes the next connection); a connection, its requests and its backend connections then
/// stay on that thread: no work stealing, no cross-thread wake-ups, no shared pool lock. The
/// limits (`--max-connections` and the rest) are shared by all of them.
pub(crate) async fn serve(
    listener: TcpListener,
    quic: Option<std::net::UdpSocket>,
    config: Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let listen_port = local.map_or(config.listen.port(), |a| a.port());
    let backlog = effective_backlog(config.listen_backlog);
    if backlog < config.listen_backlog {
        warn!(
            requested = config.listen_backlog,
            granted = backlog,
            "listen backlog capped by net.core.somaxconn"
        );
    }
    let workers = config.workers.max(1);
    let serving = Serving::new(config, tls, metrics, listen_port, shutdown);
    let mut trackers: Vec<TaskTracker> = (0..workers).map(|_| TaskTracker::new()).collect();
    // HTTP/3's connections are tracked apart, and drained with the others: the serving threads
    // that run them wait for them before they end.
    let quic_tracker = TaskTracker::new();
    let (inline, threads, handles) = if workers == 1 {
        (Some(listener), Vec::new(), Vec::new())
    } else {
        let Some((threads, handles)) = serving.spawn_workers(listener, &trackers, &quic_tracker)
        else {
            // Nothing serves: end the process rather than run on without a listener.
            serving.shutdown.cancel();
            return;
        };
        (None, threads, handles)
    };
    // The QUIC endpoint (its socket and its demultiplexing) on this thread's event loop; its
    // connections on the serving threads' in turn (on this one with --workers 1).
    let quic = quic.map(|socket| {
        trackers.push(quic_tracker.clone());
        serving.spawn_quic(socket, listen_port, quic_tracker, handles)
    });
    let config = &serving.config;
    info!(
        listen = %local.map_or_else(|| config.listen.to_string(), |a| a.to_string()),
        mode = %config.mode,
        backend = %config.backend,
        backlog,
        workers,
        "listening"
    );
    match inline {
        Some(listener) => serving.accept(listener, &trackers[0]).await,
        None => serving.shutdown.cancelled().await,
    }
    serving.drain(&trackers).await;
    serving.hard_stop.cancel();
    for done in threads {
        let _ = done.await;
    }
    if let Some(quic) = quic {
        let _ = quic.await;
    }
}

/// What the listener's threads share, each holding a clone: the configuration, the
/// admission counts and the HTTP/2 backend pool, and the two stops.
#[derive(Clone)]
struct Serving {
    config: Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    listen_port: u16,
    admission: Arc<Admission>,
    h2: Option<Arc<H2Pool>>,
    /// Stops accepting and starts the drain.
    shutdown: CancellationToken,
    /// Closes the connections a drain did not finish within the grace period.
    hard_stop: CancellationToken,
    /// Cancelled once the QUIC endpoint has closed and sent its last packets (`--http3`): the
    /// serving threads, which drive its connections, end only then.
    quic_done: CancellationToken,
}

impl Serving {
    fn new(
        config: Arc<Config>,
        tls: Arc<rustls::ServerConfig>,
        metrics: Arc<Metrics>,
        listen_port: u16,
        shutdown: CancellationToken,
    ) -> Self {
        let admission = Admission::new(
            Limits {
                max_connections: config.max_connections,
                max_per_ip: config.max_connections_per_ip,
                max_handshakes: config.max_handshakes,
            },
            metrics.clone(),
        );
        let h2 = match config.mode {
            Mode::Http => Proxy::h2_pool(&config),
            Mode::Tcp => None,
        };
        Self {
            config,
            tls,
            metrics,
            listen_port,
            admission,
            h2,
            shutdown,
            hard_stop: CancellationToken::new(),
            quic_done: CancellationToken::new(),
        }
    }

    /// Starts serving HTTP/3 on `socket` (`--http3`) in a task of this thread; its connections
    /// run on the serving threads' event loops (`handles`; none: this thread's), each with a
    /// proxy of its own, tracked by `tracker`.
    fn spawn_quic(
        &self,
        socket: std::net::UdpSocket,
        listen_port: u16,
        tracker: TaskTracker,
        handles: Vec<tokio::runtime::Handle>,
    ) -> tokio::task::JoinHandle<()> {
        let handles = if handles.is_empty() {
            vec![None]
        } else {
            handles.into_iter().map(Some).collect()
        };
        let places = handles
            .into_iter()
            .map(|handle| {
                let proxy = Proxy::new(
                    self.config.clone(),
                    listen_port,
                    self.metrics.clone(),
                    tracker.clone(),
                    self.h2.clone(),
                    crate::http::POOL_MAX_IDLE.div_ceil(self.config.workers.max(1)),
                );
                (handle, proxy)
            })
            .collect();
        let quic = h3::Quic {
            config: self.config.clone(),
            tls: self.tls.clone(),
            metrics: self.metrics.clone(),
            admission: self.admission.clone(),
            places,
            shutdown: self.shutdown.clone(),
            hard_stop: self.hard_stop.clone(),
            tracker,
            done: self.quic_done.clone(),
        };
        tokio::spawn(h3::serve(socket, quic))
    }

    /// Serves `listener` on this thread until `shutdown`, its connections tracked by `tracker`.
    async fn accept(&self, listener: TcpListener, tracker: &TaskTracker) {
        let shared = Shared::new(
            &self.config,
            &self.tls,
            &self.metrics,
            self.listen_port,
            tracker,
            &self.h2,
        );
        accept_loop(listener, shared, &self.admission, tracker, &self.shutdown).await;
    }

    /// Starts a serving thread per tracker, each accepting from `listener`; each also runs the
    /// QUIC connections it is given (tracked by `quic`) and ends only once they did. Returns
    /// what ends as each thread does and each thread's event loop, or `None` when none could
    /// start (the listener cannot be shared, or every thread failed): then nothing serves.
    fn spawn_workers(
        &self,
        listener: TcpListener,
        trackers: &[TaskTracker],
        quic: &TaskTracker,
    ) -> Option<(Vec<oneshot::Receiver<()>>, Vec<tokio::runtime::Handle>)> {
        let std_listener = match listener.into_std() {
            Ok(l) => l,
            Err(error) => {
                error!(%error, "cannot share the listener between serving threads; stopping");
                return None;
            }
        };
        let mut threads = Vec::new();
        let mut handles = Vec::new();
        for (i, tracker) in trackers.iter().enumerate() {
            let listener = match std_listener.try_clone() {
                Ok(l) => l,
                Err(error) => {
                    warn!(%error, worker = i, "cannot share the listener with a serving thread");
                    continue;
                }
            };
            match self
                .clone()
                .spawn_worker(i, listener, tracker.clone(), quic.clone())
            {
                Ok((done, handle)) => {
                    threads.push(done);
                    handles.push(handle);
                }
                Err(error) => warn!(%error, worker = i, "could not start a serving thread"),
            }
        }
        drop(std_listener);
        if threads.is_empty() {
            warn!("no serving thread started");
            return None;
        }
        Some((threads, handles))
    }

    /// Starts serving thread `i`: its own single-threaded event loop accepting from `listener`
    /// until `shutdown`, then waiting for its connections until they end or `hard_stop`.
    /// The receiver ends with the thread.
    fn spawn_worker(
        self,
        i: usize,
        listener: std::net::TcpListener,
        tracker: TaskTracker,
        quic: TaskTracker,
    ) -> std::io::Result<(oneshot::Receiver<()>, tokio::runtime::Handle)> {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(format!("sidecar-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => self.accept(listener, &tracker).await,
                        Err(error) => {
                            // It still serves the QUIC connections it is given.
                            warn!(%error, worker = i, "serving thread could not take the listener");
                            self.shutdown.cancelled().await;
                        }
                    }
                    // QUIC connections given to this thread run here until they end too.
                    tokio::select! {
                        ((), ()) = async { tokio::join!(tracker.wait(), quic.wait()) } => {}
                        () = self.hard_stop.cancelled() => {}
                    }
                    if self.config.http3.is_some() {
                        // Until the endpoint has closed: its connections' closing packets are
                        // sent from this thread (bounded by the endpoint's own flush timeout).
                        self.quic_done.cancelled().await;
                    }
                });
                // Dropping the runtime drops whatever the grace period left open.
                drop(runtime);
                drop(done_tx);
            })?;
        Ok((done_rx, handle))
    }

    /// Stops accepting on every thread and waits for their connections to end, for up to
    /// the grace period.
    async fn drain(&self, trackers: &[TaskTracker]) {
        // New connections are refused once every thread let go of the listener.
        self.metrics.set_draining();
        for t in trackers {
            t.close();
        }
        let open: usize = trackers.iter().map(TaskTracker::len).sum();
        let grace = self.config.shutdown_grace;
        info!(
            connections = open,
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let drained = tokio::time::timeout(grace, async {
            for t in trackers {
                t.wait().await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = trackers.iter().map(TaskTracker::len).sum::<usize>(),
                "shutdown grace period over, closing remaining connections"
            );
        } else {
            info!("drained");
        }
    }
}

/// One serving thread's accept loop (or the only one's), until `shutdown`.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    admission: &Arc<Admission>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    // No limit in the listener: `admission` counts the slots, after the accept.
    let mut listener = accept::Listener::new(listener, "tls", shutdown.clone());
    while let Some(Accepted { stream, peer, .. }) = listener.accept().await {
        // At the limit this waits (holding this one connection, the rest queue in the backlog)
        // until a slot frees; a connection over its address's cap is closed here.
        let Some(ticket) = admission.admit(peer, shutdown).await else {
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("conn", %peer);
        tracker.spawn(
            async move {
                connection(stream, peer, &shared, shutdown, ticket).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: CancellationToken,
    ticket: Ticket,
) {
    let _active = shared.metrics.connection_opened();
    // Read before the handshake, and only when needed (one syscall): the PROXY header names the
    // address the client connected to.
    let local = (shared.config.proxy_protocol != ProxyProtocol::Off).then(|| stream.local_addr());
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "set_nodelay failed");
    }
    let handshake =
        tokio::time::timeout(shared.config.handshake_timeout, handshake(stream, shared));
    let tls = tokio::select! {
        () = drain_cut(&shutdown) => return,
        // Closed to make room: the handshake budget or the connection limit is reached.
        _ = ticket.evicted() => return,
        res = handshake => match res {
            Err(_) => {
                shared.metrics.handshake_timed_out();
                debug!("tls handshake timed out");
                return;
            }
            Ok(Err(error)) => {
                shared.metrics.handshake_failed();
                debug!(%error, "tls handshake failed");
                return;
            }
            Ok(Ok(Handshake::Challenge)) => return,
            Ok(Ok(Handshake::Done(tls))) => tls,
        },
    };
    let group = tls.get_ref().1.negotiated_key_exchange_group();
    shared
        .metrics
        .handshake_done(crate::tls::agreed_group(group));
    match &shared.proxy {
        Some(proxy) => {
            let session = tls.get_ref().1;
            let h2 = session.alpn_protocol() == Some(b"h2");
            let client = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(ClientIdentity::from_leaf);
            let activity = if h2 {
                Activity::new()
            } else {
                Activity::new_http1()
            };
            ticket.set_phase(Phase::Http(activity.clone()));
            proxy
                .clone()
                .serve(tls, peer, h2, client, activity, Arc::new(ticket), shutdown)
                .await;
        }
        None => {
            ticket.set_phase(Phase::Pinned);
            let config = &shared.config;
            let preamble = match (config.proxy_protocol, local) {
                (ProxyProtocol::Off, _) | (_, None) => Vec::new(),
                (version, Some(Ok(local))) => {
                    let origin = proxy_protocol::Origin {
                        client: peer,
                        local,
                        tls: proxy_protocol::tls_facts(tls.get_ref().1),
                    };
                    proxy_protocol::header(version, &origin).unwrap_or_default()
                }
                (_, Some(Err(error))) => {
                    // Without its own address the header would lie to the backend.
                    warn!(%error, "cannot read the connection's local address for the PROXY header");
                    return;
                }
            };
            crate::tcp::serve(
                tls,
                peer,
                &config.backend,
                &preamble,
                config.connect_timeout,
                config.idle_timeout,
                &shared.metrics,
            )
            .await;
        }
    }
}

/// How a handshake ended. Returned by value once per connection and matched at once: boxing
/// the stream would cost an allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
enum Handshake {
    /// A connection to serve.
    Done(TlsStream<TcpStream>),
    /// An ACME TLS-ALPN-01 challenge was answered; the connection is over.
    Challenge,
}

static CHALLENGE_LOG: shared::throttle::Throttle =
    shared::throttle::Throttle::new(shared::throttle::LOG_INTERVAL);

/// The TLS handshake: the ClientHello is read first. The cipher suite is the sidecar's choice
/// (AES-128-GCM first, [`tls::server_config`]) unless the client asks for ChaCha20-Poly1305
/// before AES-GCM ([`tls::prefers_chacha`]). With `--acme-tls-alpn-dir`, a TLS-ALPN-01
/// challenge for a name with a challenge file is answered with that file's certificate
/// instead (then closed).
async fn handshake(stream: TcpStream, shared: &Shared) -> std::io::Result<Handshake> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = start.client_hello();
    let chacha = tls::prefers_chacha(hello.cipher_suites());
    let wanted = shared.challenges.as_ref().and_then(|challenges| {
        acme_alpn::wanted(hello.alpn().into_iter().flatten(), hello.server_name())
            .map(|name| (challenges, name))
    });
    let challenge = match wanted {
        None => None,
        Some((challenges, name)) => challenge_for(challenges, name).await,
    };
    let Some((name, config)) = challenge else {
        let config = if chacha {
            shared.tls_client_order.clone()
        } else {
            shared.tls.clone()
        };
        return start.into_stream(config).await.map(Handshake::Done);
    };
    let mut tls = start.into_stream(config).await?;
    if let Some(suppressed) = CHALLENGE_LOG.ready() {
        info!(%name, suppressed, "answered an ACME TLS-ALPN-01 challenge");
    }
    // No application data on a challenge connection (RFC 8737 section 3): say goodbye.
    use tokio::io::AsyncWriteExt;
    let _ = tls.shutdown().await;
    Ok(Handshake::Challenge)
}

/// The challenge certificate for `name` a ClientHello asked for (TLS-ALPN-01), if it has a
/// usable challenge file.
async fn challenge_for(
    challenges: &Challenges,
    name: shared::dns::DnsName,
) -> Option<(shared::dns::DnsName, Arc<rustls::ServerConfig>)> {
    match challenges.config_for(&name).await {
        Ok(Some(config)) => Some((name, config)),
        Ok(None) => None,
        Err(error) => {
            if let Some(suppressed) = CHALLENGE_LOG.ready() {
                warn!(%error, suppressed, "unusable TLS-ALPN-01 challenge file");
            }
            None
        }
    }
}
