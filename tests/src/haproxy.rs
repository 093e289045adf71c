//! A real consumer of the PROXY protocol: Debian's HAProxy as an HTTP backend that accepts the
//! header (`bind ... accept-proxy`) and answers every request with what the header told it:
//! `src=<ip> src_port=<port> dst=<ip> dst_port=<port> authority=<SNI from the v2 TLV>`.
//!
//! It runs as a child process on a free loopback port with its own configuration in a temporary
//! directory, killed when the value is dropped. A missing `haproxy` binary fails the test with
//! the package to install (`.ci/run` installs it): never a silent skip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tmp::TempDir;
use crate::wait::{poll_until_async, STEP};

/// The HAProxy child and its configuration directory.
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy accepting PROXY v1 or v2 (it detects which) on a free loopback port and
    /// waits until it accepts connections.
    pub async fn accept_proxy() -> Haproxy {
        let version = Command::new("haproxy")
            .arg("-v")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "haproxy is needed as the real PROXY protocol consumer but cannot be run \
                     ({e}): install it with `apt-get install -y haproxy` (.ci/run does)"
                )
            });
        assert!(
            version.status.success(),
            "haproxy -v failed: {}",
            String::from_utf8_lossy(&version.stderr)
        );
        let addr = free_loopback_port();
        let dir = TempDir::new("haproxy");
        let config = dir.write(
            "haproxy.cfg",
            format!(
                "global\n\
                 \x20 maxconn 64\n\
                 defaults\n\
                 \x20 mode http\n\
                 \x20 timeout connect 5s\n\
                 \x20 timeout client 30s\n\
                 \x20 timeout server 30s\n\
                 frontend pp\n\
                 \x20 bind {addr} accept-proxy\n\
                 \x20 http-request return status 200 content-type text/plain lf-string \
                 \"src=%[src] src_port=%[src_port] dst=%[dst] dst_port=%[dst_port] \
                 authority=%[fc_pp_authority]\"\n"
            ),
        );
        // -db: stay in the foreground (the child is ours to kill); -W would fork a master.
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Haproxy {
            child,
            addr,
            _dir: dir,
        };
        poll_until_async(STEP * 2, "haproxy to accept connections", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        if let Ok(Some(status)) = haproxy.child.try_wait() {
            panic!("haproxy exited at start: {status}");
        }
        haproxy
    }

    /// Where HAProxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HAProxy's version line (`HAProxy version 2.6.12-1+deb12u4 ...`), for test messages.
    pub fn version() -> String {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of HAProxy's answer: `src=127.0.0.1 src_port=...` into a map.
pub fn fields(body: &str) -> HashMap<String, String> {
    body.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A loopback port nobody listens on now, from below the ephemeral range
/// ([`crate::sidecar::free_port`]).
fn free_loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::sidecar::free_port()))
}

/// How long a test waits for HAProxy's answer through the sidecar.
pub const ANSWER: Duration = Duration::from_secs(10);
