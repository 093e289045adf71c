//! The spawner's decisions, pure: which containers opted in and what their labels ask for
//! ([`labels`]), what the engine shows -> the actions that make it right ([`reconcile`]), what a
//! sidecar container looks like ([`container`]), and why a sidecar ended ([`failure`]). No I/O,
//! so every rule is unit-tested here, and the daemon and `spawner status` only carry them out
//! from what [`crate::engine`] observed: the two never disagree.

pub(crate) mod container;
pub(crate) mod failure;
pub(crate) mod labels;
pub(crate) mod reconcile;
pub(crate) mod rollout;
