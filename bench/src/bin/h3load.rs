//! HTTP/3 requests per second: h2load's `-c N -m M` shape over QUIC, which Debian's h2load
//! (built without ngtcp2) cannot do. N connections, each with M request streams in flight, one
//! `GET PATH` after another per stream, every response read to its end; after a warm-up, the
//! requests completed within the timed run are counted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::{client_config, json_line, Versions, STEP_TIMEOUT};
use bytes::{Buf, Bytes};
use clap::Parser;

/// Concurrent HTTP/3 streams over a few QUIC connections, for a fixed time.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// UDP address of the contender.
    #[arg(long)]
    connect: SocketAddr,
    /// PEM certificate to trust (the bench certificate).
    #[arg(long, default_value = "cert.pem")]
    ca: PathBuf,
    /// Server name to send and verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// QUIC connections.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Request streams in flight per connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Request path.
    #[arg(long, default_value = "/small")]
    path: String,
    /// Seconds of load before the timed run (not counted).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Length of the timed run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Counts of the timed run, shared by every stream.
#[derive(Default)]
struct Counts {
    counting: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    non_2xx: AtomicU64,
    bytes: AtomicU64,
}

// Two threads, as h2load's `-t2`: the load must not be what limits the contender.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let tls = client_config(&cli.ca, Versions::Tls13, &["h3"], false)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("the client TLS configuration cannot do QUIC")?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let uri: http::Uri = format!("https://{}{}", cli.server_name, cli.path)
        .parse()
        .context("invalid request path")?;
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let counting_at = start + Duration::from_secs_f64(cli.warmup);
    let end = counting_at + Duration::from_secs_f64(cli.duration);
    let mut conns = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let bind: SocketAddr = if cli.connect.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("client UDP socket")?;
        endpoint.set_default_client_config(client.clone());
        let conn = tokio::time::timeout(
            STEP_TIMEOUT,
            endpoint
                .connect(cli.connect, &cli.server_name)
                .context("QUIC connect")?,
        )
        .await
        .context("QUIC handshake timed out")?
        .context("QUIC handshake failed")?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .context("HTTP/3 connection setup")?;
        let drive = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        conns.push((endpoint, sender, drive));
    }
    let mut tasks = Vec::new();
    for (_, sender, _) in &conns {
        for _ in 0..cli.streams {
            let (sender, uri, counts) = (sender.clone(), uri.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let counting = Instant::now() >= counting_at;
                    let res = tokio::time::timeout(STEP_TIMEOUT, one(sender.clone(), &uri)).await;
                    if !counting {
                        continue;
                    }
                    match res {
                        Ok(Ok((status, bytes))) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            counts.bytes.fetch_add(bytes, Ordering::Relaxed);
                            if !(200..300).contains(&status) {
                                counts.non_2xx.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Err(e)) => {
                            if counts.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("h3load: {e:#}");
                            }
                        }
                        Err(_) => {
                            if counts.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("h3load: a request timed out");
                            }
                        }
                    }
                }
            }));
        }
    }
    counts.counting.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("client task panicked")?;
    }
    let secs = Instant::now()
        .saturating_duration_since(counting_at)
        .as_secs_f64()
        .max(f64::MIN_POSITIVE);
    for (endpoint, _, drive) in conns {
        endpoint.close(0u32.into(), b"");
        drive.abort();
    }
    let ok = counts.ok.load(Ordering::Relaxed);
    println!(
        "{}",
        json_line(&[
            ("succeeded", ok.into()),
            ("failed", counts.failed.load(Ordering::Relaxed).into()),
            ("non_2xx", counts.non_2xx.load(Ordering::Relaxed).into()),
            ("bytes", counts.bytes.load(Ordering::Relaxed).into()),
            ("seconds", secs.into()),
            ("req_per_sec", (ok as f64 / secs).into()),
            ("protocol", bench::Value::Str("h3".to_string())),
        ])
    );
    Ok(())
}

/// One request on a new stream: its status and the body bytes read.
async fn one(mut sender: Sender, uri: &http::Uri) -> Result<(u16, u64)> {
    let req = http::Request::get(uri.clone()).body(())?;
    let mut stream = sender.send_request(req).await.context("send request")?;
    // A server that answers before it read the end of the request asks the client to stop
    // sending (H3_NO_ERROR): the response still comes.
    let _ = stream.finish().await;
    let resp = stream.recv_response().await.context("response head")?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.recv_data().await.context("response body")? {
        bytes += chunk.remaining() as u64;
    }
    let status = resp.status().as_u16();
    if status == 0 {
        bail!("no status");
    }
    Ok((status, bytes))
}
