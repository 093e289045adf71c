//! The accept loop of every listener (TLS, admin, redirect): one place that calls accept, so all
//! three get the same answers to what can go wrong there.
//!
//! - A failed accept never ends the listener. It fails when the process (or the system) is out of
//!   file descriptors or memory, and those pass as connections close: the loop waits out a
//!   [`Backoff`] ([`ACCEPT_BACKOFF`]) instead of spinning on a listener that stays readable, and
//!   the first success starts the backoff from its minimum again.
//! - The failure is logged at most once per [`LOG_INTERVAL`] per listener (a flood of connections
//!   can cause it), with how many went unlogged.
//! - Cancelling the stop token ends the loop at once, wherever it waits: for a connection, for a
//!   slot under its limit, or out a backoff.
//! - An optional connection limit: a slot (a semaphore permit, moved into the connection's task)
//!   is taken before accepting, so at the limit connections wait in the kernel's listen backlog.
//!   The TLS listener has none here: the sidecar's admission decides its slots after the accept,
//!   because it may close another connection to make room, and needs the new one's address.
//!
//! [`Listener::accept`] is the loop; each listener's own `while let` only hands connections to
//! tasks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, Retry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::throttle::{Throttle, LOG_INTERVAL};

/// After a failed accept: 5 ms first, so a passing shortage of file descriptors costs connections
/// almost no delay, doubled up to 1 s, so a lasting one costs one accept call (and at most one
/// throttled log line) a second instead of a spinning core, and service resumes within a second
/// of descriptors being free again.
pub const ACCEPT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));

