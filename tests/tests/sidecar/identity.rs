//! Service identity and egress relays: an app calls `127.0.0.1:<port>` in plain, its sidecar
//! relays over mutual TLS to the other service's sidecar, presenting its identity
//! (`spiffe://test.internal/<name>`) and accepting only a server that presents the identity it
//! expects. Two (or three) real sidecar processes on loopback, identities from one test CA, a
//! stranger from another; a refused call is a closed app connection with one log line saying why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use harness::backend::{sha256_hex, Backend, Echo};
use harness::client::{empty, raw_exchange, read_reply, Body, Reply};
use harness::issuer::{Issued, Spec, TestCa};
use harness::metrics::wait_metric;
use harness::sidecar::{free_port, run_expect_fail, Sidecar, SidecarBuilder};
use harness::tmp::TempDir;
use harness::wait::{poll_until_async, within, STEP};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const DOMAIN: &str = "test.internal";
const FINGERPRINT: &str = "x-client-cert-fingerprint";
const SAN: &str = "x-client-cert-san";
const REQUEST: &[u8] = b"GET /call HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";

/// The identity CA (its bundle is every sidecar's `--identity-ca`, and B's `--client-ca`), a
/// stranger CA, and a directory per identity holding `cert.pem`, `key.pem`, `ca.pem` as the
/// spawner delivers them.
struct Fixture {
    ca: TestCa,
    stranger: TestCa,
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let fx = Fixture {
            ca: TestCa::new("identity CA"),
            stranger: TestCa::new("another CA"),
            dir: TempDir::new("tls-sidecar-identity"),
        };
        fx.dir.write("bundle.pem", fx.ca.pem());
        fx
    }

    fn bundle(&self) -> String {
        self.dir.path().join("bundle.pem").display().to_string()
    }

    /// Writes the identity `name` issued as `spec` by `ca` into its own directory.
    fn identity_as(&self, name: &str, ca: &TestCa, spec: &Spec) -> Identity {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("identity dir");
        let issued = ca.issue(spec);
        std::fs::write(dir.join("cert.pem"), &issued.cert_pem).expect("write cert");
        std::fs::write(dir.join("key.pem"), &issued.key_pem).expect("write key");
        std::fs::write(dir.join("ca.pem"), self.ca.pem()).expect("write bundle");
        Identity { dir, issued }
    }

    /// The identity `name` from the identity CA.
    fn identity(&self, name: &str) -> Identity {
        self.identity_as(name, &self.ca, &Spec::identity(DOMAIN, name))
    }

    /// Service B: http mode, admitting only callers presenting `spiffe://test.internal/a`,
    /// serving its identity to callers naming `b` (and a self-signed default to the rest).
    fn server_b(&self, b: &Identity, app: &Backend) -> SidecarBuilder {
        b.flags(Sidecar::builder().backend(app.addr()))
            .arg("--client-ca")
            .arg(self.bundle())
            .arg("--client-auth")
            .arg("required")
            .arg("--allow-uri-san")
            .arg(format!("spiffe://{DOMAIN}/a"))
    }
}

/// One identity's files.
struct Identity {
    dir: PathBuf,
    issued: Issued,
}

impl Identity {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The four `--identity-*` flags for these files.
    fn flags(&self, builder: SidecarBuilder) -> SidecarBuilder {
        builder.args([
            "--identity-cert".to_string(),
            self.file("cert.pem").display().to_string(),
            "--identity-key".to_string(),
            self.file("key.pem").display().to_string(),
            "--identity-ca".to_string(),
            self.file("ca.pem").display().to_string(),
            "--identity-domain".to_string(),
            DOMAIN.to_string(),
        ])
    }

    /// Replaces the pair as a renewal does: new files beside, renamed into place (key first).
    fn renew(&mut self, ca: &TestCa, name: &str) {
        let issued = ca.issue(&Spec::identity(DOMAIN, name));
        for (file, text) in [("key.pem", &issued.key_pem), ("cert.pem", &issued.cert_pem)] {
            let tmp = self.file(&format!(".{file}.new"));
            std::fs::write(&tmp, text).expect("write the renewed file");
            std::fs::rename(&tmp, self.file(file)).expect("rename into place");
        }
        self.issued = issued;
    }
}

/// A sidecar with identity `me` relaying a fresh loopback port to `remote` (`[NAME@]HOST:PORT`);
/// returns it and the address the app calls.
async fn caller(me: &Identity, remote: &str) -> (Sidecar, SocketAddr) {
    let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sc = me
        .flags(Sidecar::builder().admin())
        .arg("--upstream")
        .arg(format!("{local}={remote}"))
        .start()
        .await;
    sc.wait_log("relaying upstream calls", STEP).await;
    (sc, local)
}

