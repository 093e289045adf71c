//! Full TLS 1.3 handshakes per second: every request on a new connection, resumption off.
//!
//! wrk with `Connection: close` reconnects with `SSL_clear`, which keeps the session and resumes
//! it, so it measures resumed handshakes; h2load has no per-request connection mode. Here each
//! request is a TCP connect, a full TLS 1.3 handshake (no session cache, no tickets on the
//! client), `GET PATH` with `Connection: close`, the whole response read, and a close.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::{client_config, connect_tls, json_line, server_name, Versions, STEP_TIMEOUT};
use clap::Parser;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// New TLS 1.3 connection per request, for a fixed time.
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
    /// Concurrent clients, each doing one connection after another.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Request path.
    #[arg(long, default_value = "/small")]
    path: String,
    /// Length of the timed run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let connector = TlsConnector::from(client_config(
        &cli.ca,
        Versions::Tls13,
        &["http/1.1"],
        false,
    )?);
    let name = server_name(&cli.server_name)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        cli.path, cli.server_name
    );
    let deadline = Instant::now() + Duration::from_secs_f64(cli.duration);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let (connector, name, request, addr) = (
            connector.clone(),
            name.clone(),
            request.clone(),
            cli.connect,
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                match one(addr, &connector, &name, request.as_bytes()).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("handshakes: {e:#}");
                        }
                        errors += 1;
                    }
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (o, e) = t.await.context("client task panicked")?;
        ok += o;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json_line(&[
            ("handshakes", ok.into()),
            ("seconds", secs.into()),
            ("handshakes_per_sec", (ok as f64 / secs).into()),
            ("errors", errors.into()),
        ])
    );
    Ok(())
}

/// One connection: full handshake, one request, the whole response.
async fn one(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    request: &[u8],
) -> Result<()> {
    let mut tls = connect_tls(addr, connector, name).await?;
    let (_, conn) = tls.get_ref();
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        bail!("negotiated {:?}, not TLS 1.3", conn.protocol_version());
    }
    let mut response = Vec::with_capacity(512);
    tokio::time::timeout(STEP_TIMEOUT, async {
        tls.write_all(request).await?;
        tls.flush().await?;
        // Servers that close without close_notify end in UnexpectedEof: the bytes are what count.
        match tls.read_to_end(&mut response).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
    .context("request timed out")?
    .context("request failed")?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(64)])
        );
    }
    Ok(())
}
