//! The successor's side (`--take-over`): ask the sidecar running on the same listen address for
//! its listening sockets, check each one, and once everything is loaded and bound, say `Ready`
//! and accept. Until then the running sidecar serves alone; if this one fails or is too slow,
//! it exits and the running one notices nothing but a closed connection.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::{ipproto, sockopt, AddressFamily, SocketType};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::channel::{self, RecvError};
use super::wire::Message;
use super::ACK_WAIT;
use crate::config::Config;
use crate::error::TakeOverError;
use crate::listeners::{Entry, Handed};

/// Between attempts to connect while the running sidecar's queue of connections is full.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// A take-over under way: the running sidecar's listeners received and checked, `Ready` not
/// sent yet. Made by `sidecar::take_over`, used by `sidecar::listen` and `sidecar::run`.
#[derive(Debug)]
pub struct TakeOver {
    stream: UnixStream,
    deadline: Instant,
    timeout: Duration,
    /// The running sidecar's process id.
    pid: u32,
    handed: Handed,
    /// How many handed listeners this sidecar serves.
    used: usize,
}

/// The sidecar taken over from, once `Ready` was sent: it answers `Done` when it stopped
/// accepting.
#[derive(Debug)]
pub(crate) struct Predecessor {
    stream: UnixStream,
    pid: u32,
}

/// Asks the sidecar running on `config.listen` for its listeners, when `--take-over` is given;
/// `None` without the flag or when no sidecar answers there.
pub(crate) async fn start(config: &Config) -> Result<Option<TakeOver>, TakeOverError> {
    if !config.take_over {
        return Ok(None);
    }
    let name = shared::handover::socket_name(config.listen);
    let timeout = config.take_over_timeout;
    let deadline = Instant::now() + timeout;
    let Some(mut stream) = reach(&name, deadline, timeout).await? else {
        info!(socket = %name, "no running sidecar to take over from; binding the listeners");
        return Ok(None);
    };
    check_peer(&stream)?;
    let hello = Message::Hello { timeout };
    channel::send(&mut stream, &hello, &[], deadline)
        .await
        .map_err(|source| io_failure(source, "asking for the listeners", timeout))?;
    let waiting = "waiting for the listeners";
    let received = channel::recv(&stream, deadline)
        .await
        .map_err(|e| recv_failure(e, waiting, timeout))?;
    let (pid, handed) = match received.message {
        Message::Listeners { pid, entries } => (pid, adopt_all(entries, received.fds)?),
        Message::Refused(why) => return Err(TakeOverError::Refused(why)),
        other => return Err(unexpected(&other, waiting)),
    };
    debug!(
        predecessor_pid = pid,
        listeners = handed.len(),
        "received the running sidecar's listeners"
    );
    Ok(Some(TakeOver {
        stream,
        deadline,
        timeout,
        pid,
        handed,
        used: 0,
    }))
}

