//! Counters and gauges, rendered in the Prometheus text format (through
//! [`shared::prometheus`]) by the admin listener. Plain atomics: a handful of numbers does not
//! justify a metrics framework on the hot path, and they are read only when scraped.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use shared::prometheus::{Exposition, Kind};
use shared::proto::TlsGroup;

/// gRPC status codes the protocol defines (0 OK to 16 UNAUTHENTICATED).
pub(crate) const GRPC_CODES: usize = 17;

/// Why a backend exchange failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BackendError {
    /// Could not connect (refused, unreachable, connect timeout): 502.
    Connect,
    /// No response headers within `--backend-timeout`: 504.
    Timeout,
    /// The backend broke the exchange some other way: 502.
    Protocol,
}

/// Why the sidecar refused or cut short what a client asked for. Each cause is a label value of
/// `sidecar_refusals_total`, so an operator can tell an attack from a limit sized too small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A connection closed at accept: its client address already holds
    /// `--max-connections-per-ip` connections.
    PerIp,
    /// The oldest connection still in the TLS handshake closed to keep within
    /// `--max-handshakes`.
    HandshakeEvicted,
    /// The longest-idle keep-alive connection closed to admit a new one at `--max-connections`.
    IdleEvicted,
    /// A connection closed hard because the client ignored the graceful close (HTTP/2 GOAWAY and
    /// PING) for the goodbye deadline.
    CloseDeadline,
    /// A connection closed for cancelling streams faster than its budget (HTTP/2 rapid reset).
    StreamResets,
    /// An `Upgrade` the sidecar does not pass (`--allow-upgrade`), stripped from the request.
    Upgrade,
    /// A request refused with 400 for its `Host`/`:authority`.
    Host,
    /// A request refused with 400 for its framing or body (smuggling shapes, bad chunks).
    Framing,
    /// A QUIC connection refused at once because every slot was taken (`--max-connections`):
    /// QUIC has no listen backlog to wait in; the client falls back to TCP or tries again.
    QuicBusy,
    /// An HTTP/3 request stream reset because its head did not arrive within
    /// `--header-read-timeout`.
    HeadTimeout,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Refusal::PerIp,
        Refusal::HandshakeEvicted,
        Refusal::IdleEvicted,
        Refusal::CloseDeadline,
        Refusal::StreamResets,
        Refusal::Upgrade,
        Refusal::Host,
        Refusal::Framing,
        Refusal::QuicBusy,
        Refusal::HeadTimeout,
    ];

    /// The `cause` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip_limit",
            Refusal::HandshakeEvicted => "handshake_evicted",
            Refusal::IdleEvicted => "idle_evicted",
            Refusal::CloseDeadline => "close_deadline",
            Refusal::StreamResets => "stream_resets",
            Refusal::Upgrade => "upgrade",
            Refusal::Host => "host",
            Refusal::Framing => "framing",
            Refusal::QuicBusy => "quic_busy",
            Refusal::HeadTimeout => "head_timeout",
        }
    }
}

/// The HTTP version a request came in: the `protocol` label of
/// `sidecar_http_requests_by_protocol_total` and the `proto` field of the access log (ALPN's
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    H2,
    H3,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::H3];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        }
    }
}

/// How a request on the hand-over socket ended, in the sidecar asked: the `result` label of
/// `sidecar_handovers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandoverResult {
    /// The listeners went to the successor; this sidecar drains.
    Ok,
    /// A successor got the listeners but did not get ready (it failed, went away or took too
    /// long): this sidecar serves on.
    Aborted,
    /// Not answered: another user, garbage, an oversized message, another protocol version, a
    /// peer that said nothing in time, or a second asker during a hand-over.
    Refused,
}

impl HandoverResult {
    const ALL: [HandoverResult; 3] = [
        HandoverResult::Ok,
        HandoverResult::Aborted,
        HandoverResult::Refused,
    ];

    /// The `result` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandoverResult::Ok => "ok",
            HandoverResult::Aborted => "aborted",
            HandoverResult::Refused => "refused",
        }
    }
}

