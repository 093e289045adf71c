//! A tiny TCP port forwarder: accepts on one loopback address and relays every connection, both
//! ways, to another. The ACME tests use it to make a challenge reachable only when they choose
//! (Pebble validates at a fixed port; the target publishes elsewhere until the forwarder joins
//! the two). Plain threads, so it works the same under any runtime or none; dropping it stops
//! the listener and cuts every relayed connection.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a relayed connection may take to reach its destination before it is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at its stop flag: short, so a drop returns promptly.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// A running forwarder; stopped on drop.
pub struct Forward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listens on `listen` and relays each connection to `to`. Panics if `listen` cannot be bound.
    pub fn start(listen: SocketAddr, to: SocketAddr) -> Forward {
        let listener =
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("forwarder: bind {listen}: {e}"));
        let addr = listener.local_addr().expect("forwarder address");
        listener
            .set_nonblocking(true)
            .expect("forwarder: non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stop, accepted, streams) = (stop.clone(), accepted.clone(), streams.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            relay(client, to, &streams);
                        }
                        // WouldBlock, or a passing error (EMFILE, an aborted connection): the
                        // listener stays up either way.
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })
        };
        Forward {
            addr,
            stop,
            accepted,
            streams,
            acceptor: Some(acceptor),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Connects to `to` and copies both ways on two threads; each direction's end is passed on as a
/// half-close, so request/response protocols see their EOFs.
fn relay(client: TcpStream, to: SocketAddr, streams: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let clones = (client.try_clone(), upstream.try_clone());
    let (Ok(client_rd), Ok(upstream_rd)) = clones else {
        return;
    };
    if let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) {
        let mut all = streams.lock().unwrap_or_else(|e| e.into_inner());
        all.push(c);
        all.push(u);
    }
    std::thread::spawn(move || copy_then_half_close(client_rd, upstream));
    std::thread::spawn(move || copy_then_half_close(upstream_rd, client));
}

fn copy_then_half_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
