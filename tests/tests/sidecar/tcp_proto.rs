//! Sidecar, tcp mode, the protocol settings of issue 12: `--alpn` (the protocols offered, none
//! by default, refused in http mode) and `--proxy-protocol v1|v2`, read by a real consumer
//! (Debian's HAProxy with `accept-proxy`, which reports the client address it was told) and, for
//! the v2 TLVs HAProxy 2.6 cannot show (ALPN, the client certificate's CN), parsed here from the
//! bytes the backend received.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use harness::backend::TcpBackend;
use harness::certdir::{write, CertsDir};
use harness::client::{self, Trust};
use harness::haproxy::{fields, Haproxy, ANSWER};
use harness::issuer::{Spec, TestCa};
use harness::mtls::client_config;
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::wait::{read_to_close, within, STEP};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The client's own loopback address: not the sidecar's (127.0.0.1), so a header that named the
/// sidecar instead of the client could not pass.
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// TLS to `addr` from [`CLIENT_IP`], SNI `localhost`; also returns the client's own address.
async fn connect_from_client_ip(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (TlsStream<TcpStream>, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("client socket");
    socket
        .bind(SocketAddr::new(CLIENT_IP, 0))
        .expect("bind the client to 127.0.0.2");
    let tcp = within(STEP, "TCP connect to the sidecar", socket.connect(addr))
        .await
        .expect("connect to the sidecar");
    let local = tcp.local_addr().expect("client address");
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = within(
        STEP,
        "TLS handshake with the sidecar",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake with the sidecar");
    (tls, local)
}

/// Sends one HTTP/1.1 request through the tunnel and returns the response body (HAProxy closes).
async fn http_get(mut tls: TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write request");
    let raw = read_to_close(ANSWER, "HAProxy's answer through the sidecar", tls).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "HAProxy ({}) did not accept the PROXY header: {text:?}",
        Haproxy::version()
    );
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn tcp_mode_offers_the_alpn_list_in_its_order() {
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .mode("tcp")
        .args(["--alpn", "h2,http/1.1"])
        .start()
        .await;
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, &["h2"]),
    )
    .await;
    assert_eq!(client::alpn(&tls).as_deref(), Some("h2"));
    // The sidecar's preference wins over the client's order.
    let both = client::config(Trust::AnyCert, &["http/1.1", "h2"]);
    let mut tls = client::tls_connect(sc.addr(), "localhost", both).await;
    assert_eq!(client::alpn(&tls).as_deref(), Some("h2"));
    // And the bytes still flow.
    tls.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    within(STEP, "echo through the sidecar", tls.read_exact(&mut back))
        .await
        .expect("read echo");
    assert_eq!(&back, b"ping");
    let h1 = client::config(Trust::AnyCert, &["http/1.1"]);
    let tls = client::tls_connect(sc.addr(), "localhost", h1).await;
    assert_eq!(client::alpn(&tls).as_deref(), Some("http/1.1"));
    // A client offering no ALPN connects without; one offering none of the list is refused.
    let none = client::config(Trust::AnyCert, &[]);
    let tls = client::tls_connect(sc.addr(), "localhost", none).await;
    assert_eq!(client::alpn(&tls), None);
    let other = client::config(Trust::AnyCert, &["imap"]);
    let refused = within(
        STEP,
        "the handshake offering only imap",
        client::try_tls_connect(sc.addr(), "localhost", other),
    )
    .await
    .expect_err("no protocol in common");
    assert!(
        format!("{refused:?}").contains("NoApplicationProtocol"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn tcp_mode_offers_no_alpn_by_default() {
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .mode("tcp")
        .start()
        .await;
    let mut tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, &["h2", "http/1.1"]),
    )
    .await;
    assert_eq!(client::alpn(&tls), None, "nothing negotiated");
    tls.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    within(STEP, "echo through the sidecar", tls.read_exact(&mut back))
        .await
        .expect("read echo");
    assert_eq!(&back, b"ping");
}

#[test]
fn alpn_and_proxy_protocol_are_refused_in_http_mode() {
    for (args, flag) in [
        (["--alpn", "h2"], "--alpn"),
        (["--proxy-protocol", "v1"], "--proxy-protocol"),
    ] {
        let out = run_expect_fail(&args, &[]);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains("--mode tcp"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run_expect_fail(&["--mode", "tcp", "--alpn", "h2,h2"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("listed twice"), "{}", out.stderr);
    let out = run_expect_fail(&[], &[("SIDECAR_PROXY_PROTOCOL", "v3")]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("v1 or v2"), "{}", out.stderr);
}

/// HAProxy behind a tcp-mode sidecar with `--proxy-protocol version`; what it says it was told.
async fn haproxy_is_told(
    version: &str,
) -> (
    std::collections::HashMap<String, String>,
    SocketAddr,
    SocketAddr,
) {
    let backend = Haproxy::accept_proxy().await;
    let sc = Sidecar::builder()
        .backend(backend.addr())
        .mode("tcp")
        .args(["--proxy-protocol", version])
        .start()
        .await;
    let (tls, client) =
        connect_from_client_ip(sc.addr(), client::config(Trust::AnyCert, &[])).await;
    let body = http_get(tls).await;
    (fields(&body), client, sc.addr())
}

#[tokio::test]
async fn proxy_v1_tells_haproxy_the_client_address() {
    let (told, client, sidecar) = haproxy_is_told("v1").await;
    assert_eq!(told["src"], client.ip().to_string(), "{told:?}");
    assert_eq!(told["src_port"], client.port().to_string(), "{told:?}");
    assert_eq!(told["dst"], sidecar.ip().to_string(), "{told:?}");
    assert_eq!(told["dst_port"], sidecar.port().to_string(), "{told:?}");
}

#[tokio::test]
async fn proxy_v2_tells_haproxy_the_client_address_and_the_sni_name() {
    let (told, client, sidecar) = haproxy_is_told("v2").await;
    assert_eq!(told["src"], client.ip().to_string(), "{told:?}");
    assert_eq!(told["src_port"], client.port().to_string(), "{told:?}");
    assert_eq!(told["dst"], sidecar.ip().to_string(), "{told:?}");
    assert_eq!(told["dst_port"], sidecar.port().to_string(), "{told:?}");
    assert_eq!(
        told["authority"], "localhost",
        "PP2_TYPE_AUTHORITY: {told:?}"
    );
}

/// The TLVs of a v2 header: (type, value), sub-TLVs of PP2_TYPE_SSL not split.
fn tlvs(mut rest: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 3, "truncated TLV: {rest:?}");
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        assert!(
            rest.len() >= 3 + len,
            "TLV longer than the header: {rest:?}"
        );
        out.push((rest[0], rest[3..3 + len].to_vec()));
        rest = &rest[3 + len..];
    }
    out
}

#[tokio::test]
async fn proxy_v2_tlvs_carry_alpn_sni_tls_version_and_the_client_cn() {
    let server_ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let files = CertsDir::new();
    files.flat("server", &server_ca.issue(&Spec::server(&["localhost"])));
    let client_ca = files.path().join("client-ca.pem");
    write(&client_ca, clients.pem());
    let path = |name: &str| files.path().join(name).display().to_string();
    // The echo backend sends back what it receives: the header first.
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .mode("tcp")
        .args(["--cert", &path("server.crt"), "--key", &path("server.key")])
        .args(["--client-ca", &client_ca.display().to_string()])
        .args(["--alpn", "h2", "--proxy-protocol", "v2"])
        .start()
        .await;
    let alice = clients.issue(&Spec::client("alice"));
    let config = client_config(server_ca.der(), &["h2"], Some(&alice));
    let (mut tls, client) = connect_from_client_ip(sc.addr(), config).await;

    let mut fixed = [0u8; 16];
    within(STEP, "the echoed PROXY header", tls.read_exact(&mut fixed))
        .await
        .expect("read the header's fixed part");
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(fixed[12], 0x21, "version 2, PROXY");
    assert_eq!(fixed[13], 0x11, "AF_INET, STREAM");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    within(STEP, "the echoed PROXY header", tls.read_exact(&mut rest))
        .await
        .expect("read the header's addresses and TLVs");
    assert_eq!(&rest[0..4], &[127, 0, 0, 2], "source address");
    assert_eq!(&rest[4..8], &[127, 0, 0, 1], "destination address");
    assert_eq!(u16::from_be_bytes([rest[8], rest[9]]), client.port());
    assert_eq!(u16::from_be_bytes([rest[10], rest[11]]), sc.addr().port());

    let tlvs = tlvs(&rest[12..]);
    let get = |kind: u8| {
        tlvs.iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("TLV {kind:#04x} missing from {tlvs:?}"))
    };
    assert_eq!(get(0x01), b"h2", "PP2_TYPE_ALPN");
    assert_eq!(get(0x02), b"localhost", "PP2_TYPE_AUTHORITY");
    let ssl = get(0x20);
    assert_eq!(
        ssl[0], 0x07,
        "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS"
    );
    assert_eq!(
        &ssl[1..5],
        &[0, 0, 0, 0],
        "verify: the certificate was verified"
    );
    let subs = self::tlvs(&ssl[5..]);
    assert!(
        subs.contains(&(0x21, b"TLSv1.3".to_vec())),
        "PP2_SUBTYPE_SSL_VERSION: {subs:?}"
    );
    assert!(
        subs.contains(&(0x22, b"alice".to_vec())),
        "PP2_SUBTYPE_SSL_CN: {subs:?}"
    );

    // After the header, the relay as usual.
    tls.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    within(STEP, "echo after the header", tls.read_exact(&mut back))
        .await
        .expect("read echo");
    assert_eq!(&back, b"ping");
}
