//! One request, one answer, over UDP or TCP, every step bounded; and the system's resolvers.
//!
//! UDP first (RFC 1035 section 4.2.1): a socket connected to the server, a random ID, the
//! request sent up to [`UDP_TRIES`] times, [`UDP_TRY`] each. A datagram that is not the answer
//! (another ID, another question, garbage) is ignored, not taken as the answer: anyone can
//! send one. An answer with the TC bit set is asked again over TCP (RFC 7766), with its 2-byte
//! length prefix, under [`TCP_TIMEOUT`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, timeout_at, Instant};

use super::wire::{self, Message, WireError};

/// How long one UDP try waits for its answer: a server across the world answers in well under
/// a second; a lost datagram is sent again after this.
const UDP_TRY: Duration = Duration::from_secs(2);
/// How many times a UDP request is sent before the server counts as not answering.
const UDP_TRIES: usize = 3;
/// The whole of a TCP exchange: connect, send, the answer.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest UDP answer read: without EDNS a server sends at most 512 bytes and sets TC
/// beyond; some send more anyway.
const UDP_BUFFER: usize = 4096;

/// Where the system's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The largest resolv.conf read: a real one has a few lines.
const MAX_RESOLV_CONF: u64 = 64 * 1024;
/// The resolvers taken from resolv.conf: glibc's `MAXNS`, so the same ones it uses.
const MAX_RESOLVERS: usize = 3;
/// The port of every server found by name (resolv.conf, NS records).
pub(crate) const DNS_PORT: u16 = 53;

/// Why there is no answer.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Nothing answered in time.
    Timeout,
    Io(io::Error),
    /// Only bytes that are not a DNS answer came back.
    Malformed(WireError),
    /// The request could not be encoded (a name too long).
    Encode(WireError),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("no answer (timeout)"),
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Malformed(e) => write!(f, "a malformed answer: {e}"),
            ExchangeError::Encode(e) => write!(f, "cannot ask: {e}"),
        }
    }
}

/// An answer: its bytes (what a TSIG covers) and what they say.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) bytes: Vec<u8>,
    pub(crate) message: Message,
}

/// A random message ID (RFC 5452: the ID is half of what makes a forged answer hard to land).
pub(crate) fn random_id() -> u16 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut id = [0u8; 2];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut id).is_err() {
        // The system's randomness failing is not a reason to give up a lookup; the clock's
        // nanoseconds are the fallback.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return nanos as u16;
    }
    u16::from_be_bytes(id)
}

/// Asks `server` for `name`'s `qtype` records (`rd`: recursion desired, for a resolver).
pub(crate) async fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    rd: bool,
) -> Result<Message, ExchangeError> {
    let request = wire::query(random_id(), name, qtype, rd).map_err(ExchangeError::Encode)?;
    Ok(exchange(server, &request).await?.message)
}

/// Sends `request` over UDP, and again over TCP when the answer is truncated.
pub(crate) async fn exchange(server: SocketAddr, request: &[u8]) -> Result<Reply, ExchangeError> {
    let asked = Message::parse(request).map_err(ExchangeError::Encode)?;
    let reply = udp(server, request, &asked).await?;
    if reply.message.header.tc {
        return tcp(server, request, TCP_TIMEOUT).await;
    }
    Ok(reply)
}

/// Whether `got` answers `asked`: its ID, a response, the same opcode, and the same question
/// (an error answer may leave the question out).
fn answers(asked: &Message, got: &Message) -> bool {
    got.header.id == asked.header.id
        && got.header.qr
        && got.header.opcode == asked.header.opcode
        && (got.questions.is_empty() || got.questions == asked.questions)
}

async fn udp(server: SocketAddr, request: &[u8], asked: &Message) -> Result<Reply, ExchangeError> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(ExchangeError::Io)?;
    socket.connect(server).await.map_err(ExchangeError::Io)?;
    let mut buf = vec![0u8; UDP_BUFFER];
    let mut last = ExchangeError::Timeout;
    for _ in 0..UDP_TRIES {
        let deadline = Instant::now() + UDP_TRY;
        match timeout_at(deadline, socket.send(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                last = ExchangeError::Io(e);
                continue;
            }
            Err(_) => continue,
        }
        loop {
            match timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP port unreachable (nothing listens there), reported on the connected
                // socket: the next try may find the server started.
                Ok(Err(e)) => {
                    last = ExchangeError::Io(e);
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Ok(n)) => match Message::parse(&buf[..n]) {
                    Ok(message) if answers(asked, &message) => {
                        return Ok(Reply {
                            bytes: buf[..n].to_vec(),
                            message,
                        })
                    }
                    Ok(_) => {}
                    Err(e) => last = ExchangeError::Malformed(e),
                },
            }
        }
    }
    Err(last)
}