/// Connects to the hand-over socket `name`; `None` when nothing holds it.
async fn reach(
    name: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<UnixStream>, TakeOverError> {
    loop {
        let error = match channel::connect(name) {
            Ok(stream) => return Ok(Some(stream)),
            Err(e) => e,
        };
        match error.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            std::io::ErrorKind::WouldBlock if Instant::now() < deadline => {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            std::io::ErrorKind::WouldBlock => {
                return Err(TakeOverError::TimedOut {
                    waiting: "connecting to the running sidecar",
                    after: timeout,
                })
            }
            _ => {
                return Err(TakeOverError::Connect {
                    name: name.to_string(),
                    source: error,
                })
            }
        }
    }
}

/// The process holding the hand-over socket must run as this sidecar's user: listeners from
/// anyone else are not taken.
fn check_peer(stream: &UnixStream) -> Result<(), TakeOverError> {
    let peer = stream
        .peer_cred()
        .map_err(|source| TakeOverError::Io {
            waiting: "checking the running sidecar's user",
            source,
        })?
        .uid();
    let own = channel::own_uid();
    if !channel::peer_allowed(peer, own) {
        return Err(TakeOverError::OtherUser { peer, own });
    }
    Ok(())
}

/// Checks every handed socket against what it was said to be.
fn adopt_all(entries: Vec<Entry>, fds: Vec<OwnedFd>) -> Result<Handed, TakeOverError> {
    if entries.len() != fds.len() {
        return Err(TakeOverError::Protocol(format!(
            "{} sockets for {} listeners",
            fds.len(),
            entries.len()
        )));
    }
    entries
        .into_iter()
        .zip(fds)
        .map(|(entry, fd)| adopt(entry, fd).map(|l| (entry, l)))
        .collect()
}

/// `fd` as a listener, if it is a listening TCP socket bound to `entry`'s address.
fn adopt(entry: Entry, fd: OwnedFd) -> Result<std::net::TcpListener, TakeOverError> {
    let bad = |reason: String| TakeOverError::BadListener {
        role: entry.role.as_str(),
        addr: entry.addr,
        reason,
    };
    let fact = |r: rustix::io::Result<bool>, what: &str| match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad(format!("not {what}"))),
        Err(e) => Err(bad(format!("not a socket ({e})"))),
    };
    let ip = |f: AddressFamily| f == AddressFamily::INET || f == AddressFamily::INET6;
    fact(sockopt::socket_domain(&fd).map(ip), "an IP socket")?;
    let stream = sockopt::socket_type(&fd).map(|t| t == SocketType::STREAM);
    fact(stream, "a stream socket")?;
    let tcp = sockopt::socket_protocol(&fd).map(|p| p == Some(ipproto::TCP));
    fact(tcp, "a TCP socket")?;
    fact(sockopt::socket_acceptconn(&fd), "listening")?;
    let listener = std::net::TcpListener::from(fd);
    match listener.local_addr() {
        Ok(actual) if actual == entry.addr => Ok(listener),
        Ok(actual) => Err(bad(format!("it listens on {actual}"))),
        Err(e) => Err(bad(format!("no local address ({e})"))),
    }
}

impl TakeOver {
    /// The checked listening sockets, for `listeners::open` (once).
    pub(crate) fn take_handed(&mut self) -> Handed {
        std::mem::take(&mut self.handed)
    }

    /// How many of the handed listeners this sidecar serves.
    pub(crate) fn set_used(&mut self, used: usize) {
        self.used = used;
    }

    /// Tells the running sidecar that this one is ready to accept (it stops accepting and
    /// drains), unless it gave up meanwhile or a shutdown was asked for: then nothing is sent
    /// and this one must not accept. `None` after a shutdown request.
    pub(crate) async fn ready(
        mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Predecessor>, TakeOverError> {
        if shutdown.is_cancelled() {
            info!(
                "shutdown requested before the take-over completed; the running sidecar serves on"
            );
            return Ok(None);
        }
        if Instant::now() >= self.deadline {
            return Err(TakeOverError::NotReady(self.timeout));
        }
        self.still_there().await?;
        channel::send(&mut self.stream, &Message::Ready, &[], self.deadline)
            .await
            .map_err(|source| io_failure(source, "saying it is ready", self.timeout))?;
        info!(
            predecessor_pid = self.pid,
            "took over {} listeners from the running sidecar", self.used
        );
        Ok(Some(Predecessor {
            stream: self.stream,
            pid: self.pid,
        }))
    }

    /// Fails when the running sidecar closed the hand-over or refused it (its own timeout, its
    /// shutdown) while this one was getting ready.
    async fn still_there(&self) -> Result<(), TakeOverError> {
        let waiting = "this sidecar was getting ready";
        match channel::peek(&self.stream) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Ok(0) => Err(TakeOverError::Closed { waiting }),
            Err(source) => Err(TakeOverError::Io { waiting, source }),
            Ok(_) => {
                let soon = Instant::now() + ACK_WAIT;
                match channel::recv(&self.stream, soon).await {
                    Ok(r) => match r.message {
                        Message::Refused(why) => Err(TakeOverError::Refused(why)),
                        other => Err(unexpected(&other, waiting)),
                    },
                    Err(e) => Err(recv_failure(e, waiting, ACK_WAIT)),
                }
            }
        }
    }
}

