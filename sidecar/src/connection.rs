//! What the sidecar keeps about each connection it serves, shared by the accept loop
//! ([`crate::server`]) and the protocol handlers ([`crate::http`], [`crate::tcp`]): how active it
//! is ([`activity`]: idle and slow-head timeouts decided by a pure verdict, the stream-reset
//! budget), and the slot it holds ([`admission`]: the connection limits, and who makes room when
//! every slot is taken). Both sides read and write the same records, so they live below both.

pub(crate) mod activity;
pub(crate) mod admission;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A TLS (or QUIC) handshake under way when the drain begins gets this long to finish: a real client's
/// takes a round trip or two, and its connection, accepted just before the listener stopped
/// (or was handed over), is then served and closed like the others instead of being reset.
const HANDSHAKE_DRAIN: Duration = Duration::from_secs(1);

/// Completes [`HANDSHAKE_DRAIN`] after the drain began.
pub(crate) async fn drain_cut(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(HANDSHAKE_DRAIN).await;
}
