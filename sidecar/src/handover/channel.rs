//! The hand-over socket itself: an abstract Unix stream socket (bound and connected without a
//! blocking call), the peer's user, and frames ([`super::wire`]) sent and received with the
//! listening sockets attached as `SCM_RIGHTS`. Every send and receive has a deadline; a frame is
//! read exactly to its end, never into the next one, and never past [`wire::MAX_BODY`].

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use super::wire::{self, Message, WireError, HEADER_LEN, MAX_BODY, MAX_LISTENERS};

/// Connections the kernel queues on the hand-over socket before refusing more: one successor
/// at a time, a few hostile or confused peers beside it.
const BACKLOG: i32 = 16;

/// Room for the most sockets one frame carries.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_LISTENERS));

/// Connects to the abstract socket `name`; see [`shared::abstract_socket::connect`].
pub(crate) fn connect(name: &str) -> io::Result<UnixStream> {
    shared::abstract_socket::connect(name)
}

/// Holds the abstract socket `name` and listens on it.
pub(crate) fn bind(name: &str) -> io::Result<UnixListener> {
    shared::abstract_socket::bind(name, BACKLOG)
}

/// This process's effective user id: the one a peer must have.
pub(crate) fn own_uid() -> u32 {
    shared::abstract_socket::own_uid()
}

/// Whether a peer running as `peer` may take this sidecar's listeners: only its own user (so
/// root only when the sidecar is root).
pub(crate) fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own
}

/// Sends `msg` with `fds` attached, by `deadline`.
pub(crate) async fn send(
    stream: &mut UnixStream,
    msg: &Message,
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> io::Result<()> {
    let frame = wire::encode(msg);
    let sending = async {
        let sent = stream
            .async_io(Interest::WRITABLE, || send_some(stream, &frame, fds))
            .await?;
        // The sockets went with the first bytes; the rest, if the socket took only part.
        stream.write_all(&frame[sent..]).await
    };
    match tokio::time::timeout_at(deadline, sending).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

fn send_some(stream: &UnixStream, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many sockets for one message"));
    }
    let iov = [IoSlice::new(frame)];
    Ok(rustix::net::sendmsg(
        stream,
        &iov,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// A frame received, with the sockets that came with it.
#[derive(Debug)]
pub(crate) struct Received {
    pub message: Message,
    pub fds: Vec<OwnedFd>,
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvError {
    #[error("closed")]
    Closed,
    #[error("timed out")]
    TimedOut,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Receives one frame by `deadline`.
pub(crate) async fn recv(stream: &UnixStream, deadline: Instant) -> Result<Received, RecvError> {
    match tokio::time::timeout_at(deadline, recv_frame(stream)).await {
        Ok(result) => result,
        Err(_) => Err(RecvError::TimedOut),
    }
}

async fn recv_frame(stream: &UnixStream) -> Result<Received, RecvError> {
    let mut buf = [0u8; HEADER_LEN + MAX_BODY];
    let mut fds = Vec::new();
    fill(stream, &mut buf[..HEADER_LEN], &mut fds).await?;
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&buf[..HEADER_LEN]);
    let (kind, len) = wire::header(&head)?;
    fill(stream, &mut buf[HEADER_LEN..HEADER_LEN + len], &mut fds).await?;
    let message = wire::decode(kind, &buf[HEADER_LEN..HEADER_LEN + len])?;
    Ok(Received { message, fds })
}

/// Reads exactly `buf.len()` bytes, keeping the sockets that arrive with them.
async fn fill(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), RecvError> {
    let mut have = 0;
    while have < buf.len() {
        let n = stream
            .async_io(Interest::READABLE, || {
                recv_some(stream, &mut buf[have..], fds)
            })
            .await?;
        if n == 0 {
            return Err(RecvError::Closed);
        }
        have += n;
    }
    Ok(())
}

fn recv_some(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more sockets than one hand-over carries",
        ));
    }
    Ok(msg.bytes)
}

/// Whether the peer has closed the connection or sent something, without waiting: `Ok(0)` once
/// closed, `Ok(n)` with bytes waiting, `WouldBlock` when it is open and quiet.
pub(crate) fn peek(stream: &UnixStream) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    Ok(rustix::net::recv(stream, &mut byte[..], flags)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listeners::{Entry, Role};
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn only_the_sidecars_own_user_may_ask() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 0));
        assert!(
            !peer_allowed(0, 1000),
            "root asks a sidecar of another user"
        );
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(1000, 0), "anyone asks a root sidecar");
    }

    #[tokio::test]
    async fn frames_carry_listening_sockets_and_stop_at_their_end() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let entries = vec![Entry {
            role: Role::Tls,
            addr,
        }];
        let listeners = Message::Listeners { pid: 7, entries };
        send(&mut a, &listeners, &[tcp.as_fd()], soon())
            .await
            .expect("send");
        send(&mut a, &Message::Done, &[], soon())
            .await
            .expect("send");
        let got = recv(&b, soon()).await.expect("listeners");
        assert_eq!(got.message, listeners);
        assert_eq!(got.fds.len(), 1);
        let received = std::net::TcpListener::from(got.fds.into_iter().next().expect("fd"));
        assert_eq!(
            received.local_addr().expect("addr"),
            addr,
            "the same socket"
        );
        let done = recv(&b, soon()).await.expect("done");
        assert_eq!(done.message, Message::Done);
        assert!(done.fds.is_empty());
        assert!(matches!(peek(&b), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        drop(a);
        assert!(matches!(recv(&b, soon()).await, Err(RecvError::Closed)));
        assert_eq!(peek(&b).expect("closed"), 0);
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_errors_not_waits() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        assert!(matches!(
            recv(&b, soon()).await,
            Err(RecvError::Wire(WireError::Garbage))
        ));
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(b"TSHO\x01\x01\xff\xff").await.expect("write");
        assert!(matches!(
            recv(&b, soon()).await,
            Err(RecvError::Wire(WireError::Oversized(65535)))
        ));
        let (_a, b) = UnixStream::pair().expect("pair");
        let quiet = recv(&b, Instant::now() + Duration::from_millis(50)).await;
        assert!(matches!(quiet, Err(RecvError::TimedOut)));
    }
}