/// How an app connection to an egress relay (`--upstream`) ended up: the `outcome` label of
/// `sidecar_upstream_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamOutcome {
    /// Relayed (counted when the relay ends: with TLS 1.3 the server's verdict on this sidecar's
    /// certificate can arrive after the handshake, as a `handshake_failed`).
    Ok,
    /// The remote could not be resolved or connected to within `--connect-timeout`.
    ConnectFailed,
    /// The TLS handshake failed or timed out, or the server refused this sidecar's certificate.
    HandshakeFailed,
    /// The server's certificate is not the identity expected (untrusted, wrong name, wrong
    /// SPIFFE ID).
    VerifyFailed,
    /// Closed at once: `--max-connections` relays were open.
    RefusedBusy,
}

impl UpstreamOutcome {
    const ALL: [UpstreamOutcome; 5] = [
        UpstreamOutcome::Ok,
        UpstreamOutcome::ConnectFailed,
        UpstreamOutcome::HandshakeFailed,
        UpstreamOutcome::VerifyFailed,
        UpstreamOutcome::RefusedBusy,
    ];

    /// The `outcome` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::ConnectFailed => "connect_failed",
            UpstreamOutcome::HandshakeFailed => "handshake_failed",
            UpstreamOutcome::VerifyFailed => "verify_failed",
            UpstreamOutcome::RefusedBusy => "refused_busy",
        }
    }
}

/// One egress relay's counters; its label is its local address, fixed by the configuration (so
/// the label set is bounded).
#[derive(Debug)]
pub(crate) struct UpstreamStats {
    label: String,
    outcomes: [AtomicU64; UpstreamOutcome::ALL.len()],
    active: AtomicI64,
}

impl UpstreamStats {
    pub(crate) fn count(&self, outcome: UpstreamOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many app connections ended up as `outcome`.
    pub(crate) fn outcomes(&self, outcome: UpstreamOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Counts a relayed connection as active until the guard drops.
    pub(crate) fn opened(&self) -> UpstreamGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        UpstreamGuard(self)
    }
}

/// Keeps `sidecar_upstream_connections_active` right however a relay ends.
#[derive(Debug)]
pub(crate) struct UpstreamGuard<'a>(&'a UpstreamStats);

impl Drop for UpstreamGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    refusals: [AtomicU64; Refusal::ALL.len()],
    connections_total: AtomicU64,
    connections_active: AtomicI64,
    /// The most connections open at once since [`Metrics::take_peak`] last asked.
    connections_peak: AtomicI64,
    handshake_failures_total: AtomicU64,
    handshake_timeouts_total: AtomicU64,
    /// Handshakes completed, by the key-exchange group agreed ([`TlsGroup::ALL`]'s order),
    /// and last those without one of ours (a resumed TLS 1.2 session).
    handshakes: [AtomicU64; TlsGroup::ALL.len() + 1],
    /// Responses by status class, 1xx..5xx.
    http_requests_total: [AtomicU64; 5],
    /// Responses by protocol ([`Protocol::ALL`]'s order).
    http_requests_by_protocol: [AtomicU64; Protocol::ALL.len()],
    /// QUIC (`--http3`): connection attempts answered with a Retry (address validation).
    quic_retries_total: AtomicU64,
    /// gRPC statuses 0..=16 and, last, any other value.
    grpc_responses_total: [AtomicU64; GRPC_CODES + 1],
    backend_errors: [AtomicU64; 3],
    tcp_bytes_from_client: AtomicU64,
    tcp_bytes_to_client: AtomicU64,
    draining: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// (name, not_after) of every certificate served.
    certificates: RwLock<Vec<(String, i64)>>,
    /// One per `--upstream`, registered at start.
    upstreams: RwLock<Vec<Arc<UpstreamStats>>>,
    /// Requests on the hand-over socket, by [`HandoverResult`].
    handovers: [AtomicU64; HandoverResult::ALL.len()],
}

