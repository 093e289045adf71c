//! Mutual-TLS clients and what a test observes of them: a rustls client config presenting a
//! client certificate, the check that a refused client got nothing (an alert or EOF where a
//! response would be, since with TLS 1.3 the client learns of the refusal on its first read), and
//! a TCP backend that counts the connections the sidecar opened to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certdir::{write, CertsDir};
use crate::client::{provider, try_tls_connect};
use crate::issuer::{Issued, Spec, TestCa};
use crate::sidecar::{Sidecar, SidecarBuilder};
use crate::wait::{within, STEP};

/// A client config trusting `server_ca`, offering `alpn`, presenting `identity` if given.
pub fn client_config(
    server_ca: CertificateDer<'static>,
    alpn: &[&str],
    identity: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca).expect("add server CA to roots");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der.clone()], id.key_der())
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// How a refused client saw its refusal.
#[derive(Debug)]
pub enum Refusal {
    /// The handshake itself failed (TLS 1.2, or a TLS 1.3 server alert before the client finished).
    Handshake(std::io::Error),
    /// The handshake completed on the client's side, but its first read got an error (an alert).
    FirstRead(std::io::Error),
    /// The handshake completed on the client's side, but its first read got EOF.
    Eof,
}

impl Refusal {
    /// Whether the refusal was the TLS alert `name` (rustls's `AlertDescription`, e.g.
    /// `UnknownCA`, `CertificateExpired`, `CertificateRevoked`, `AccessDenied`), which tells the
    /// client why.
    pub fn is_alert(&self, name: &str) -> bool {
        format!("{self:?}").contains(&format!("AlertReceived({name})"))
    }
}

/// Connects with `config` and sends `request`; returns how the sidecar refused the client.
/// Panics if any byte of a response arrives: a refused client must get nothing.
pub async fn expect_refused(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    request: &[u8],
) -> Refusal {
    let connect = within(
        STEP,
        "TLS connect of a client the sidecar should refuse",
        try_tls_connect(addr, server_name, config),
    )
    .await;
    let mut tls = match connect {
        Ok(tls) => tls,
        Err(e) => return Refusal::Handshake(e),
    };
    // The write may already fail if the alert arrived; the read below is what decides.
    let _ = within(STEP, "write a request", tls.write_all(request)).await;
    let _ = within(STEP, "flush a request", tls.flush()).await;
    let mut buf = vec![0u8; 4096];
    match within(STEP, "the refused client's first read", tls.read(&mut buf)).await {
        Ok(0) => Refusal::Eof,
        Ok(n) => panic!(
            "a client that must be refused got {n} bytes back: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => Refusal::FirstRead(e),
    }
}

/// A TCP echo backend that counts accepted connections.
pub struct CountingEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl CountingEcho {
    /// Listens on an ephemeral loopback port.
    pub async fn start() -> CountingEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind counting echo");
        let addr = listener.local_addr().expect("counting echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        CountingEcho {
            addr,
            accepted,
            accept,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingEcho {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A server certificate for `localhost` from one CA, client certificates from another, in a
/// directory a sidecar reads: `server.crt`/`server.key` and `client-ca.pem`.
pub struct MtlsFixture {
    pub server_ca: TestCa,
    pub clients: TestCa,
    pub files: CertsDir,
    /// `client-ca.pem`: what `--client-ca` names.
    pub client_ca: std::path::PathBuf,
}

impl MtlsFixture {
    pub fn new() -> MtlsFixture {
        let server_ca = TestCa::new("server CA");
        let clients = TestCa::new("internal client CA");
        let files = CertsDir::new();
        files.flat("server", &server_ca.issue(&Spec::server(&["localhost"])));
        let client_ca = files.path().join("client-ca.pem");
        write(&client_ca, clients.pem());
        MtlsFixture {
            server_ca,
            clients,
            files,
            client_ca,
        }
    }

    /// A file of the fixture's directory.
    pub fn path(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    /// A sidecar with the server pair and `--client-ca`, in front of `backend`.
    pub fn sidecar(&self, backend: SocketAddr) -> SidecarBuilder {
        Sidecar::builder()
            .backend(backend)
            .arg("--cert")
            .arg(self.path("server.crt"))
            .arg("--key")
            .arg(self.path("server.key"))
            .arg("--client-ca")
            .arg(self.client_ca.display().to_string())
    }

    /// A client trusting the server CA, offering `alpn` and presenting `identity`.
    pub fn client(&self, identity: Option<&Issued>, alpn: &[&str]) -> Arc<ClientConfig> {
        client_config(self.server_ca.der(), alpn, identity)
    }

    /// A client certificate of the client CA.
    pub fn issue(&self, spec: Spec) -> Issued {
        self.clients.issue(&spec)
    }
}

impl Default for MtlsFixture {
    fn default() -> Self {
        Self::new()
    }
}
