//! Round-trip latency of one plain HTTP/1.1 client: N sequential `GET`s, each timed on its own.
//!
//! The load tools measure throughput under concurrency; this one measures what a single caller
//! waits per call, one request in flight, so a relay's added latency is not hidden behind
//! queueing. Each request is timed from just before it is sent (with `--new-connection`: before
//! the TCP connect) to the last byte of its body (`Content-Length`). Plain TCP only: it plays the
//! app, which never sees TLS. Prints one JSON line:
//! `{"requests": N, "errors": E, "p50_us": .., "p90_us": .., "p99_us": .., "max_us": ..}`.
//!
//! Synchronous std sockets on one thread: with one request in flight there is nothing to
//! overlap, and no runtime between the socket and the clock.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::{json_line, STEP_TIMEOUT};
use clap::Parser;

/// A response head larger than this is refused: the servers measured answer with a few hundred
/// bytes, so a bigger head means the tool is not talking to what it thinks.
const MAX_HEAD: usize = 16 * 1024;
/// A body larger than this is refused, for the same reason (the demo app echoes the request
/// head; bench-backend's largest is 1 MiB).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Sequential HTTP/1.1 GETs to one address, one in flight; per-request latency percentiles.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to call (plain HTTP).
    #[arg(long)]
    addr: SocketAddr,
    /// Timed requests.
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Requests sent before the timed ones and not counted (connection set-up, caches, a
    /// relay's first connection to its callee).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// A new TCP connection per request (`Connection: close`) instead of one keep-alive
    /// connection for all.
    #[arg(long)]
    new_connection: bool,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host header.
    #[arg(long, default_value = "bench")]
    host: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        cli.path,
        cli.host,
        if cli.new_connection {
            "Connection: close\r\n"
        } else {
            ""
        }
    );
    let mut client = Client {
        addr: cli.addr,
        new_connection: cli.new_connection,
        request: request.into_bytes(),
        conn: None,
    };
    let mut latencies = Vec::with_capacity(usize::try_from(cli.requests).unwrap_or(0));
    let mut errors = 0u64;
    let mut first_error = None;
    for i in 0..cli.warmup + cli.requests {
        let started = Instant::now();
        match client.call() {
            Ok(()) if i >= cli.warmup => latencies.push(started.elapsed()),
            Ok(()) => {}
            Err(e) => {
                // A failed request drops its connection: the next one starts afresh.
                client.conn = None;
                if i >= cli.warmup {
                    errors += 1;
                }
                if first_error.is_none() {
                    eprintln!("rtt: request {} to {}: {e:#}", i + 1, cli.addr);
                    first_error = Some(e);
                }
            }
        }
    }
    if latencies.is_empty() {
        let e = first_error.map_or_else(|| "no request made".to_string(), |e| format!("{e:#}"));
        bail!("every request to {} failed: {e}", cli.addr);
    }
    latencies.sort_unstable();
    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    println!(
        "{}",
        json_line(&[
            ("requests", cli.requests.into()),
            ("errors", errors.into()),
            ("p50_us", us(percentile(&latencies, 50.0)).into()),
            ("p90_us", us(percentile(&latencies, 90.0)).into()),
            ("p99_us", us(percentile(&latencies, 99.0)).into()),
            ("max_us", us(percentile(&latencies, 100.0)).into()),
        ])
    );
    Ok(())
}

/// The caller: one keep-alive connection kept between calls, or none with `new_connection`.
struct Client {
    addr: SocketAddr,
    new_connection: bool,
    request: Vec<u8>,
    conn: Option<Conn>,
}

impl Client {
    /// One request and its whole response, every step under [`STEP_TIMEOUT`].
    fn call(&mut self) -> Result<()> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => Conn::open(self.addr)?,
        };
        conn.stream
            .write_all(&self.request)
            .context("failed to send the request")?;
        let keep = conn.read_response()?;
        if self.new_connection {
            // The server closes after `Connection: close`; closing our side too, without
            // waiting for its FIN, keeps the wait out of the next request's time.
            let _ = conn.stream.shutdown(Shutdown::Both);
        } else if keep {
            self.conn = Some(conn);
        }
        Ok(())
    }
}

/// A connection and the bytes read past the last response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .with_context(|| format!("failed to connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Reads one response: its head, then `Content-Length` bytes of body. A status other than
    /// 200 is an error. Returns whether the connection may carry another request.
    fn read_response(&mut self) -> Result<bool> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            self.fill()?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        if head.status != 200 {
            bail!("status {}", head.status);
        }
        if head.content_length > MAX_BODY {
            bail!("body of {} bytes", head.content_length);
        }
        let end = head_end + head.content_length;
        while self.buf.len() < end {
            self.fill()?;
        }
        self.buf.drain(..end);
        Ok(!head.close)
    }

    /// Appends what the socket has; the end of the stream or the read timeout is an error
    /// (a response is always awaited when this is called).
    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = match self.stream.read(&mut chunk) {
            Ok(0) => bail!("connection closed before the whole response"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no response within {}s", STEP_TIMEOUT.as_secs())
            }
            Err(e) => return Err(e).context("failed to read the response"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// What a response head says about reading it.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: usize,
    /// `Connection: close` (or HTTP/1.0 without keep-alive): the server ends the connection.
    close: bool,
}

/// Parses a response head (status line and headers, up to and including the blank line). A
/// chunked or length-less body is refused: every server measured sends `Content-Length`.
fn parse_head(head: &[u8]) -> Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("invalid status line {status_line:?}"))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("invalid header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("invalid content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("transfer-encoding {value:?} not supported: expected a content-length");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let content_length =
        content_length.context("response without content-length (not supported)")?;
    Ok(Head {
        status,
        content_length,
        close,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The nearest-rank percentile of sorted values (`p = 100` is the maximum).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn head_with_length_and_keep_alive() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx: y\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: 12,
                close: false
            }
        );
    }

    #[test]
    fn head_close_and_errors() {
        let h = parse_head(b"HTTP/1.1 503 No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(h.close);
        assert_eq!(h.status, 503);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&v[..1], 50.0), Duration::from_micros(1));
    }

    #[test]
    fn keep_alive_reads_back_to_back_responses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            // Both answers in one write once both requests arrived: the reader must split them.
            while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nde")
                .unwrap();
        });
        let mut conn = Conn::open(addr).unwrap();
        conn.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(conn.read_response().unwrap());
        assert!(conn.read_response().unwrap());
        assert!(conn.buf.is_empty());
        server.join().unwrap();
    }
}