/// Where connections come from: a [`TcpListener`], or a scripted source in unit tests.
pub trait Source {
    type Stream;
    /// The next connection, or why there is none now.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Source for TcpListener {
    type Stream = TcpStream;

    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted<S = TcpStream> {
    pub stream: S,
    pub peer: SocketAddr,
    /// Its slot under the listener's limit, given back when dropped: keep it for as long as the
    /// connection is served. `None` when the listener has no limit.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A listening socket with the accept loop's policy: backoff, throttled logs, stop, limit.
/// Dropping it closes the socket: new connections are refused from then on.
#[derive(Debug)]
pub struct Listener<S = TcpListener> {
    source: S,
    /// Names the listener in log lines: `tls`, `admin` or `redirect`.
    name: &'static str,
    limit: Option<Arc<Semaphore>>,
    retry: Retry,
    log: Throttle,
    stop: CancellationToken,
}

impl<S: Source> Listener<S> {
    /// Accepts from `source` until `stop` is cancelled, with no connection limit.
    pub fn new(source: S, name: &'static str, stop: CancellationToken) -> Self {
        Self {
            source,
            name,
            limit: None,
            retry: ACCEPT_BACKOFF.retry(),
            log: Throttle::new(LOG_INTERVAL),
            stop,
        }
    }

    /// At most `max` connections served at once (each holds its [`Accepted::permit`]).
    pub fn with_limit(mut self, max: usize) -> Self {
        self.limit = Some(Arc::new(Semaphore::new(max)));
        self
    }

    /// The next connection; `None` once the stop token is cancelled. Accept errors are retried
    /// here, never returned.
    pub async fn accept(&mut self) -> Option<Accepted<S::Stream>> {
        let permit = match &self.limit {
            None => None,
            Some(limit) => tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                permit = limit.clone().acquire_owned() => Some(permit.ok()?),
            },
        };
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                accepted = self.source.accept() => accepted,
            };
            let error = match accepted {
                Ok((stream, peer)) => {
                    self.retry.reset();
                    return Some(Accepted {
                        stream,
                        peer,
                        permit,
                    });
                }
                Err(error) => error,
            };
            let delay = self.retry.failed();
            if let Some(suppressed) = self.log.ready() {
                warn!(
                    listener = self.name,
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    suppressed,
                    "accept failed"
                );
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// Answers accept calls from a script (a connection is its peer's port, an error its errno),
    /// then never again; records when each call was made.
    #[derive(Clone, Default)]
    struct Script {
        steps: Arc<Mutex<VecDeque<io::Result<u16>>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Result<u16, i32>>) -> Self {
            let steps = steps
                .into_iter()
                .map(|s| s.map_err(io::Error::from_raw_os_error));
            Self {
                steps: Arc::new(Mutex::new(steps.collect())),
                calls: Arc::default(),
            }
        }

        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().expect("calls").clone()
        }

        /// The pauses between consecutive calls.
        fn gaps(&self) -> Vec<Duration> {
            self.calls().windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    impl Source for Script {
        type Stream = u16;

        fn accept(&mut self) -> impl Future<Output = io::Result<(u16, SocketAddr)>> + Send {
            self.calls.lock().expect("calls").push(Instant::now());
            let step = self.steps.lock().expect("steps").pop_front();
            async move {
                match step {
                    Some(r) => r.map(|port| (port, peer(port))),
                    None => std::future::pending().await,
                }
            }
        }
    }

    /// What accept says when the process is out of file descriptors.
    const EMFILE: Result<u16, i32> = Err(libc::EMFILE);

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_and_a_success_starts_over() {
        let script = Script::new([EMFILE, EMFILE, EMFILE, Ok(1), EMFILE, Ok(2)]);
        let mut listener = Listener::new(script.clone(), "test", CancellationToken::new());

        let first = listener.accept().await.expect("a connection");
        assert_eq!((first.stream, first.peer), (1, peer(1)));
        assert!(first.permit.is_none(), "no limit, no permit");
        assert_eq!(listener.retry.failures(), 0, "reset by the success");
        let second = listener.accept().await.expect("a connection");
        assert_eq!(second.stream, 2);

        // 5, 10, 20 ms after the failures in a row; the success is followed at once by the next
        // call, whose failure waits the minimum again.
        assert_eq!(script.gaps(), [ms(5), ms(10), ms(20), ms(0), ms(5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_stops_growing_at_its_cap() {
        let script = Script::new(std::iter::repeat_n(EMFILE, 10).chain([Ok(1)]));
        let mut listener = Listener::new(script.clone(), "test", CancellationToken::new());
        assert!(listener.accept().await.is_some());
        let gaps = script.gaps();
        assert_eq!(gaps[..8], [5, 10, 20, 40, 80, 160, 320, 640].map(ms));
        assert_eq!(gaps[8..], [ms(1000), ms(1000)]);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_during_a_backoff_ends_the_loop_at_once() {
        let script = Script::new([EMFILE]);
        let stop = CancellationToken::new();
        let mut listener = Listener::new(script.clone(), "test", stop.clone());
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(ms(2)).await;
            stop.cancel();
        });
        assert!(listener.accept().await.is_none());
        canceller.await.expect("canceller");
        let calls = script.calls();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].elapsed() < ACCEPT_BACKOFF.min(),
            "returned while the 5 ms backoff ran, not after it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_listener_accepts_nothing_more() {
        let script = Script::new([Ok(1)]);
        let stop = CancellationToken::new();
        let mut listener = Listener::new(script.clone(), "test", stop.clone()).with_limit(1);
        stop.cancel();
        assert!(listener.accept().await.is_none());
        assert!(script.calls().is_empty(), "a ready connection stays queued");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_nothing_is_accepted_until_a_connection_ends() {
        let script = Script::new([Ok(1), Ok(2), Ok(3)]);
        let stop = CancellationToken::new();
        let mut listener = Listener::new(script.clone(), "test", stop.clone()).with_limit(1);
        let first = listener.accept().await.expect("a connection");
        assert!(first.permit.is_some());

        // Held for an hour of (paused) time, the one slot keeps the next connection queued.
        let waited = tokio::time::timeout(Duration::from_secs(3600), listener.accept()).await;
        assert!(waited.is_err(), "accepted past the limit");
        assert_eq!(script.calls().len(), 1);

        drop(first);
        let second = listener.accept().await.expect("a connection");
        assert_eq!(second.stream, 2);

        // Stopping while waiting for a slot ends the loop too.
        stop.cancel();
        assert!(listener.accept().await.is_none());
        assert_eq!(script.calls().len(), 2);
    }

    /// How many file descriptors the process that runs [`emfile_child`] may have: enough for the
    /// test harness and the runtime, few enough to take the rest quickly.
    const CHILD_NOFILE: u32 = 64;

    /// A real EMFILE: a child test process (this binary again) with a low `RLIMIT_NOFILE` runs
    /// [`emfile_child`]; the limit is the whole process's, so it cannot be lowered in this one,
    /// where other tests run at the same time.
    #[test]
    fn out_of_file_descriptors_the_listener_backs_off_and_recovers() {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {CHILD_NOFILE} && exec \"$0\" \"$@\""))
            .arg(exe)
            .args([
                "accept::tests::emfile_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test failed:\n{stdout}\n{stderr}"
        );
    }

    /// Run only by [`out_of_file_descriptors_the_listener_backs_off_and_recovers`].
    #[tokio::test]
    #[ignore = "run in a child process with a low RLIMIT_NOFILE by out_of_file_descriptors_the_listener_backs_off_and_recovers"]
    async fn emfile_child() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client =
            std::net::TcpStream::connect(tcp.local_addr().expect("addr")).expect("connect");

        // Take every descriptor left: accepting the queued connection needs one more.
        let mut hog = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("open /dev/null: {e}"),
            }
            assert!(
                hog.len() <= CHILD_NOFILE as usize,
                "RLIMIT_NOFILE is not low: run through the parent test"
            );
        }

        let mut listener = Listener::new(tcp, "test", CancellationToken::new());
        // Fails (EMFILE), backs off, tries again: a few rounds, and no connection comes out.
        let deadline = Instant::now() + Duration::from_secs(30);
        while listener.retry.failures() < 3 {
            assert!(Instant::now() < deadline, "accept never failed");
            let attempt = tokio::time::timeout(ms(20), listener.accept()).await;
            assert!(attempt.is_err(), "accepted with no descriptor free");
        }

        drop(hog);
        let accepted = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("accepted once descriptors are free")
            .expect("not stopped");
        assert_eq!(accepted.peer, client.local_addr().expect("client addr"));
        assert_eq!(listener.retry.failures(), 0);
    }
}
