//! The listening sockets the sidecar serves: the TLS listener (`--listen`), the admin and
//! redirect listeners, one per egress relay (`--upstream`). Each is bound here, or, after a
//! take-over, is the very socket the sidecar being replaced listened on ([`open`] with what it
//! handed over): a configured listener takes the handed socket of its role and address, the rest
//! are bound as they always were, and handed sockets nothing configured asks for are closed.
//! Which handed socket serves which configured listener is a pure decision ([`assign`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use tokio::net::{TcpListener, TcpSocket};
use tracing::{debug, info};

use crate::config::Config;
use crate::error::Error;

/// Binds a listening socket with a listen backlog of `backlog` (`--listen-backlog`; the kernel
/// caps it at net.core.somaxconn). `SO_REUSEADDR` as usual for servers, so a restart does not
/// wait out old connections in TIME_WAIT.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds the UDP socket HTTP/3 is served on (`--http3`), with `SO_REUSEPORT`: a sidecar that
/// takes over from another binds it while the other still holds its own (each keeps the
/// connections it accepted until it drains). IPv6 sockets are IPv6-only when the TCP listener
/// is: bound to `[::]`, both take IPv4 too.
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What a listening socket is for: the flag that configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Tls,
    Admin,
    Redirect,
    Upstream,
}

impl Role {
    /// Every role, in the order of their wire codes.
    pub(crate) const ALL: [Role; 4] = [Role::Tls, Role::Admin, Role::Redirect, Role::Upstream];

    /// The flag that configures it, for error messages.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Role::Tls => "--listen",
            Role::Admin => "--admin-listen",
            Role::Redirect => "--redirect-listen",
            Role::Upstream => "--upstream",
        }
    }

    /// Its name in log lines.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Tls => "tls",
            Role::Admin => "admin",
            Role::Redirect => "redirect",
            Role::Upstream => "upstream",
        }
    }
}

/// One listening socket: its role and the address it listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub role: Role,
    pub addr: SocketAddr,
}

/// The sockets the sidecar serves, bound by `sidecar::listen` or handed over by the sidecar
/// it replaces.
#[derive(Debug)]
pub struct Listeners {
    pub(crate) tls: TcpListener,
    pub(crate) admin: Option<TcpListener>,
    pub(crate) redirect: Option<TcpListener>,
    /// One per `--upstream`, in the configuration's order.
    pub(crate) upstreams: Vec<TcpListener>,
    /// `--http3`: the UDP socket at the TLS listener's address and port. Never handed over (a
    /// QUIC connection's state lives in the process that accepted it); bound with
    /// `SO_REUSEPORT` so a successor can bind it while its predecessor drains.
    pub(crate) quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// Every socket with its role and the address it is bound to, to hand over.
    pub(crate) fn entries(&self) -> Vec<(Entry, BorrowedFd<'_>)> {
        let tls = std::iter::once((Role::Tls, &self.tls));
        let admin = self.admin.iter().map(|l| (Role::Admin, l));
        let redirect = self.redirect.iter().map(|l| (Role::Redirect, l));
        let upstreams = self.upstreams.iter().map(|l| (Role::Upstream, l));
        tls.chain(admin)
            .chain(redirect)
            .chain(upstreams)
            .filter_map(|(role, l)| {
                let addr = l.local_addr().ok()?;
                Some((Entry { role, addr }, l.as_fd()))
            })
            .collect()
    }
}

/// Listening sockets handed over, each checked to be a listening TCP socket bound where it was
/// said to be.
pub(crate) type Handed = Vec<(Entry, std::net::TcpListener)>;

/// The listeners `config` asks for, in order: TLS, admin, redirect, then the upstreams.
pub(crate) fn wanted(config: &Config) -> Vec<Entry> {
    let entry = |role| move |addr| Entry { role, addr };
    std::iter::once(config.listen)
        .map(entry(Role::Tls))
        .chain(config.admin_listen.map(entry(Role::Admin)))
        .chain(
            config
                .redirect
                .as_ref()
                .map(|r| r.listen)
                .map(entry(Role::Redirect)),
        )
        .chain(
            config
                .upstreams
                .iter()
                .map(|u| u.local)
                .map(entry(Role::Upstream)),
        )
        .collect()
}

/// Which handed socket serves each wanted listener.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Assignment {
    /// Per wanted listener, in order: the index of the handed socket it takes, or `None` to bind.
    pub slots: Vec<Option<usize>>,
    /// Handed sockets no wanted listener takes, to close.
    pub unused: Vec<usize>,
}

/// Matches handed sockets to wanted listeners: same role and same address. A wanted port 0
/// asks for a port of the kernel's choosing, so it takes none; each handed socket serves one
/// listener at most.
pub(crate) fn assign(handed: &[Entry], wanted: &[Entry]) -> Assignment {
    let mut taken = vec![false; handed.len()];
    let mut slots = Vec::with_capacity(wanted.len());
    for w in wanted {
        let found = (w.addr.port() != 0)
            .then(|| (0..handed.len()).find(|&i| !taken[i] && handed[i] == *w))
            .flatten();
        if let Some(i) = found {
            taken[i] = true;
        }
        slots.push(found);
    }
    let unused = (0..handed.len()).filter(|&i| !taken[i]).collect();
    Assignment { slots, unused }
}