/// `b@127.0.0.1:<port>`: B by address, so its identity must be named.
fn named(name: &str, sc: &Sidecar) -> String {
    format!("{name}@{}", sc.addr())
}

/// A plain HTTP/1.1 connection to a relay, kept alive.
struct Plain {
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Plain {
    async fn connect(addr: SocketAddr) -> Plain {
        let tcp = within(STEP, "connect to the relay", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect to the relay {addr}: {e}"));
        let (sender, conn) = within(
            STEP,
            "HTTP/1.1 handshake with the relay",
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp)),
        )
        .await
        .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Plain { sender }
    }

    async fn get(&mut self, path: &str) -> Reply {
        within(STEP, "relay connection ready", self.sender.ready())
            .await
            .expect("the relayed connection is still open");
        let req = Request::builder()
            .uri(path)
            .header("host", "b")
            .body(empty())
            .expect("request");
        let resp = within(
            STEP,
            "response through the relay",
            self.sender.send_request(req),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path} through the relay: {e}"));
        read_reply(resp).await
    }
}

/// One call on a fresh connection: B's backend's view of it.
async fn call(local: SocketAddr, path: &str) -> Echo {
    let reply = Plain::connect(local).await.get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    Echo::parse(&reply.body)
}

/// A call the relay must refuse: the app connection closes with no byte of a response.
async fn refused_call(local: SocketAddr) {
    let tcp = within(STEP, "connect to the relay", TcpStream::connect(local))
        .await
        .expect("the relay accepts the app's connection");
    let answer = raw_exchange(tcp, REQUEST).await;
    assert!(
        answer.is_none(),
        "a refused call must get no response, got {answer:?}"
    );
}

#[tokio::test]
async fn a_call_through_the_relay_reaches_the_service_as_the_callers_identity() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let b = fx.server_b(&fx.identity("b"), &app).start().await;
    let a = fx.identity("a");
    let (relay, local) = caller(&a, &named("b", &b)).await;

    let echo = call(local, "/hello").await;
    assert_eq!(echo.request.path, "/hello");
    let san = echo.request.header(SAN).unwrap_or_default().to_string();
    assert!(
        san.contains(&format!("URI:spiffe://{DOMAIN}/a")),
        "B's backend sees the caller's identity: {san:?}"
    );
    assert_eq!(
        echo.request.header(FINGERPRINT),
        Some(sha256_hex(a.issued.der.as_ref()).as_str()),
        "the relay presented a's certificate"
    );
    let ok = format!("sidecar_upstream_connections_total{{upstream=\"{local}\",outcome=\"ok\"}}");
    wait_metric(&relay, &ok, |v| v >= 1.0).await;
}

/// Between two sidecars the relay agrees the post-quantum hybrid group by default, and the
/// caller's `--tls-groups` is what it offers.
#[tokio::test]
async fn the_relay_agrees_post_quantum_key_exchange_with_the_service() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let b = fx.server_b(&fx.identity("b"), &app).admin().start().await;
    let a = fx.identity("a");
    let (_relay, local) = caller(&a, &named("b", &b)).await;
    call(local, "/pq").await;
    let pq = "sidecar_tls_handshakes_total{group=\"X25519MLKEM768\"}";
    wait_metric(&b, pq, |v| v >= 1.0).await;

    let l2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let classical = a
        .flags(Sidecar::builder())
        .arg("--upstream")
        .arg(format!("{l2}={}", named("b", &b)))
        .args(["--tls-groups", "X25519"])
        .start()
        .await;
    classical.wait_log("relaying upstream calls", STEP).await;
    call(l2, "/classical").await;
    wait_metric(&b, "sidecar_tls_handshakes_total{group=\"X25519\"}", |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        harness::metrics::metric(&harness::metrics::metrics(&b).await, pq),
        1.0,
        "the second relay offered X25519 alone"
    );
}

