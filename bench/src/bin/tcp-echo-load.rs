//! Echo round trips over N connections (TLS or plain) for a fixed time: round trips/s and MB/s.
//!
//! Each connection writes `--size` bytes and reads them back, over and over, one message in
//! flight per connection: small messages measure per-message cost (round trips/s), large ones
//! throughput (MB/s = echoed payload bytes received per second, 10^6 bytes per MB).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bench::{
    client_config, connect_tcp, connect_tls, json_line, server_name, Versions, STEP_TIMEOUT,
};
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Echo round trips through a TLS terminator in tcp mode (or plain, for the baseline).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address of the contender (or of the echo backend with --plain).
    #[arg(long)]
    connect: SocketAddr,
    /// Speak plain TCP instead of TLS (the baseline).
    #[arg(long)]
    plain: bool,
    /// PEM certificate to trust (the bench certificate).
    #[arg(long, default_value = "cert.pem")]
    ca: PathBuf,
    /// Server name to send and verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Length of the timed run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let connector = TlsConnector::from(client_config(&cli.ca, Versions::Any, &[], true)?);
    let name = server_name(&cli.server_name)?;
    let deadline = Instant::now() + Duration::from_secs_f64(cli.duration);
    let mut tasks = Vec::with_capacity(cli.connections);
    let started = Instant::now();
    for _ in 0..cli.connections {
        let (connector, name, plain, size, addr) = (
            connector.clone(),
            name.clone(),
            cli.plain,
            cli.size,
            cli.connect,
        );
        tasks.push(tokio::spawn(async move {
            if plain {
                round_trips(connect_tcp(addr).await?, size, deadline).await
            } else {
                round_trips(connect_tls(addr, &connector, &name).await?, size, deadline).await
            }
        }));
    }
    let (mut total, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await.context("connection task panicked")? {
            Ok(n) => total += n,
            Err(e) => {
                errors += 1;
                eprintln!("tcp-echo-load: {e:#}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json_line(&[
            ("round_trips", total.into()),
            ("seconds", secs.into()),
            ("round_trips_per_sec", (total as f64 / secs).into()),
            (
                "mb_per_sec",
                (total as f64 * cli.size as f64 / secs / 1e6).into()
            ),
            ("errors", errors.into()),
        ])
    );
    Ok(())
}

/// Round trips on one connection until `deadline`.
async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    size: usize,
    deadline: Instant,
) -> Result<u64> {
    let out = vec![0x5a; size];
    let mut back = vec![0; size];
    let mut n = 0u64;
    while Instant::now() < deadline {
        tokio::time::timeout(STEP_TIMEOUT, async {
            s.write_all(&out).await?;
            s.flush().await?;
            s.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .context("round trip timed out")?
        .context("round trip failed")?;
        n += 1;
    }
    let _ = s.shutdown().await;
    Ok(n)
}
