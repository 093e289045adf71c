//! The running sidecar's side: it holds the hand-over socket for as long as it accepts, and
//! hands its listening sockets to one successor at a time. Only a peer of its own user gets an
//! answer; garbage, a message too large, another protocol version, a peer that says nothing in
//! time and a second asker while one is served are refused with a throttled warning, and the
//! sidecar serves on untouched. Once the successor says `Ready`, it stops accepting and drains
//! as on SIGTERM, answers `Done`, and lets go of the hand-over socket.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::channel::{self, RecvError};
use super::take::Predecessor;
use super::wire::{Message, WireError};
use super::ACK_WAIT;
use crate::listeners::{Entry, Listeners};
use crate::metrics::{HandoverResult, Metrics};
use crate::throttle::{Throttle, LOG_INTERVAL};

/// A peer must ask within this of connecting: a sidecar taking over asks at once.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections on the hand-over socket served at once (one hand-over, the rest refused
/// quickly); more are closed as they come.
const MAX_PENDING: usize = 8;
/// How long the hand-over socket is retried while the sidecar taken over from still holds it:
/// it lets go right after acknowledging.
const NAME_RETRY: Duration = Duration::from_secs(5);
const NAME_RETRY_STEP: Duration = Duration::from_millis(20);
/// Conversations still going when the offer ends get this long (they end with the shutdown).
const FINISH_MAX: Duration = Duration::from_secs(1);
/// After a failed accept on the hand-over socket (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

static REFUSED_LOG: Throttle = Throttle::new(LOG_INTERVAL);
static ABORTED_LOG: Throttle = Throttle::new(LOG_INTERVAL);
static ACCEPT_LOG: Throttle = Throttle::new(LOG_INTERVAL);

/// What a running sidecar offers, and what handing it over stops.
pub(crate) struct Offer {
    /// The hand-over socket's abstract name.
    name: String,
    /// Copies of the listening sockets, held while offering: closed once the offer ends, so
    /// after a SIGTERM the listeners close as they always did.
    sockets: Vec<(Entry, OwnedFd)>,
    /// This sidecar's `--take-over-timeout`: a successor gets no longer, whatever it asks.
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Drains the sidecar: cancelled by a signal, or here once the listeners are handed over.
    shutdown: CancellationToken,
    /// Stops the admin listener, which a hand-over stops at once (its successor serves it).
    admin_stop: CancellationToken,
}

impl Offer {
    /// The offer of `listeners` (copies of their sockets, so they can be handed over after
    /// the originals moved to the serving threads).
    pub(crate) fn new(
        listeners: &Listeners,
        timeout: Duration,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        admin_stop: CancellationToken,
    ) -> Self {
        let entries = listeners.entries();
        let listen = entries.first().map(|(e, _)| e.addr);
        let sockets = entries
            .into_iter()
            .filter_map(|(entry, fd)| match fd.try_clone_to_owned() {
                Ok(copy) => Some((entry, copy)),
                Err(error) => {
                    warn!(role = entry.role.as_str(), %error, "cannot keep a listener to hand over");
                    None
                }
            })
            .collect();
        Self {
            name: listen
                .map(shared::handover::socket_name)
                .unwrap_or_default(),
            sockets,
            timeout,
            metrics,
            shutdown,
            admin_stop,
        }
    }
}

/// Offers the listeners until the shutdown: first, after a take-over, waits for the sidecar
/// taken over from to let go of the hand-over socket.
pub(crate) async fn serve(offer: Offer, predecessor: Option<Predecessor>) {
    if let Some(predecessor) = predecessor {
        predecessor.acknowledged().await;
    }
    let Some(listener) = hold(&offer.name, &offer.shutdown).await else {
        return;
    };
    debug!(socket = %offer.name, "listeners offered for a take-over");
    let offer = Arc::new(Serving {
        offer,
        busy: AtomicBool::new(false),
        own_uid: channel::own_uid(),
    });
    let conversations = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = offer.offer.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) if conversations.len() < MAX_PENDING => {
                conversations.spawn(converse(stream, offer.clone()));
            }
            Ok(_) => offer.outcome(Outcome::Refused("too many connections at once".into())),
            Err(error) => {
                if let Some(suppressed) = ACCEPT_LOG.ready() {
                    warn!(%error, suppressed, "accept failed on the hand-over socket");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // A hand-over acknowledges before the name is let go (with the listener, below).
    conversations.close();
    let _ = tokio::time::timeout(FINISH_MAX, conversations.wait()).await;
}

/// Binds the hand-over socket, retrying for a while when another process holds it (the sidecar
/// taken over from, about to let go). `None` if it stays taken, or at the shutdown.
async fn hold(name: &str, shutdown: &CancellationToken) -> Option<UnixListener> {
    let until = Instant::now() + NAME_RETRY;
    loop {
        let error = match channel::bind(name) {
            Ok(listener) => return Some(listener),
            Err(error) => error,
        };
        if error.kind() != std::io::ErrorKind::AddrInUse || Instant::now() >= until {
            warn!(socket = %name, %error, "cannot offer the listeners for a later take-over");
            return None;
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(NAME_RETRY_STEP) => {}
        }
    }
}

/// The offer while it is served, shared by the conversations.
struct Serving {
    offer: Offer,
    /// A hand-over is under way: one at a time.
    busy: AtomicBool,
    own_uid: u32,
}

/// How one conversation on the hand-over socket ended.
enum Outcome {
    HandedOver,
    /// Not a successor that may be answered.
    Refused(String),
    /// A successor that did not get ready.
    Aborted(String),
}

impl Serving {
    fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::HandedOver => self.offer.metrics.handover(HandoverResult::Ok),
            Outcome::Refused(reason) => {
                self.offer.metrics.handover(HandoverResult::Refused);
                if let Some(suppressed) = REFUSED_LOG.ready() {
                    warn!(%reason, suppressed, "refused a take-over request; serving on");
                }
            }
            Outcome::Aborted(reason) => {
                self.offer.metrics.handover(HandoverResult::Aborted);
                if let Some(suppressed) = ABORTED_LOG.ready() {
                    warn!(%reason, suppressed, "take-over abandoned; serving on");
                }
            }
        }
    }

    /// Takes the one hand-over slot, if free; it is given back when the guard drops.
    fn slot(&self) -> Option<Slot<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Slot(&self.busy))
    }
}

