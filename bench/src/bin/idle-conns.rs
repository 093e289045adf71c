//! Opens N TLS connections, completes their handshakes, then holds them idle so `bench/run` can
//! read the terminator's RSS. Prints one JSON line once all are open, then waits for `--hold`
//! seconds (or to be killed) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bench::{client_config, connect_tls, json_line, server_name, Versions};
use clap::Parser;
use std::io::Write;
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
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let (connector, name, permits, addr) = (
            connector.clone(),
            name.clone(),
            permits.clone(),
            cli.connect,
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            connect_tls(addr, &connector, &name).await
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
