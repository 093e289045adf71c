//! TCP: connections to the backend, and one TLS connection relayed byte for byte to it (tcp
//! mode), preceded by a PROXY protocol header when asked ([`proxy_protocol`]). The relay also
//! serves upgraded HTTP connections (WebSocket), which are raw bytes once the `101` has been
//! sent, and the egress relays ([`crate::identity::egress`]).
//!
//! Each direction is copied until its reader ends, then the writer is shut down (half-close),
//! so protocols where one side finishes sending first keep working.

pub(crate) mod proxy_protocol;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::connection::activity::{tick_period, Activity, Tracked, Verdict};
use crate::metrics::Metrics;
use shared::addr::BackendAddr as Backend;

static CONNECT_LOG: crate::throttle::Throttle =
    crate::throttle::Throttle::new(crate::throttle::LOG_INTERVAL);

/// Copy buffer per direction: one maximum-size TLS record, so a full record moves per write.
const COPY_BUF: usize = 16 * 1024;

/// Connects to the backend under `timeout`.
pub(crate) async fn connect(backend: &Backend, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(backend.authority()))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to the backend and writes `preamble` (a PROXY protocol header), both under
/// `timeout`: a backend that accepts but does not read cannot hold the connection longer than
/// one that does not accept.
pub(crate) async fn connect_with(
    backend: &Backend,
    timeout: Duration,
    preamble: &[u8],
) -> io::Result<TcpStream> {
    if preamble.is_empty() {
        return connect(backend, timeout).await;
    }
    let started = tokio::time::Instant::now();
    let mut stream = connect(backend, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    tokio::time::timeout(left, stream.write_all(preamble))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("writing the PROXY header timed out after {timeout:?}"),
            )
        })??;
    Ok(stream)
}

/// Relays a TLS client connection to the backend until both directions end, or nothing moves
/// for `idle`. `preamble` is sent to the backend first (the PROXY protocol header, or empty).
pub(crate) async fn serve<C>(
    client: C,
    peer: SocketAddr,
    backend: &Backend,
    preamble: &[u8],
    connect_timeout: Duration,
    idle: Duration,
    metrics: &Metrics,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match connect_with(backend, connect_timeout, preamble).await {
        Ok(s) => s,
        Err(error) => {
            metrics.backend_error(crate::metrics::BackendError::Connect);
            if let Some(suppressed) = CONNECT_LOG.ready() {
                tracing::warn!(%peer, backend = %backend, %error, suppressed, "backend connect failed");
            }
            return;
        }
    };
    match relay(client, upstream, idle).await {
        Ok((from_client, to_client)) => {
            metrics.tcp_bytes(from_client, to_client);
            debug!(%peer, from_client, to_client, "tcp relay finished");
        }
        Err(error) => debug!(%peer, %error, "tcp relay ended with error"),
    }
}

/// Relays bytes between `client` and `upstream` in both directions with half-close. Returns the
/// bytes moved (from client, to client).
pub(crate) async fn relay<C, U>(client: C, upstream: U, idle: Duration) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let client = Tracked::new(client, activity.clone());
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let both = async {
        tokio::try_join!(
            pipe(&mut client_r, &mut up_w),
            pipe(&mut up_r, &mut client_w)
        )
    };
    let watchdog = async {
        let mut tick = tokio::time::interval(tick_period(idle));
        loop {
            tick.tick().await;
            if activity.io_verdict(idle) == Verdict::Idle {
                return;
            }
        }
    };
    tokio::select! {
        res = both => res,
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}"))),
    }
}

/// Copies `r` into `w` until end of stream, then shuts `w` down. A TLS peer that closes TCP
/// without `close_notify` is treated as a normal end: for a byte relay truncation is the inner
/// protocol's concern, and many clients do it.
async fn pipe<R, W>(r: &mut R, w: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        total += n as u64;
    }
    // The other side may already be gone; its absence is not this direction's error.
    let _ = w.shutdown().await;
    Ok(total)
}

/// Runs `relay` and records the bytes it moved; for upgraded HTTP connections.
pub(crate) async fn relay_upgraded<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    metrics: Arc<Metrics>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match relay(client, upstream, idle).await {
        Ok((from_client, to_client)) => metrics.tcp_bytes(from_client, to_client),
        Err(error) => debug!(%error, "upgraded connection ended with error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// A client that sends `data`, then ends the way a TLS peer closing TCP without
    /// `close_notify` does (`UnexpectedEof`), and whose shutdown fails (it is gone).
    struct Truncating {
        data: Option<&'static [u8]>,
    }

    impl AsyncRead for Truncating {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.data.take() {
                Some(d) => {
                    buf.put_slice(d);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }

    impl AsyncWrite for Truncating {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
        }
    }

    #[tokio::test]
    async fn a_truncated_client_and_a_failed_shutdown_end_the_relay_normally() {
        let client = Truncating {
            data: Some(b"hello"),
        };
        let (upstream, mut backend) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(5)));
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello", "half-closed after the truncated end");
        backend.write_all(b"bye").await.expect("write");
        backend.shutdown().await.expect("shutdown");
        let moved = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ends")
            .expect("join")
            .expect("a normal end, not an error");
        assert_eq!(moved, (5, 3));
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut backend) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(5)));

        client_peer.write_all(b"ping").await.expect("write");
        client_peer.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        backend
            .read_to_end(&mut got)
            .await
            .expect("backend sees EOF after the data");
        assert_eq!(got, b"ping");

        backend
            .write_all(b"pong")
            .await
            .expect("backend answers after EOF");
        backend.shutdown().await.expect("close");
        let mut answer = Vec::new();
        client_peer
            .read_to_end(&mut answer)
            .await
            .expect("read answer");
        assert_eq!(answer, b"pong");
        assert_eq!(relay.await.expect("join").expect("relay ok"), (4, 4));
    }

    #[tokio::test]
    async fn the_preamble_reaches_the_backend_before_any_relayed_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backend: Backend = port.to_string().parse().expect("backend");
        let header = b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\r\n";
        let limit = Duration::from_secs(5);
        let (stream, accepted) = tokio::join!(
            connect_with(&backend, limit, header),
            tokio::time::timeout(limit, listener.accept())
        );
        let mut stream = stream.expect("connect and write");
        let (mut peer, _) = accepted.expect("in time").expect("accept");
        stream.write_all(b"hello").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        tokio::time::timeout(limit, peer.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, [&header[..], b"hello"].concat());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_closed() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _backend) = tokio::io::duplex(64);
        let err = relay(client, upstream, Duration::from_secs(3))
            .await
            .expect_err("idle timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