/// Opens every listener `config` asks for: a handed socket of the same role and address when
/// there is one, else bound as usual (the same errors as without a take-over). Handed sockets
/// nothing asks for are closed, each logged. Returns the listeners and how many were handed.
pub(crate) async fn open(config: &Config, handed: Handed) -> Result<(Listeners, usize), Error> {
    let wanted = wanted(config);
    let claimed: Vec<Entry> = handed.iter().map(|(e, _)| *e).collect();
    let plan = assign(&claimed, &wanted);
    let mut sockets: Vec<Option<std::net::TcpListener>> =
        handed.into_iter().map(|(_, l)| Some(l)).collect();
    for &i in &plan.unused {
        let e = claimed[i];
        info!(role = e.role.as_str(), addr = %e.addr, "closing a handed-over listener this configuration does not use");
        sockets[i] = None;
    }
    let mut opened = Vec::with_capacity(wanted.len());
    for (entry, slot) in wanted.iter().zip(&plan.slots) {
        let socket = slot.and_then(|i| sockets[i].take());
        let listener = open_one(entry, socket, config.listen_backlog)
            .await
            .map_err(|source| Error::Bind {
                flag: entry.role.flag(),
                addr: entry.addr,
                source,
            })?;
        opened.push(listener);
    }
    let used = plan.slots.iter().flatten().count();
    let mut opened = opened.into_iter();
    let mut next = |wanted: bool| if wanted { opened.next() } else { None };
    let tls = next(true).ok_or_else(|| missing(config.listen))?;
    let admin = next(config.admin_listen.is_some());
    let redirect = next(config.redirect.is_some());
    let quic = match config.http3 {
        None => None,
        Some(_) => {
            // Port 0 for the TLS listener means the kernel's choice: the UDP socket takes the
            // same port, so `Alt-Svc` can name one port for both.
            let addr = tls.local_addr().unwrap_or(config.listen);
            Some(bind_udp(addr).map_err(|source| Error::Bind {
                flag: "--http3",
                addr,
                source,
            })?)
        }
    };
    let listeners = Listeners {
        tls,
        admin,
        redirect,
        upstreams: opened.collect(),
        quic,
    };
    Ok((listeners, used))
}

/// The TLS listener was not opened: cannot happen, [`wanted`] always starts with it.
fn missing(addr: SocketAddr) -> Error {
    Error::Bind {
        flag: "--listen",
        addr,
        source: std::io::Error::other("no listener"),
    }
}

/// One listener: the handed `socket` made ready for this process, or a new one bound.
async fn open_one(
    entry: &Entry,
    socket: Option<std::net::TcpListener>,
    backlog: u32,
) -> std::io::Result<TcpListener> {
    let Some(socket) = socket else {
        return match entry.role {
            Role::Tls => bind(entry.addr, backlog),
            _ => TcpListener::bind(entry.addr).await,
        };
    };
    debug!(role = entry.role.as_str(), addr = %entry.addr, "using a handed-over listener");
    if entry.role == Role::Tls {
        // listen(2) again on a listening socket only sets its backlog: this one's
        // --listen-backlog, which may differ from its predecessor's.
        rustix::net::listen(&socket, backlog.min(i32::MAX as u32) as i32)?;
    }
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(role: Role, addr: &str) -> Entry {
        Entry {
            role,
            addr: addr.parse().expect("addr"),
        }
    }

    #[test]
    fn handed_sockets_serve_the_listener_of_the_same_role_and_address() {
        let handed = [
            e(Role::Tls, "0.0.0.0:8443"),
            e(Role::Admin, "127.0.0.1:9901"),
            e(Role::Redirect, "0.0.0.0:80"),
            e(Role::Upstream, "127.0.0.1:9001"),
            e(Role::Upstream, "127.0.0.1:9002"),
        ];
        let wanted = [
            e(Role::Tls, "0.0.0.0:8443"),
            e(Role::Redirect, "0.0.0.0:80"),
            e(Role::Upstream, "127.0.0.1:9002"),
            e(Role::Upstream, "127.0.0.1:9003"),
        ];
        assert_eq!(
            assign(&handed, &wanted),
            Assignment {
                slots: vec![Some(0), Some(2), Some(4), None],
                unused: vec![1, 3],
            }
        );
    }

    #[test]
    fn a_role_or_address_that_differs_is_bound_anew() {
        let handed = [
            e(Role::Admin, "127.0.0.1:9901"),
            e(Role::Tls, "0.0.0.0:8443"),
        ];
        // The admin port asked for as a redirect listener; the TLS one on another interface.
        let wanted = [
            e(Role::Tls, "127.0.0.1:8443"),
            e(Role::Redirect, "127.0.0.1:9901"),
        ];
        assert_eq!(
            assign(&handed, &wanted),
            Assignment {
                slots: vec![None, None],
                unused: vec![0, 1],
            }
        );
    }

    #[test]
    fn port_zero_takes_nothing_and_each_socket_serves_once() {
        let handed = [e(Role::Tls, "127.0.0.1:0"), e(Role::Tls, "127.0.0.1:8443")];
        let wanted = [e(Role::Tls, "127.0.0.1:0")];
        assert_eq!(
            assign(&handed, &wanted),
            Assignment {
                slots: vec![None],
                unused: vec![0, 1],
            }
        );
        // The same socket handed twice: the second copy is closed.
        let handed = [
            e(Role::Tls, "127.0.0.1:8443"),
            e(Role::Tls, "127.0.0.1:8443"),
        ];
        let wanted = [e(Role::Tls, "127.0.0.1:8443")];
        assert_eq!(
            assign(&handed, &wanted),
            Assignment {
                slots: vec![Some(0)],
                unused: vec![1],
            }
        );
        assert_eq!(
            assign(&[], &wanted),
            Assignment {
                slots: vec![None],
                unused: vec![],
            }
        );
    }
}
