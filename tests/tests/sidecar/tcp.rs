//! Sidecar, tcp mode: TLS in, plain TCP to the backend, bytes both ways, half-close propagated.

use std::sync::Arc;

use harness::backend::{pattern, refused_addr, TcpBackend};
use harness::client::{self, Trust};
use harness::sidecar::Sidecar;
use harness::wait::{self, within, STEP};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

fn no_alpn() -> Arc<rustls::ClientConfig> {
    client::config(Trust::AnyCert, &[])
}

/// Reads until the sidecar closes the stream.
async fn read_to_close(rd: impl AsyncRead + Unpin) -> Vec<u8> {
    wait::read_to_close(STEP, "the stream to be closed by the sidecar", rd).await
}

#[tokio::test]
async fn tcp_mode_relays_bytes_both_ways() {
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .mode("tcp")
        .start()
        .await;
    let tls = client::tls_connect(sc.addr(), "localhost", no_alpn()).await;
    let (mut rd, mut wr) = tokio::io::split(tls);

    wr.write_all(b"ping\n").await.expect("write ping");
    let mut small = [0u8; 5];
    within(STEP, "ping echo", rd.read_exact(&mut small))
        .await
        .expect("read ping echo");
    assert_eq!(&small, b"ping\n");

    // 4 MiB while reading concurrently, so neither side's buffers can hide a stall.
    let big = pattern(0, 4 * 1024 * 1024);
    let expected = big.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&big).await.expect("write 4 MiB");
        wr.flush().await.expect("flush");
        wr
    });
    let mut back = vec![0u8; expected.len()];
    within(STEP * 6, "4 MiB echo", rd.read_exact(&mut back))
        .await
        .expect("read 4 MiB echo");
    assert!(
        back == expected,
        "the 4 MiB echo differs from what was sent"
    );
    let mut wr = within(STEP, "writer", writer).await.expect("writer task");
    within(STEP, "shutdown", wr.shutdown())
        .await
        .expect("shutdown");
    let rest = read_to_close(rd).await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        format!("eof after {} bytes\n", 5 + expected.len())
    );
}

#[tokio::test]
async fn tcp_mode_propagates_half_close() {
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .mode("tcp")
        .start()
        .await;
    let mut tls = client::tls_connect(sc.addr(), "localhost", no_alpn()).await;
    tls.write_all(b"hello").await.expect("write");
    // close_notify plus FIN: "I am done sending", while still reading.
    within(STEP, "client shutdown(write)", tls.shutdown())
        .await
        .expect("shutdown write");
    let got = read_to_close(tls).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "helloeof after 5 bytes\n",
        "the backend must see EOF and still be able to answer"
    );
    assert_eq!(app.eofs_seen(), 1);
}

#[tokio::test]
async fn tcp_mode_refused_backend_drops_only_that_connection() {
    let dead = refused_addr();
    let mut sc = Sidecar::builder().backend(dead).mode("tcp").start().await;
    let attempt = within(
        STEP,
        "TLS connect",
        client::try_tls_connect(sc.addr(), "localhost", no_alpn()),
    )
    .await;
    if let Ok(tls) = attempt {
        let got = read_to_close(tls).await;
        assert!(got.is_empty(), "no bytes from a dead backend: {got:?}");
    }
    assert!(sc.is_running(), "the sidecar must stay up");

    // A second client is still accepted (its handshake completes, then it is dropped too).
    let attempt = within(
        STEP,
        "TLS connect",
        client::try_tls_connect(sc.addr(), "localhost", no_alpn()),
    )
    .await;
    if let Ok(tls) = attempt {
        assert!(read_to_close(tls).await.is_empty());
    }
    assert!(
        sc.is_running(),
        "still up after a second refused connection"
    );
}
