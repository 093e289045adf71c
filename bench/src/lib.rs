//! Shared pieces of the load tools: the TLS client configuration (aws-lc-rs, the bench certificate
//! as the only root), connecting with a deadline, and the one-line JSON result they print.
//!
//! The tools print exactly one JSON object on stdout so `bench/run` can parse it without a
//! JSON dependency on either side; diagnostics go to stderr.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Any single step (connect, handshake, one round trip) slower than this is counted as an
/// error: on loopback even a saturated contender answers well within it, and a hung peer must
/// not stretch a bounded run.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Versions {
    /// TLS 1.3 only: the handshake scenario measures TLS 1.3 handshakes, nothing else.
    Tls13,
    /// TLS 1.2 and 1.3, as a default client would.
    Any,
}

/// The client side of the bench: trusts only the bench certificate, aws-lc-rs as the provider.
///
/// `resume = false` turns session resumption off, so every connection is a full handshake
/// (the reason the bench has its own handshake tool: wrk resumes sessions on reconnect).
pub fn client_config(
    ca: &Path,
    versions: Versions,
    alpn: &[&str],
    resume: bool,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("failed to read certificate {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("failed to parse {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("failed to trust {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("no certificate in {}", ca.display());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        Versions::Tls13 => builder.with_protocol_versions(&[&rustls::version::TLS13]),
        Versions::Any => builder.with_safe_default_protocol_versions(),
    }
    .context("failed to select TLS versions")?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The server name the bench certificate is issued for.
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).with_context(|| format!("invalid server name {name}"))
}

/// TCP connect with `TCP_NODELAY` (every contender sets it towards clients), under
/// [`STEP_TIMEOUT`].
pub async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP connect and a complete TLS handshake, under [`STEP_TIMEOUT`] each.
pub async fn connect_tls(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = connect_tcp(addr).await?;
    tokio::time::timeout(STEP_TIMEOUT, connector.connect(name.clone(), tcp))
        .await
        .with_context(|| format!("tls handshake with {addr} timed out"))?
        .with_context(|| format!("tls handshake with {addr} failed"))
}

/// One flat JSON object, keys in the given order; values are numbers or strings.
pub fn json_line(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            Value::Num(n) if n.is_finite() => format!("\"{k}\": {n}"),
            Value::Num(_) => format!("\"{k}\": null"),
            Value::Str(s) => format!(
                "\"{k}\": \"{}\"",
                s.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        })
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// A value of [`json_line`].
pub enum Value {
    Num(f64),
    Str(String),
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Num(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Num(n as f64)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_escapes_and_orders() {
        let line = json_line(&[
            ("a", 1.5.into()),
            ("b", "x\"y".into()),
            ("c", f64::NAN.into()),
        ]);
        assert_eq!(line, r#"{"a": 1.5, "b": "x\"y", "c": null}"#);
    }
}
