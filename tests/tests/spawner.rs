//! The spawner binary: most modules run it as a host process against the real Docker engine (a
//! private `dockerd` in `engine`), each test with its own label prefix, and assert on the
//! containers, sidecars and certificates users see; `acme` adds a real ACME CA (Pebble).
pub(crate) mod acme;
mod acme_dns;
mod admin;
mod ca;
mod certs;
mod churn;
mod engine;
mod http3;
mod hygiene;
mod identity;
mod lifecycle;
mod protocols;
mod rollout;