/// Sends `request` over TCP and reads the answer, all within `limit`.
pub(crate) async fn tcp(
    server: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> Result<Reply, ExchangeError> {
    let asked = Message::parse(request).map_err(ExchangeError::Encode)?;
    let Ok(len) = u16::try_from(request.len()) else {
        return Err(ExchangeError::Encode(WireError(
            "a request longer than 65535 bytes".into(),
        )));
    };
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        // The length prefix bounds the answer at 65535 bytes.
        let len = stream.read_u16().await?;
        let mut bytes = vec![0u8; usize::from(len)];
        stream.read_exact(&mut bytes).await?;
        Ok::<_, io::Error>(bytes)
    };
    let bytes = match timeout(limit, exchange).await {
        Err(_) => return Err(ExchangeError::Timeout),
        Ok(Err(e)) => return Err(ExchangeError::Io(e)),
        Ok(Ok(bytes)) => bytes,
    };
    let message = Message::parse(&bytes).map_err(ExchangeError::Malformed)?;
    if !answers(&asked, &message) {
        return Err(ExchangeError::Malformed(WireError(
            "an answer to another request".into(),
        )));
    }
    Ok(Reply { bytes, message })
}

/// The system's resolvers: the `nameserver` lines of /etc/resolv.conf, at port 53.
pub(crate) async fn system_resolvers() -> Result<Vec<SocketAddr>, String> {
    let path = Path::new(RESOLV_CONF);
    let bytes = shared::fs::read_async(path, MAX_RESOLV_CONF)
        .await
        .map_err(|e| format!("cannot read {RESOLV_CONF} ({e})"))?;
    let resolvers = parse_resolv_conf(&String::from_utf8_lossy(&bytes));
    if resolvers.is_empty() {
        return Err(format!("no nameserver in {RESOLV_CONF}"));
    }
    Ok(resolvers)
}

/// The addresses of resolv.conf's `nameserver` lines (the first [`MAX_RESOLVERS`]); a link-local
/// IPv6 address with a zone (`fe80::1%eth0`) is skipped.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|addr| addr.parse::<IpAddr>().ok())
        })
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .take(MAX_RESOLVERS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::dns::wire::{Builder, Header, RData, Section, CLASS_IN, TYPE_TXT};

    #[test]
    fn resolv_conf_gives_up_to_three_servers() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.1\n\
                    nameserver   2001:db8::1 \nnameserver fe80::1%eth0\n\
                    options ndots:2\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        let servers = parse_resolv_conf(text);
        assert_eq!(
            servers,
            [
                "10.0.0.1:53".parse().expect("addr"),
                "[2001:db8::1]:53".parse().expect("addr"),
                "10.0.0.2:53".parse().expect("addr"),
            ]
        );
        assert!(parse_resolv_conf("search x\n").is_empty());
    }

    fn answer(id: u16, name: &str, tc: bool) -> Vec<u8> {
        let mut m = Builder::new(Header {
            id,
            qr: true,
            tc,
            ..Header::default()
        });
        m.question(name, TYPE_TXT, CLASS_IN).expect("encodes");
        if !tc {
            m.record(Section::Answer, name, (TYPE_TXT, CLASS_IN, 5), b"\x02ok")
                .expect("encodes");
        }
        m.finish()
    }

    /// A server that first sends strays (another ID, another name, garbage), then the answer
    /// with TC set; its TCP side gives the whole answer.
    #[tokio::test]
    async fn strays_are_ignored_and_truncation_goes_to_tcp() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = udp.local_addr().expect("addr");
        let tcp_listener = tokio::net::TcpListener::bind(addr).await.expect("bind tcp");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = udp.recv_from(&mut buf).await.expect("recv");
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            for stray in [
                answer(id.wrapping_add(1), "a.test", false),
                answer(id, "b.test", false),
                b"garbage".to_vec(),
                answer(id, "a.test", true),
            ] {
                udp.send_to(&stray, peer).await.expect("send");
            }
            let _ = n;
        });
        tokio::spawn(async move {
            let (mut stream, _) = tcp_listener.accept().await.expect("accept");
            let len = stream.read_u16().await.expect("len");
            let mut request = vec![0; usize::from(len)];
            stream.read_exact(&mut request).await.expect("request");
            let id = u16::from_be_bytes([request[0], request[1]]);
            let reply = answer(id, "a.test", false);
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await.expect("send");
        });
        let m = timeout(
            Duration::from_secs(10),
            query(addr, "a.test", TYPE_TXT, true),
        )
        .await
        .expect("in time")
        .expect("answered");
        assert!(!m.header.tc);
        assert_eq!(m.answers[0].data, RData::Txt(b"ok".to_vec()));
    }
}