/// Keeps `sidecar_connections_active` right however a connection task ends.
#[derive(Debug)]
pub(crate) struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn connection_opened(&self) -> ConnectionGuard<'_> {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        let now = self.connections_active.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_peak.fetch_max(now, Ordering::Relaxed);
        ConnectionGuard(self)
    }

    /// Connections open now.
    pub(crate) fn connections_active(&self) -> u64 {
        self.connections_active.load(Ordering::Relaxed).max(0) as u64
    }

    /// The most connections open at once since the last call (at least those open now).
    pub(crate) fn take_peak(&self) -> u64 {
        let now = self.connections_active.load(Ordering::Relaxed);
        self.connections_peak
            .swap(now, Ordering::Relaxed)
            .max(now)
            .max(0) as u64
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake completed, agreeing `group`.
    pub(crate) fn handshake_done(&self, group: Option<TlsGroup>) {
        let i = group
            .and_then(|g| TlsGroup::ALL.iter().position(|a| *a == g))
            .unwrap_or(TlsGroup::ALL.len());
        self.handshakes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_timed_out(&self) {
        self.handshake_timeouts_total
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, cause: Refusal) {
        self.refusals[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many refusals of `cause` so far.
    pub(crate) fn refusals(&self, cause: Refusal) -> u64 {
        self.refusals[cause as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn response(&self, status: u16, protocol: Protocol) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.http_requests_total[class].fetch_add(1, Ordering::Relaxed);
        self.http_requests_by_protocol[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A QUIC connection attempt answered with a Retry.
    pub(crate) fn quic_retry(&self) {
        self.quic_retries_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one gRPC call's status (the `grpc-status` it ended with); codes past the 17 the
    /// protocol defines are counted together as `other`.
    pub(crate) fn grpc_response(&self, code: u32) {
        let slot = (code as usize).min(GRPC_CODES);
        self.grpc_responses_total[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn backend_error(&self, kind: BackendError) {
        self.backend_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tcp_bytes(&self, from_client: u64, to_client: u64) {
        self.tcp_bytes_from_client
            .fetch_add(from_client, Ordering::Relaxed);
        self.tcp_bytes_to_client
            .fetch_add(to_client, Ordering::Relaxed);
    }

    /// Records the certificates served now, (name, notAfter) each, for the expiry gauge.
    pub(crate) fn set_certificates(&self, list: Vec<(String, i64)>) {
        match self.certificates.write() {
            Ok(mut g) => *g = list,
            Err(p) => *p.into_inner() = list,
        }
    }

    /// The counters of the egress relay listening on `local`, rendered from now on.
    pub(crate) fn upstream(&self, local: std::net::SocketAddr) -> Arc<UpstreamStats> {
        let stats = Arc::new(UpstreamStats {
            label: local.to_string(),
            outcomes: Default::default(),
            active: AtomicI64::new(0),
        });
        match self.upstreams.write() {
            Ok(mut g) => g.push(stats.clone()),
            Err(p) => p.into_inner().push(stats.clone()),
        }
        stats
    }

    /// Counts one request on the hand-over socket.
    pub(crate) fn handover(&self, result: HandoverResult) {
        self.handovers[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reload_succeeded(&self) {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reload_failed(&self) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the sidecar as shutting down: `/readyz` answers 503 from now on.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut exp = Exposition::with_capacity(4096);
        self.render_connections(&mut exp);
        self.render_traffic(&mut exp);
        self.render_upstreams(&mut exp);
        self.render_certificates(&mut exp);
        exp.finish()
    }

    /// Whether it runs, its connections, and what it refused.
    fn render_connections(&self, exp: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        exp.family(
            "sidecar_up",
            Kind::Gauge,
            "1 while the sidecar runs, 0 while it drains.",
        )
        .sample(&[], u64::from(!self.is_draining()));
        exp.family(
            "sidecar_connections_total",
            Kind::Counter,
            "TCP connections accepted.",
        )
        .sample(&[], get(&self.connections_total));
        exp.family(
            "sidecar_connections_active",
            Kind::Gauge,
            "Connections open now.",
        )
        .sample(&[], self.connections_active());
        exp.family(
            "sidecar_handshake_failures_total",
            Kind::Counter,
            "TLS handshakes that failed (bad client, garbage, unsupported version).",
        )
        .sample(&[], get(&self.handshake_failures_total));
        exp.family(
            "sidecar_handshake_timeouts_total",
            Kind::Counter,
            "TLS handshakes not finished within --handshake-timeout.",
        )
        .sample(&[], get(&self.handshake_timeouts_total));
        let mut handshakes = exp.family(
            "sidecar_tls_handshakes_total",
            Kind::Counter,
            "TLS handshakes completed on the listener, by the key-exchange group agreed (none: a resumed TLS 1.2 session).",
        );
        let names = TlsGroup::ALL.iter().map(|g| g.name()).chain(["none"]);
        for (name, count) in names.zip(&self.handshakes) {
            handshakes.sample(&[("group", name)], get(count));
        }
        let mut refusals = exp.family(
            "sidecar_refusals_total",
            Kind::Counter,
            "Connections and requests refused or cut short to protect the sidecar, by cause.",
        );
        for cause in Refusal::ALL {
            refusals.sample(&[("cause", cause.as_str())], self.refusals(cause));
        }
        let mut handovers = exp.family(
            "sidecar_handovers_total",
            Kind::Counter,
            "Requests for this sidecar's listeners (--take-over), by result.",
        );
        for result in HandoverResult::ALL {
            handovers.sample(
                &[("result", result.as_str())],
                get(&self.handovers[result as usize]),
            );
        }
    }

    /// HTTP responses, gRPC statuses, backend errors and relayed bytes.
    fn render_traffic(&self, exp: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut by_class = exp.family(
            "sidecar_http_requests_total",
            Kind::Counter,
            "HTTP responses sent, by status class.",
        );
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        for (class, n) in classes.into_iter().zip(&self.http_requests_total) {
            by_class.sample(&[("code", class)], get(n));
        }
        let mut by_protocol = exp.family(
            "sidecar_http_requests_by_protocol_total",
            Kind::Counter,
            "HTTP responses sent, by the protocol of the request (http/1.1, h2, h3).",
        );
        for (protocol, n) in Protocol::ALL
            .into_iter()
            .zip(&self.http_requests_by_protocol)
        {
            by_protocol.sample(&[("protocol", protocol.as_str())], get(n));
        }
        exp.family(
            "sidecar_quic_retries_total",
            Kind::Counter,
            "QUIC connection attempts answered with a Retry (address validation while handshakes are many).",
        )
        .sample(&[], get(&self.quic_retries_total));
        let mut by_grpc = exp.family(
            "sidecar_grpc_responses_total",
            Kind::Counter,
            "gRPC calls answered, by grpc-status (from the backend's trailers, or the sidecar's own 4 and 14).",
        );
        for (code, n) in self.grpc_responses_total.iter().enumerate() {
            let code = match code {
                GRPC_CODES => "other".to_string(),
                c => c.to_string(),
            };
            by_grpc.sample(&[("code", code.as_str())], get(n));
        }
        let mut backend = exp.family(
            "sidecar_backend_errors_total",
            Kind::Counter,
            "Backend exchanges that failed, by kind.",
        );
        for (kind, label) in [
            (BackendError::Connect, "connect"),
            (BackendError::Timeout, "timeout"),
            (BackendError::Protocol, "protocol"),
        ] {
            backend.sample(&[("kind", label)], get(&self.backend_errors[kind as usize]));
        }
        exp.family(
            "sidecar_tcp_bytes_total",
            Kind::Counter,
            "Bytes relayed in tcp mode and through upgraded connections.",
        )
        .sample(
            &[("direction", "from_client")],
            get(&self.tcp_bytes_from_client),
        )
        .sample(
            &[("direction", "to_client")],
            get(&self.tcp_bytes_to_client),
        );
    }

    /// The egress relays' connections, by local address.
    fn render_upstreams(&self, exp: &mut Exposition) {
        let upstreams = match self.upstreams.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut outcomes = exp.family(
            "sidecar_upstream_connections_total",
            Kind::Counter,
            "App connections to an egress relay (--upstream), by local address and outcome.",
        );
        for u in &upstreams {
            for o in UpstreamOutcome::ALL {
                let labels = [("upstream", u.label.as_str()), ("outcome", o.as_str())];
                outcomes.sample(&labels, u.outcomes(o));
            }
        }
        let mut active = exp.family(
            "sidecar_upstream_connections_active",
            Kind::Gauge,
            "Connections relayed by an egress relay now.",
        );
        for u in &upstreams {
            let n = u.active.load(Ordering::Relaxed).max(0) as u64;
            active.sample(&[("upstream", u.label.as_str())], n);
        }
    }

    /// The access log's drops, certificate reloads, and the served certificates' expiry.
    fn render_certificates(&self, exp: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        exp.family(
            "sidecar_access_log_dropped_total",
            Kind::Counter,
            "Access-log lines dropped because the log writer fell behind (stderr blocked).",
        )
        .sample(&[], crate::access_log::dropped_total());
        exp.family(
            "sidecar_certificate_reloads_total",
            Kind::Counter,
            "Certificate and client CA/CRL reloads, by result (a failed reload keeps what was in force).",
        )
        .sample(&[("result", "success")], get(&self.reloads_ok))
        .sample(&[("result", "failure")], get(&self.reloads_failed));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let certs = match self.certificates.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut expiry = exp.family(
            "sidecar_certificate_expiry_seconds",
            Kind::Gauge,
            "Seconds until a served certificate expires (negative: expired).",
        );
        for (name, not_after) in &certs {
            expiry.sample(&[("name", name.as_str())], not_after - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_active_gauge() {
        let m = Metrics::default();
        {
            let _c = m.connection_opened();
            m.response(200, Protocol::H2);
            m.response(502, Protocol::H3);
            m.backend_error(BackendError::Connect);
            m.refused(Refusal::PerIp);
            m.grpc_response(0);
            m.grpc_response(14);
            m.grpc_response(99);
            let text = m.render();
            assert!(text.contains("sidecar_grpc_responses_total{code=\"0\"} 1\n"));
            assert!(text.contains("sidecar_grpc_responses_total{code=\"14\"} 1\n"));
            assert!(text.contains("sidecar_grpc_responses_total{code=\"16\"} 0\n"));
            assert!(text.contains("sidecar_grpc_responses_total{code=\"other\"} 1\n"));
            assert!(text.contains("sidecar_refusals_total{cause=\"per_ip_limit\"} 1\n"));
            assert!(text.contains("sidecar_refusals_total{cause=\"stream_resets\"} 0\n"));
            assert!(text.contains("sidecar_connections_active 1\n"), "{text}");
            assert!(text.contains("sidecar_http_requests_total{code=\"2xx\"} 1\n"));
            assert!(text.contains("sidecar_http_requests_total{code=\"5xx\"} 1\n"));
            assert!(text.contains("sidecar_backend_errors_total{kind=\"connect\"} 1\n"));
        }
        let text = m.render();
        assert!(text.contains("sidecar_connections_active 0\n"));
        assert!(text.contains("sidecar_connections_total 1\n"));
        assert!(text.contains("# TYPE sidecar_connections_total counter\n"));
        assert!(text.contains("# TYPE sidecar_access_log_dropped_total counter\n"));
        assert!(text.contains("\nsidecar_access_log_dropped_total 0\n"));
        assert!(text.contains("# TYPE sidecar_upstream_connections_total counter\n"));
        m.handover(HandoverResult::Refused);
        m.handover(HandoverResult::Refused);
        m.handover(HandoverResult::Ok);
        let text = m.render();
        assert!(
            text.contains("sidecar_handovers_total{result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("sidecar_handovers_total{result=\"aborted\"} 0\n"));
        assert!(text.contains("sidecar_handovers_total{result=\"refused\"} 2\n"));
    }

    #[test]
    fn upstream_counters_carry_their_local_address() {
        let m = Metrics::default();
        let relay = m.upstream("127.0.0.1:9001".parse().expect("addr"));
        relay.count(UpstreamOutcome::Ok);
        relay.count(UpstreamOutcome::VerifyFailed);
        relay.count(UpstreamOutcome::VerifyFailed);
        let _open = relay.opened();
        let text = m.render();
        for line in [
            "sidecar_upstream_connections_total{upstream=\"127.0.0.1:9001\",outcome=\"ok\"} 1\n",
            "sidecar_upstream_connections_total{upstream=\"127.0.0.1:9001\",outcome=\"verify_failed\"} 2\n",
            "sidecar_upstream_connections_total{upstream=\"127.0.0.1:9001\",outcome=\"refused_busy\"} 0\n",
            "sidecar_upstream_connections_active{upstream=\"127.0.0.1:9001\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
