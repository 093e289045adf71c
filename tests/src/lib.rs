//! The integration-test harness: real processes, real sockets, real TLS clients and the real
//! Docker engine, behind helpers that read like the spec (`Backend::echo()`, `Sidecar::start()`).

pub mod backend;
pub mod bind;
pub mod bins;
pub mod certdir;
pub mod certs;
pub mod client;
pub mod compose;
pub mod docker;
pub mod dockerd;
pub mod docs;
pub mod forward;
pub mod grpc;
pub mod h3;
pub mod haproxy;
pub mod issuer;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod mtls;
pub mod pebble;
pub mod redirect;
pub mod sidecar;
pub mod spawner;
pub mod swarm;
pub mod tmp;
pub mod wait;