#[tokio::test]
async fn grpc_goes_through_a_relay_that_offers_h2() {
    use harness::grpc::{GrpcBackend, GrpcClient};
    let fx = Fixture::new();
    let grpc = GrpcBackend::start().await;
    // B: http mode, gRPC to its backend over h2c (`auto`), admitting a.
    let b = fx
        .identity("b")
        .flags(Sidecar::builder().backend(grpc.addr()))
        .arg("--client-ca")
        .arg(fx.bundle())
        .arg("--allow-uri-san")
        .arg(format!("spiffe://{DOMAIN}/a"))
        .start()
        .await;
    let a = fx.identity("a");
    // The app speaks gRPC in cleartext (h2c, prior knowledge) to its relay, which offers `h2`.
    let (_relay, local) = caller(&a, &format!("{}/h2", named("b", &b))).await;
    let mut client = GrpcClient::connect_h2c(local).await;
    let answer = within(STEP, "a unary call through the relay", client.echo("ping"))
        .await
        .expect("the call succeeds");
    assert_eq!(answer.as_ref(), b"ping");
    for i in 0..3u8 {
        let payload = vec![i; 1000];
        let got = within(
            STEP,
            "more calls on the channel",
            client.echo(payload.clone()),
        )
        .await
        .expect("the call succeeds");
        assert_eq!(got.as_ref(), payload.as_slice());
    }

    // Without `/h2` the relay offers no ALPN and B speaks HTTP/1.1: the same client fails
    // (why the suffix exists), and nothing hangs.
    let (_plain, local) = caller(&a, &named("b", &b)).await;
    let mut client = GrpcClient::connect_h2c(local).await;
    let failed = within(STEP, "a unary call without h2", client.echo("ping")).await;
    assert!(failed.is_err(), "gRPC needs the h2 relay: {failed:?}");
}

#[tokio::test]
async fn a_caller_the_service_does_not_admit_gets_a_closed_connection() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let b = fx.server_b(&fx.identity("b"), &app).start().await;
    let (relay, local) = caller(&fx.identity("c"), &named("b", &b)).await;

    refused_call(local).await;
    let line = relay
        .wait_log_all(&["upstream call failed", "step=handshake"], STEP)
        .await;
    assert!(
        line.contains("refused this sidecar's identity certificate")
            && line.contains(&local.to_string()),
        "the log names the upstream and the refusal: {line}"
    );
    assert!(app.requests().is_empty(), "nothing reached B's backend");
    let failed = format!(
        "sidecar_upstream_connections_total{{upstream=\"{local}\",outcome=\"handshake_failed\"}}"
    );
    wait_metric(&relay, &failed, |v| v >= 1.0).await;
}

#[tokio::test]
async fn a_server_presenting_another_identity_is_refused() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    // B serves its identity whatever the SNI, so a caller expecting x gets b's certificate.
    let b = fx.identity("b");
    let b_everywhere = fx
        .server_b(&b, &app)
        .arg("--cert")
        .arg(b.file("cert.pem").display().to_string())
        .arg("--key")
        .arg(b.file("key.pem").display().to_string())
        .start()
        .await;
    let a = fx.identity("a");
    let (relay, local) = caller(&a, &named("x", &b_everywhere)).await;
    refused_call(local).await;
    let line = relay
        .wait_log_all(&["upstream call failed", "step=verify"], STEP)
        .await;
    for identity in [
        format!("presented spiffe://{DOMAIN}/b"),
        format!("expected spiffe://{DOMAIN}/x"),
    ] {
        assert!(line.contains(&identity), "{identity} missing from: {line}");
    }

    // A certificate with b's DNS name but another SPIFFE ID: the name picks, the ID decides.
    let spec = Spec::identity(DOMAIN, "mallory").dns("b");
    let impostor = fx.identity_as("impostor", &fx.ca, &spec);
    let impostor = fx.server_b(&impostor, &app).start().await;
    let (relay, local) = caller(&a, &named("b", &impostor)).await;
    refused_call(local).await;
    let line = relay
        .wait_log_all(&["upstream call failed", "step=verify"], STEP)
        .await;
    assert!(
        line.contains(&format!(
            "presented spiffe://{DOMAIN}/mallory, expected spiffe://{DOMAIN}/b"
        )),
        "{line}"
    );
    assert!(app.requests().is_empty(), "no call reached a backend");
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let stranger = fx.identity_as("stranger", &fx.stranger, &Spec::identity(DOMAIN, "b"));
    let stranger = fx.server_b(&stranger, &app).start().await;
    let (relay, local) = caller(&fx.identity("a"), &named("b", &stranger)).await;
    refused_call(local).await;
    let line = relay
        .wait_log_all(&["upstream call failed", "step=verify"], STEP)
        .await;
    assert!(
        line.contains("not verified against the identity trust bundle")
            && line.contains(&format!("expected spiffe://{DOMAIN}/b")),
        "{line}"
    );
    let failed = format!(
        "sidecar_upstream_connections_total{{upstream=\"{local}\",outcome=\"verify_failed\"}}"
    );
    wait_metric(&relay, &failed, |v| v >= 1.0).await;
}