struct Slot<'a>(&'a AtomicBool);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One peer on the hand-over socket, from its first byte to its outcome.
async fn converse(mut stream: UnixStream, offer: Arc<Serving>) {
    let asked = tokio::select! {
        asked = ask(&mut stream, &offer) => asked,
        () = offer.offer.shutdown.cancelled() => Err("this sidecar is shutting down".into()),
    };
    let outcome = match asked {
        Ok(asked) => hand(&mut stream, &offer, asked).await,
        Err(reason) => Outcome::Refused(reason),
    };
    offer.outcome(outcome);
}

/// The peer's request: its user checked, then its `Hello`, within [`HELLO_TIMEOUT`]. The
/// timeout it asks for, or why it is refused.
async fn ask(stream: &mut UnixStream, offer: &Serving) -> Result<Duration, String> {
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    if !channel::peer_allowed(peer.uid(), offer.own_uid) {
        return Err(format!(
            "peer uid {} is not this sidecar's uid {}",
            peer.uid(),
            offer.own_uid
        ));
    }
    let by = Instant::now() + HELLO_TIMEOUT.min(offer.offer.timeout);
    let received = match channel::recv(stream, by).await {
        Ok(r) => r,
        Err(RecvError::Wire(WireError::Version(v))) => {
            let why = format!("unsupported protocol version {v}");
            refuse(stream, &why).await;
            return Err(why);
        }
        Err(RecvError::TimedOut) => return Err("stalled before asking".into()),
        Err(RecvError::Closed) => return Err("closed before asking".into()),
        Err(RecvError::Wire(e)) => return Err(format!("sent {e}")),
        Err(RecvError::Io(e)) => return Err(e.to_string()),
    };
    match received.message {
        _ if !received.fds.is_empty() => Err("sent file descriptors".into()),
        Message::Hello { timeout } => Ok(timeout),
        other => Err(format!("sent {} instead of asking", other.name())),
    }
}

/// Hands the listeners over to a successor that asked, if no other is being served: sends
/// them, waits for `Ready` within the shorter of the two timeouts, then stops accepting.
async fn hand(stream: &mut UnixStream, offer: &Serving, asked: Duration) -> Outcome {
    let Some(_slot) = offer.slot() else {
        let why = "another take-over is in progress";
        refuse(stream, why).await;
        return Outcome::Refused(why.into());
    };
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let timeout = asked.min(offer.offer.timeout);
    let deadline = Instant::now() + timeout;
    let sockets = &offer.offer.sockets;
    let msg = Message::Listeners {
        pid: std::process::id(),
        entries: sockets.iter().map(|(e, _)| *e).collect(),
    };
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    if let Err(error) = channel::send(stream, &msg, &fds, deadline).await {
        return Outcome::Aborted(format!("could not send the listeners: {error}"));
    }
    debug!(
        successor_pid = pid,
        listeners = fds.len(),
        "sent the listeners to a successor"
    );
    if let Err(reason) = wait_ready(stream, deadline, timeout, &offer.offer.shutdown).await {
        refuse(stream, &reason).await;
        return Outcome::Aborted(reason);
    }
    info!(successor_pid = pid, "handed over its listeners; draining");
    offer.offer.admin_stop.cancel();
    offer.offer.shutdown.cancel();
    let done = channel::send(stream, &Message::Done, &[], Instant::now() + ACK_WAIT).await;
    if let Err(error) = done {
        debug!(%error, "could not acknowledge the take-over");
    }
    Outcome::HandedOver
}

/// Waits for the successor's `Ready` by `deadline`, or why it will not come.
async fn wait_ready(
    stream: &UnixStream,
    deadline: Instant,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let received = tokio::select! {
        r = channel::recv(stream, deadline) => r,
        () = shutdown.cancelled() => return Err("this sidecar is shutting down".into()),
    };
    match received.map(|r| r.message) {
        Ok(Message::Ready) => Ok(()),
        Ok(Message::Refused(why)) => Err(format!("the successor gave up: {why}")),
        Ok(other) => Err(format!("the successor sent {}", other.name())),
        Err(RecvError::Closed) => Err("the successor went away before it was ready".into()),
        Err(RecvError::TimedOut) => Err(format!(
            "the successor was not ready within {}",
            shared::parse::render_duration(timeout)
        )),
        Err(e) => Err(format!("the successor's connection failed: {e}")),
    }
}

/// Tells the peer why it is refused, if it listens (best effort, briefly).
async fn refuse(stream: &mut UnixStream, why: &str) {
    let msg = Message::Refused(why.to_string());
    let _ = channel::send(stream, &msg, &[], Instant::now() + ACK_WAIT.min(FINISH_MAX)).await;
}
