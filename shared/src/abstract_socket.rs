//! Abstract Unix stream sockets: named in the network namespace rather than the file system, so
//! every process of the namespace finds one without a shared volume, and it disappears with the
//! process holding it. What the sidecar hands its listeners over on (`sidecar --take-over`) and
//! what `spawner rollout` asks the daemon on. Bound and connected without a blocking call; who
//! may use one is the caller's rule, from the peer's user ([`own_uid`]).

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::net::{UnixListener, UnixStream};

/// Connects to the abstract socket `name` (without its leading NUL byte). Never blocks:
/// `WouldBlock` when its queue is full, `ConnectionRefused` when nothing holds the name.
pub fn connect(name: &str) -> io::Result<UnixStream> {
    let fd = socket()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

/// Holds the abstract socket `name` (`AddrInUse` while another process does) and listens on it,
/// the kernel queueing up to `backlog` connections.
pub fn bind(name: &str, backlog: i32) -> io::Result<UnixListener> {
    let fd = socket()?;
    rustix::net::bind(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
    rustix::net::listen(&fd, backlog)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

fn socket() -> io::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        flags,
        None,
    )?)
}

/// This process's effective user id, to compare with a peer's.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_held_once_and_reached_by_name() {
        let name = format!("tls-sidecar/test/abstract-{}", std::process::id());
        let listener = bind(&name, 4).expect("bind");
        let err = bind(&name, 4).expect_err("a second holder");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let client = connect(&name).expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let peer = server.peer_cred().expect("peer credentials");
        assert_eq!(peer.uid(), own_uid());
        drop((client, listener));
        let err = connect(&name).expect_err("nothing holds it");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
