//! Upgrading a sidecar in place: the running one hands its listening sockets to a new process
//! (`--take-over`), as nginx's binary upgrade and HAProxy's `-x` do, so no connection attempt
//! is refused or reset on the way.
//!
//! Every sidecar holds the abstract Unix socket `tls-sidecar/handover/<listen address>`
//! ([`shared::handover::socket_name`]) of its network namespace ([`offer`]). A successor
//! started with `--take-over` connects to it ([`take`]) and, in [`wire`]'s frames:
//!
//! 1. successor: `Hello` (the protocol version, its `--take-over-timeout`);
//! 2. running sidecar, if the peer runs as its own user and no other hand-over is under way:
//!    `Listeners` (roles and addresses), the sockets attached as `SCM_RIGHTS` ([`channel`]);
//! 3. the successor checks each socket, loads its certificates, takes the sockets it is
//!    configured for and binds the rest ([`crate::listeners`]), then sends `Ready` and accepts;
//!    until then the running sidecar accepts alone, and if the successor fails or takes longer
//!    than either timeout, it sees the connection end and serves on;
//! 4. running sidecar: stops accepting and drains exactly as on SIGTERM (both processes hold the
//!    same kernel sockets, so connections queued on them are the successor's to accept), answers
//!    `Done`, lets go of the hand-over socket, and exits 0 after the drain;
//! 5. the successor holds the hand-over socket in turn, so it can be upgraded the same way.

mod channel;
pub(crate) mod offer;
mod take;
mod wire;

use std::time::Duration;

pub(crate) use take::start;
pub use take::TakeOver;

/// How long either side waits for the short answers around `Ready` (`Done`, a refusal): the
/// running sidecar sends them at once.
const ACK_WAIT: Duration = Duration::from_secs(5);
