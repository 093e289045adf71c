//! What the sidecar keeps about each connection it serves, shared by the accept loop
//! ([`crate::server`]) and the protocol handlers ([`crate::http`], [`crate::tcp`]): how active it
//! is ([`activity`]: idle and slow-head timeouts decided by a pure verdict, the stream-reset
//! budget), and the slot it holds ([`admission`]: the connection limits, and who makes room when
//! every slot is taken). Both sides read and write the same records, so they live below both.

pub(crate) mod activity;
pub(crate) mod admission;
