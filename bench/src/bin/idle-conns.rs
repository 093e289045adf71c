//! Opens N TLS connections, completes their handshakes (and with `--request`, one keep-alive
//! request each), then holds them idle so `bench/run` can read the terminator's RSS. Prints one
//! JSON line once all are open, then waits for `--hold` seconds (or to be killed) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::{client_config, connect_tls, json_line, server_name, Versions, STEP_TIMEOUT};
use clap::Parser;
use std::io::Write;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// Handshakes in flight at once while opening: enough to be quick, few enough not to overflow
/// a contender's listen backlog.
const OPEN_CONCURRENCY: usize = 64;

/// Hold N idle TLS connections open.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address of the contender.
    #[arg(long)]
    connect: SocketAddr,
    /// PEM certificate to trust (the bench certificate).
    #[arg(long, default_value = "cert.pem")]
    ca: PathBuf,
    /// Server name to send and verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// ALPN protocol to offer (the one a browser would get in http mode).
    #[arg(long, default_value = "http/1.1")]
    alpn: String,
    /// Seconds to hold them once open, at most.
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
    /// Path to `GET` once on each connection (HTTP/1.1 keep-alive) before holding it, so the
    /// terminator has proxied a request on every connection it holds [default: none].
    #[arg(long)]
    request: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let connector = TlsConnector::from(client_config(
        &cli.ca,
        Versions::Any,
        &[cli.alpn.as_str()],
        true,
    )?);
    let name = server_name(&cli.server_name)?;
    let request: Option<Arc<[u8]>> = cli.request.as_ref().map(|path| {
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", cli.server_name)
            .into_bytes()
            .into()
    });
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let (connector, name, permits, addr, request) = (
            connector.clone(),
            name.clone(),
            permits.clone(),
            cli.connect,
            request.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut tls = connect_tls(addr, &connector, &name).await?;
            if let Some(request) = request {
                tokio::time::timeout(STEP_TIMEOUT, async {
                    tls.write_all(&request).await?;
                    read_response(&mut tls).await
                })
                .await
                .context("request timed out")??;
            }
            anyhow::Ok(tls)
        }));
    }
    let mut open = Vec::with_capacity(cli.connections);
    let mut failed = 0u64;
    for t in tasks {
        match t.await.context("connect task panicked")? {
            Ok(s) => open.push(s),
            Err(e) => {
                if failed == 0 {
                    eprintln!("idle-conns: {e:#}");
                }
                failed += 1;
            }
        }
    }
    println!(
        "{}",
        json_line(&[
            ("open", (open.len() as u64).into()),
            ("failed", failed.into()),
            ("seconds_to_open", started.elapsed().as_secs_f64().into()),
        ])
    );
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(cli.hold)).await;
    drop(open);
    Ok(())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body, leaving the connection reusable.
async fn read_response(rd: &mut (impl AsyncRead + Unpin)) -> Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!(
                    "unexpected response: {}",
                    head.lines().next().unwrap_or_default()
                );
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("response without content-length")?
                .trim()
                .parse()
                .context("invalid content-length")?;
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = rd.read(&mut chunk).await.context("read response")?;
        if n == 0 {
            bail!("connection closed before the response was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