impl Predecessor {
    /// Waits (a little) for the sidecar taken over from to say it stopped accepting; logs
    /// when it does not.
    pub(crate) async fn acknowledged(self) {
        let answer = channel::recv(&self.stream, Instant::now() + ACK_WAIT).await;
        match answer.map(|r| r.message) {
            Ok(Message::Done) => debug!(
                predecessor_pid = self.pid,
                "the sidecar taken over from stopped accepting"
            ),
            Ok(Message::Refused(reason)) => warn!(
                predecessor_pid = self.pid,
                %reason,
                "the sidecar taken over from gave up on the take-over as this one got ready; both may be serving"
            ),
            Ok(other) => warn!(
                predecessor_pid = self.pid,
                message = other.name(),
                "unexpected answer to ready from the sidecar taken over from"
            ),
            Err(error) => {
                warn!(predecessor_pid = self.pid, %error, "the sidecar taken over from did not acknowledge the take-over")
            }
        }
    }
}

fn io_failure(source: std::io::Error, waiting: &'static str, after: Duration) -> TakeOverError {
    match source.kind() {
        std::io::ErrorKind::TimedOut => TakeOverError::TimedOut { waiting, after },
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            TakeOverError::Closed { waiting }
        }
        _ => TakeOverError::Io { waiting, source },
    }
}

fn recv_failure(error: RecvError, waiting: &'static str, after: Duration) -> TakeOverError {
    match error {
        RecvError::Closed => TakeOverError::Closed { waiting },
        RecvError::TimedOut => TakeOverError::TimedOut { waiting, after },
        RecvError::Wire(e) => TakeOverError::Protocol(format!("{e} while {waiting}")),
        RecvError::Io(source) => io_failure(source, waiting, after),
    }
}

fn unexpected(msg: &Message, waiting: &str) -> TakeOverError {
    TakeOverError::Protocol(format!("{} while {waiting}", msg.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listeners::Role;
    use std::os::fd::AsFd;

    fn entry(role: Role, addr: std::net::SocketAddr) -> Entry {
        Entry { role, addr }
    }

    #[test]
    fn a_listening_tcp_socket_at_its_address_is_adopted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let fd = l.as_fd().try_clone_to_owned().expect("dup");
        let adopted = adopt(entry(Role::Tls, addr), fd).expect("adopted");
        assert_eq!(adopted.local_addr().expect("addr"), addr);
    }

    #[test]
    fn anything_else_is_refused_naming_why() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let elsewhere = std::net::SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        let fd = l.as_fd().try_clone_to_owned().expect("dup");
        let err = adopt(entry(Role::Admin, elsewhere), fd).expect_err("another address");
        assert!(
            err.to_string().contains(&format!("it listens on {addr}")),
            "{err}"
        );

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let udp_addr = udp.local_addr().expect("addr");
        let err = adopt(entry(Role::Tls, udp_addr), udp.into()).expect_err("udp");
        assert!(err.to_string().contains("not a stream socket"), "{err}");

        let (unix, _) = std::os::unix::net::UnixStream::pair().expect("pair");
        let err = adopt(entry(Role::Tls, addr), unix.into()).expect_err("unix");
        assert!(err.to_string().contains("not an IP socket"), "{err}");

        let socket = connected_tcp_socket();
        let err = adopt(entry(Role::Tls, addr), socket).expect_err("connected");
        assert!(err.to_string().contains("not listening"), "{err}");

        let file = std::fs::File::open("/proc/self/status").expect("a file");
        let err = adopt(entry(Role::Tls, addr), file.into()).expect_err("file");
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    /// A TCP socket that is not listening: a connected one.
    fn connected_tcp_socket() -> OwnedFd {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(s.local_addr().expect("addr")).expect("connect");
        client.into()
    }

    #[test]
    fn sockets_and_listeners_must_pair_up() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let err = adopt_all(vec![entry(Role::Tls, addr)], vec![]).expect_err("no socket");
        assert!(
            err.to_string().contains("0 sockets for 1 listeners"),
            "{err}"
        );
    }
}