#[tokio::test]
async fn a_renewed_identity_is_presented_on_new_calls_while_open_ones_keep_working() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let b = fx.server_b(&fx.identity("b"), &app).start().await;
    let mut a = fx.identity("a");
    let (_relay, local) = caller(&a, &named("b", &b)).await;
    let before = sha256_hex(a.issued.der.as_ref());

    let mut open = Plain::connect(local).await;
    let reply = open.get("/first").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        Echo::parse(&reply.body).request.header(FINGERPRINT),
        Some(before.as_str())
    );

    a.renew(&fx.ca, "a");
    let after = sha256_hex(a.issued.der.as_ref());
    assert_ne!(before, after);
    let after = after.as_str();
    poll_until_async(
        STEP * 2,
        "a new call to present the renewed certificate",
        || async move {
            let echo = call(local, "/new").await;
            (echo.request.header(FINGERPRINT) == Some(after)).then_some(())
        },
    )
    .await;

    let reply = open.get("/still-open").await;
    assert_eq!(reply.status, StatusCode::OK, "the open relay keeps working");
    let echo = Echo::parse(&reply.body);
    assert_eq!(echo.request.path, "/still-open");
    assert_eq!(
        echo.request.header(FINGERPRINT),
        Some(before.as_str()),
        "on the connection it was presented on"
    );
}

#[tokio::test]
async fn relays_are_bounded_and_drained_on_shutdown() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let b = fx.server_b(&fx.identity("b"), &app).start().await;
    let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut relay = fx
        .identity("a")
        .flags(Sidecar::builder().admin())
        .args(["--max-connections", "1", "--shutdown-grace", "60s"])
        .arg("--upstream")
        .arg(format!("{local}={}", named("b", &b)))
        .start()
        .await;
    let mut open = Plain::connect(local).await;
    assert_eq!(open.get("/first").await.status, StatusCode::OK);

    refused_call(local).await;
    relay
        .wait_log("upstream relays at --max-connections", STEP)
        .await;
    let busy = format!(
        "sidecar_upstream_connections_total{{upstream=\"{local}\",outcome=\"refused_busy\"}}"
    );
    wait_metric(&relay, &busy, |v| v >= 1.0).await;

    relay.sigterm();
    poll_until_async(STEP, "the relay to stop accepting", || async move {
        TcpStream::connect(local).await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        open.get("/during-the-drain").await.status,
        StatusCode::OK,
        "a relay in flight keeps working during the grace"
    );
    assert!(relay.is_running(), "the drain waits for the open relay");
    drop(open);
    let status = relay.wait_exit(STEP).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn bad_identity_settings_refuse_to_start() {
    let fx = Fixture::new();
    let a = fx.identity("a");
    let flags = |cert: &Path| {
        vec![
            "--identity-cert".to_string(),
            cert.display().to_string(),
            "--identity-key".to_string(),
            a.file("key.pem").display().to_string(),
            "--identity-ca".to_string(),
            a.file("ca.pem").display().to_string(),
            "--identity-domain".to_string(),
            DOMAIN.to_string(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_expect_fail(&args, &[])
    };

    let missing = run(flags(&a.file("nope.pem")));
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert_eq!(missing.lines().len(), 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("--identity-cert"),
        "{}",
        missing.stderr
    );

    let mut bad_ca = flags(&a.file("cert.pem"));
    bad_ca[5] = a.file("key.pem").display().to_string();
    let bad_ca = run(bad_ca);
    assert_eq!(bad_ca.code, Some(2), "{}", bad_ca.stderr);
    assert_eq!(bad_ca.lines().len(), 1, "{}", bad_ca.stderr);
    assert!(
        bad_ca.stderr.contains("--identity-ca") && bad_ca.stderr.contains("no PEM certificate"),
        "{}",
        bad_ca.stderr
    );

    let mut partial = flags(&a.file("cert.pem"));
    partial.truncate(4);
    let partial = run(partial);
    assert_eq!(partial.code, Some(2), "{}", partial.stderr);
    assert!(
        partial
            .stderr
            .contains("missing --identity-ca, --identity-domain"),
        "{}",
        partial.stderr
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let port = taken.local_addr().expect("addr").port();
    let mut busy = flags(&a.file("cert.pem"));
    busy.extend(["--upstream".to_string(), format!("{port}=b:8443")]);
    let busy = run(busy);
    assert_eq!(busy.code, Some(1), "{}", busy.stderr);
    assert!(
        busy.stderr
            .contains(&format!("failed to listen on --upstream 127.0.0.1:{port}")),
        "{}",
        busy.stderr
    );
}
